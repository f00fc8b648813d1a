"""load_wdbc, load_csv (every error path by its message), Dataset checks, train_test_split."""

import json

import numpy as np
import pytest

from torchhefl.data import Dataset, load_csv, load_digits, load_wdbc, train_test_split
from torchhefl.exceptions import ConfigError, DataError


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ WDBC


def test_load_wdbc():
    data = load_wdbc()
    assert data.X.shape == (569, 30) and data.X.dtype == np.float64
    assert data.y.shape == (569,) and data.y.dtype == np.int64
    assert np.bincount(data.y).tolist() == [212, 357]  # 212 malignant (0), 357 benign (1)
    assert data.classes == ("malignant", "benign")
    assert len(data.feature_names) == 30 and data.feature_names[0] == "mean radius"
    assert data.label_name == "diagnosis"
    assert np.isfinite(data.X).all()
    assert data.num_features == 30 and len(data) == 569


def test_wdbc_through_csv_round_trip(tmp_path):
    data = load_wdbc()
    lines = [",".join(["id", *data.feature_names, "diagnosis"])]
    for i, (row, label) in enumerate(zip(data.X, data.y)):
        lines.append(",".join([str(1000 + i), *map(repr, row.tolist()), "M" if label == 0 else "B"]))
    path = _write(tmp_path, "\n".join(lines) + "\n")
    loaded = load_csv(path, "diagnosis", drop=["id"])
    np.testing.assert_array_equal(loaded.X, data.X)
    # "B" < "M": benign -> 0, malignant -> 1, the reverse of load_wdbc; reported in classes
    assert loaded.classes == ("B", "M")
    np.testing.assert_array_equal(loaded.y, 1 - data.y)
    assert loaded.feature_names == data.feature_names


# ---------------------------------------------------------------------------------------- load_csv


def test_load_csv_basic(tmp_path):
    path = _write(tmp_path, "a,b,label,c\n1,2.5,yes,3\n4,5,no,6\n7,8,yes,9\n")
    data = load_csv(path, "label")
    assert data.feature_names == ["a", "b", "c"]
    np.testing.assert_array_equal(data.X, [[1, 2.5, 3], [4, 5, 6], [7, 8, 9]])
    assert data.X.dtype == np.float64 and data.y.dtype == np.int64
    assert data.classes == ("no", "yes")
    assert data.y.tolist() == [1, 0, 1]
    assert data.label_name == "label"
    json.dumps(list(data.classes))


def test_numeric_labels_map_in_sorted_order(tmp_path):
    path = _write(tmp_path, "x,y\n0.1,4\n0.2,2\n0.3,4\n")
    data = load_csv(path, "y")
    assert data.classes == (2, 4) and type(data.classes[0]) is int
    assert data.y.tolist() == [1, 0, 1]
    json.dumps(list(data.classes))


def test_boolean_feature_is_numeric(tmp_path):
    data = load_csv(_write(tmp_path, "f,y\nTrue,0\nFalse,1\n"), "y")
    assert data.X[:, 0].tolist() == [1.0, 0.0]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="^data file not found: .*nope.csv$"):
        load_csv(tmp_path / "nope.csv", "y")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="^data path is not a file: "):
        load_csv(tmp_path, "y")


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="^data file is empty: .*data.csv$"):
        load_csv(_write(tmp_path, ""), "y")


def test_header_only(tmp_path):
    with pytest.raises(DataError, match="^data file has a header but no rows: "):
        load_csv(_write(tmp_path, "a,b,y\n"), "y")


def test_unreadable_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,y\n\xff\xfe\x00,1\n")
    with pytest.raises(DataError, match="^cannot read .*data.csv as CSV: "):
        load_csv(path, "y")


def test_ragged_rows(tmp_path):
    with pytest.raises(DataError, match="^cannot read .* as CSV: .*Expected 2 fields"):
        load_csv(_write(tmp_path, "a,y\n1,0\n2,1,3,4\n"), "y")


def test_unknown_label_column_lists_columns(tmp_path):
    with pytest.raises(DataError, match=r"^label column 'target' not found in .*; available columns: a, b, y$"):
        load_csv(_write(tmp_path, "a,b,y\n1,2,0\n"), "target")


def test_unknown_label_column_truncates_long_listing(tmp_path):
    header = ",".join(f"c{i}" for i in range(20))
    with pytest.raises(DataError, match=r"available columns: c0, c1, .*c7, \.\.\. \(20 in total\)$"):
        load_csv(_write(tmp_path, header + "\n" + ",".join("1" * 20) + "\n"), "label")


def test_non_numeric_feature_is_named(tmp_path):
    path = _write(tmp_path, "a,colour,y\n1,1.5,0\n2,red,1\n")
    with pytest.raises(DataError, match=r"^feature column 'colour' is not numeric \(e.g. 'red' in row 2\)$"):
        load_csv(path, "y")


def test_nan_is_named_with_count(tmp_path):
    path = _write(tmp_path, "a,b,y\n1,,0\n2,3,1\n3,NaN,0\n")
    with pytest.raises(DataError, match=r"^feature column 'b' has 2 missing \(NaN\) values$"):
        load_csv(path, "y")


def test_infinite_is_named_with_count(tmp_path):
    path = _write(tmp_path, "a,b,y\ninf,1,0\n2,3,1\n")
    with pytest.raises(DataError, match=r"^feature column 'a' has 1 infinite value$"):
        load_csv(path, "y")
    path = _write(tmp_path, "a,b,y\n1,-inf,0\n2,inf,1\n", name="b.csv")
    with pytest.raises(DataError, match=r"^feature column 'b' has 2 infinite values$"):
        load_csv(path, "y")


def test_missing_label(tmp_path):
    with pytest.raises(DataError, match=r"^label column 'y' has 1 missing \(NaN\) value$"):
        load_csv(_write(tmp_path, "a,y\n1,0\n2,\n3,1\n"), "y")


def test_infinite_label(tmp_path):
    with pytest.raises(DataError, match=r"^label column 'y' has 1 infinite value$"):
        load_csv(_write(tmp_path, "a,y\n1,0.0\n2,inf\n3,1.0\n"), "y")


def test_one_class_label(tmp_path):
    with pytest.raises(DataError, match=r"^label column 'y' must have at least 2 distinct values, got 1: 1$"):
        load_csv(_write(tmp_path, "a,y\n1,1\n2,1\n"), "y")


def test_three_class_label_maps_sorted_values(tmp_path):
    data = load_csv(_write(tmp_path, "a,y\n1,cat\n2,dog\n3,bird\n4,cat\n"), "y")
    assert data.classes == ("bird", "cat", "dog") and data.num_classes == 3
    assert data.y.tolist() == [1, 2, 0, 1]


def test_digits():
    data = load_digits()
    assert (len(data), data.num_features, data.num_classes) == (1797, 64, 10)
    assert data.classes == tuple(range(10)) and sorted(set(data.y.tolist())) == list(range(10))
    assert (data.X.std(axis=0) == 0).any()  # constant pixel columns, which the standardiser must take


def test_stratified_split_keeps_every_class():
    train, test = train_test_split(load_digits(), test_size=0.2, seed=0)
    assert np.bincount(test.y, minlength=10).min() >= 30 and len(test) == 360


def test_drop_errors(tmp_path):
    path = _write(tmp_path, "id,a,y\n1,2,0\n2,3,1\n")
    assert load_csv(path, "y", drop=["id"]).feature_names == ["a"]
    with pytest.raises(DataError, match=r"^cannot drop unknown column 'ID'; available columns: id, a, y$"):
        load_csv(path, "y", drop=["ID"])
    with pytest.raises(DataError, match=r"^cannot drop the label column 'y'$"):
        load_csv(path, "y", drop=["y"])
    with pytest.raises(DataError, match=r"^no feature columns in .*: only the label column 'y' is left$"):
        load_csv(path, "y", drop=["id", "a"])


def test_repeated_header_is_renamed_by_pandas(tmp_path):
    data = load_csv(_write(tmp_path, "a,a,y\n1,2,0\n3,4,1\n"), "y")
    assert data.feature_names == ["a", "a.1"]


# ----------------------------------------------------------------------------------------- Dataset


def test_dataset_checks():
    X = np.zeros((3, 2))
    with pytest.raises(DataError, match=r"^y must have shape \(3,\) to match X, got \(2,\)$"):
        Dataset(X, np.zeros(2, dtype=int), ["a", "b"], "y")
    with pytest.raises(DataError, match=r"^X must have shape \(n, d\), got \(3,\)$"):
        Dataset(np.zeros(3), np.zeros(3, dtype=int), ["a"], "y")
    with pytest.raises(DataError, match="^y must hold only the labels 0 and 1$"):
        Dataset(X, np.array([0, 1, 2]), ["a", "b"], "y")
    with pytest.raises(DataError, match="^y must hold only the labels 0 to 2$"):
        Dataset(X, np.array([0, 1, 3]), ["a", "b"], "y", classes=("a", "b", "c"))
    with pytest.raises(DataError, match="^classes must name at least 2 label values, got 1$"):
        Dataset(X, np.zeros(3, dtype=int), ["a", "b"], "y", classes=("a",))
    with pytest.raises(DataError, match="^got 1 feature names for 2 feature columns$"):
        Dataset(X, np.zeros(3, dtype=int), ["a"], "y")


def test_subset_keeps_metadata():
    data = load_wdbc()
    sub = data.subset([5, 2])
    np.testing.assert_array_equal(sub.X, data.X[[5, 2]])
    np.testing.assert_array_equal(sub.y, data.y[[5, 2]])
    assert sub.classes == data.classes and sub.feature_names == data.feature_names


# -------------------------------------------------------------------------------- train_test_split


def _row_keys(dataset):
    return {row.tobytes() for row in dataset.X}


def test_split_is_stratified_seeded_and_disjoint():
    data = load_wdbc()
    train, test = train_test_split(data, test_size=0.2, seed=3)
    assert len(train) == 455 and len(test) == 114
    assert not (_row_keys(train) & _row_keys(test))
    assert len(_row_keys(train) | _row_keys(test)) == len(_row_keys(data))
    for part in (train, test):
        assert abs(part.y.mean() - data.y.mean()) < 0.01
    again_train, again_test = train_test_split(data, test_size=0.2, seed=3)
    np.testing.assert_array_equal(train.X, again_train.X)
    np.testing.assert_array_equal(test.y, again_test.y)
    other_train, _ = train_test_split(data, test_size=0.2, seed=4)
    assert not np.array_equal(train.X, other_train.X)


def test_split_defaults():
    data = load_wdbc()
    train, test = train_test_split(data)
    t2, _ = train_test_split(data, test_size=0.2, seed=0)
    np.testing.assert_array_equal(train.X, t2.X)
    assert len(test) == 114


@pytest.mark.parametrize("bad", [0, 0.0, 1.0, -0.1, 1.5, "0.2", True])
def test_split_rejects_bad_test_size(bad):
    with pytest.raises(ConfigError, match=r"^test_size must be a fraction between 0 and 1 \(exclusive\), got "):
        train_test_split(load_wdbc(), test_size=bad)


def test_split_rejects_too_few_rows():
    data = Dataset(np.arange(8.0).reshape(4, 2), np.array([0, 1, 1, 1]), ["a", "b"], "y")
    with pytest.raises(DataError, match="^cannot stratify: every class needs at least 2 rows, got 1 of class 0 and 3 of class 1$"):
        train_test_split(data)
    data = Dataset(np.arange(8.0).reshape(4, 2), np.array([0, 1, 0, 1]), ["a", "b"], "y")
    with pytest.raises(DataError, match="leaves 1 test and 3 training rows; each needs at least 2"):
        train_test_split(data, test_size=0.2)
