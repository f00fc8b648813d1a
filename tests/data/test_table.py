"""load_table and identifier detection: which columns are identifiers (and which are not), the
warning that names them, --features/--drop overriding detection, text and missing values kept."""

import warnings

import numpy as np
import pandas as pd
import pytest

from torchhefl.data import IdentifierColumnWarning, identifier_columns, load_csv, load_table
from torchhefl.exceptions import DataError


def _frame(n=30, **columns):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=n), "y": [0, 1] * (n // 2)})
    for name, values in columns.items():
        frame[name] = values
    return frame


@pytest.mark.parametrize("name", ["id", "ID", "Id", "patient_id", "PATIENT_ID", "record-id", "sample id", "case.id",
                                  "patientId", "patientID"])
def test_identifier_by_name(name):
    frame = _frame(**{name: [1.5, 2.5] * 15})  # by its name alone, whatever its values
    assert identifier_columns(frame, "y") == [name]


@pytest.mark.parametrize("name", ["paid", "valid", "COVID", "idle", "identity", "lipid", "idx_count"])
def test_names_that_only_contain_id_are_not_identifiers(name):
    assert identifier_columns(_frame(**{name: [1, 2, 3] * 10}), "y") == []


def test_unique_integers_are_an_identifier():
    frame = _frame(mrn=np.random.default_rng(1).choice(10**6, size=30, replace=False))
    assert identifier_columns(frame, "y") == ["mrn"]


def test_unique_text_is_an_identifier_numbers_with_a_typo_are_not():
    assert identifier_columns(_frame(code=[f"P{i:03d}" for i in range(30)]), "y") == ["code"]
    assert identifier_columns(_frame(b=[str(i + 0.5) for i in range(29)] + ["x"]), "y") == []


def test_unique_floats_repeated_integers_and_small_tables_are_not_identifiers():
    frame = _frame(radius=np.random.default_rng(2).normal(size=30), visits=np.arange(30) % 7)
    assert frame["radius"].nunique() == 30
    assert identifier_columns(frame, "y") == []
    # under 20 rows, unique integers are too often an ordinary feature
    assert identifier_columns(_frame(n=10, age=np.arange(40, 50)), "y") == []
    # whole numbers written as floats are measurements, not identifiers
    assert identifier_columns(_frame(count=np.arange(30, dtype=float)), "y") == []


def test_a_unique_integer_label_is_never_flagged():
    frame = pd.DataFrame({"x": np.arange(30) * 0.5, "id_label": np.arange(30)})
    assert identifier_columns(frame, "id_label") == []


def _write(tmp_path, frame, name="t.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_load_table_leaves_identifiers_out_and_names_them(tmp_path):
    frame = _frame(patient_id=np.arange(100, 130), code=[f"P{i}" for i in range(30)])
    path = _write(tmp_path, frame)
    with pytest.warns(IdentifierColumnWarning, match=r"left out identifier-like columns 'patient_id', 'code'"):
        table = load_table(path, "y")
    assert table.columns == ["x"] and table.identifiers == ("patient_id", "code")


def test_features_or_drop_override_detection(tmp_path):
    path = _write(tmp_path, _frame(id=np.arange(30), z=np.arange(30) * 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifierColumnWarning)
        assert load_table(path, "y", features=["id", "x"]).columns == ["id", "x"]
        assert load_table(path, "y", drop=["x"]).columns == ["id", "z"]
        assert load_table(path, "y", drop=[]).columns == ["x", "id", "z"]


def test_features_and_drop_errors(tmp_path):
    path = _write(tmp_path, _frame(z=np.arange(30) * 0.5))
    with pytest.raises(DataError, match=r"^unknown feature column 'q'; available columns: x, y, z$"):
        load_table(path, "y", features=["x", "q"])
    with pytest.raises(DataError, match=r"^unknown feature columns 'q', 'r'; available columns: x, y, z$"):
        load_table(path, "y", features=["q", "r"])
    with pytest.raises(DataError, match=r"^cannot drop unknown columns 'q', 'r'; available columns: x, y, z$"):
        load_table(path, "y", drop=["q", "r"])
    with pytest.raises(DataError, match=r"^give --features or --drop, not both"):
        load_table(path, "y", features=["x"], drop=["z"])
    with pytest.raises(DataError, match=r"^the label column 'y' cannot also be a feature$"):
        load_table(path, "y", features=["x", "y"])
    with pytest.raises(DataError, match=r"^feature column 'x' is named twice$"):
        load_table(path, "y", features=["x", "x"])
    with pytest.raises(DataError, match=r"^unknown feature column 'q'"):
        load_csv(path, "y", features=["q"])
    assert load_csv(path, "y", features=["z", "x"]).feature_names == ["z", "x"]


def test_load_table_keeps_text_and_missing_values(tmp_path):
    frame = _frame(site=["a", "b", None] * 10)
    frame.loc[4, "x"] = np.nan
    table = load_table(_write(tmp_path, frame), "y")
    assert table.kinds == ["numeric", "categorical"]
    assert np.isnan(table.values[0][4]) and np.isnan(table.values[0]).sum() == 1
    assert table.values[1][:3].tolist() == ["a", "b", None]


def test_load_table_refuses_infinite_values_and_numbers_mixed_with_text(tmp_path):
    frame = _frame()
    frame.loc[2, "x"] = np.inf
    with pytest.raises(DataError, match=r"^feature column 'x' has 1 infinite value$"):
        load_table(_write(tmp_path, frame), "y")
    frame = _frame(b=["1.5"] * 29 + ["oops"])
    with pytest.raises(DataError, match=r"^feature column 'b' mixes numbers and text \(e.g. 'oops' in row 30\)"):
        load_table(_write(tmp_path, frame), "y")


def test_a_text_label_and_a_numeric_table_read_as_load_csv_reads_them(tmp_path):
    frame = _frame(z=np.arange(30) * 0.25)
    frame["y"] = np.where(frame["y"] == 1, "yes", "no")
    path = _write(tmp_path, frame)
    table, data = load_table(path, "y"), load_csv(path, "y")
    assert table.classes == data.classes == ("no", "yes")
    np.testing.assert_array_equal(table.y, data.y)
    np.testing.assert_array_equal(table.numeric(), data.X)
