"""Your own table, as a new user brings it: the UCI-style WDBC file (an ``id`` column, ``diagnosis``
as M/B), with a text column and a few missing values, trains with the default command and reaches
the bundled data set's accuracy."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from torchhefl.data import IdentifierColumnWarning, Standardizer, TableEncoder, train_test_split
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.simulation import build, load_dataset
from torchhefl.nn import LogisticRegression
from train.federated import main

RUN = ["--rounds", "30", "--no-progress", "--quiet"]


@pytest.fixture(scope="module")
def uci_csv(tmp_path_factory):
    """WDBC as the UCI file has it, plus a 3-valued text column and 10 missing cells."""
    bunch = load_breast_cancer()
    frame = pd.DataFrame(bunch.data, columns=bunch.feature_names)
    rng = np.random.default_rng(0)
    frame.insert(0, "id", rng.choice(np.arange(800_000, 100_000_000), size=len(frame), replace=False))
    frame["diagnosis"] = np.where(bunch.target == 0, "M", "B")
    frame["clinic"] = rng.choice(["north", "south", "east"], size=len(frame))
    for cell in rng.choice(len(frame) * 30, size=10, replace=False):
        frame.iat[cell // 30, 1 + cell % 30] = np.nan
    path = tmp_path_factory.mktemp("uci") / "wdbc.csv"
    frame.to_csv(path, index=False)
    return path


def _accuracy(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["test_accuracy"])


def _run(tmp_path, name, argv, capsys):
    code = main(RUN + ["--logdir", str(tmp_path), "--run-name", name] + argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return tmp_path / name, captured


@pytest.fixture(scope="module")
def bundled_accuracy(tmp_path_factory):
    """The bundled data set's default run, in plain mode (he-clients gives the same model)."""
    run_dir = tmp_path_factory.mktemp("bundled")
    assert main(RUN + ["--mode", "plain", "--logdir", str(run_dir), "--run-name", "wdbc"]) == 0
    return _accuracy(run_dir / "wdbc")


def test_the_uci_file_trains_with_the_id_left_out_and_the_bundled_accuracy(uci_csv, bundled_accuracy, tmp_path, capsys):
    run_dir, out = _run(tmp_path, "uci", ["--mode", "plain", "--data", str(uci_csv), "--label", "diagnosis"], capsys)
    warnings = [line for line in out.err.splitlines() if "warning" in line]
    assert warnings == [
        "python -m train.federated: warning: left out identifier-like column 'id' "
        "(give --features or --drop to choose the columns yourself)"
    ]
    assert "33 features" in out.out and "left out 'id'" in out.out and "one-hot 'clinic' (3 categories)" in out.out
    state = torch.load(run_dir / "model.pt")
    assert next(iter(state.values())).shape[-1] == 33  # 30 measurements and 3 clinics: no id
    accuracy = _accuracy(run_dir)
    assert abs(accuracy - bundled_accuracy) <= 0.01, (accuracy, bundled_accuracy)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["impute"] == "mean" and config["features"] is None and config["drop"] is None
    assert "7 missing training values filled with the federated mean" in out.out


def test_the_run_folder_says_how_to_prepare_new_rows(uci_csv, tmp_path, capsys):
    """``preprocessing.json`` (the agreed vocabulary, the fill values, the standardisation) and
    ``model.pt`` score the raw held-out rows, gaps and text included, as the run reported."""
    run_dir, _ = _run(tmp_path, "uci", ["--mode", "plain", "--data", str(uci_csv), "--label", "diagnosis"], capsys)
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    enc = prep["encoding"]
    assert enc["vocabulary"] == {"clinic": ["east", "north", "south"]} and enc["missing"] == 7
    assert len(enc["fill"]) == 30 and len(prep["standardizer"]["mean"]) == len(prep["feature_names"]) == 33
    encoder = TableEncoder(enc["columns"], enc["kinds"], enc["vocabulary"], enc["fill"], enc["impute"])
    config = TrainConfig(data=str(uci_csv), label="diagnosis")
    with pytest.warns(IdentifierColumnWarning):
        _, test = train_test_split(load_dataset(config), test_size=config.test_size, seed=config.seed)
    assert np.isnan(test.numeric()).sum() == 3  # the other 3 of the 10 gaps
    rows = encoder.transform(test)
    X = torch.as_tensor(Standardizer.from_dict(prep["standardizer"]).transform(rows.X))
    model = LogisticRegression(33, dtype=torch.float64)
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    with torch.no_grad():
        accuracy = float(((model(X).reshape(-1) >= 0).numpy() == rows.y).mean())
    assert accuracy == pytest.approx(_accuracy(run_dir), abs=1e-12)


def test_the_uci_file_under_the_sites_key_gives_the_plain_model(uci_csv, tmp_path, capsys):
    base = ["--data", str(uci_csv), "--label", "diagnosis", "--impute", "median"]
    plain, _ = _run(tmp_path, "plain", ["--mode", "plain"] + base, capsys)
    he, _ = _run(tmp_path, "he", ["--mode", "he", "--key-holder", "clients", "--key-bits", "512",
                                  "--allow-insecure-keys"] + base, capsys)
    assert _accuracy(he) == _accuracy(plain)
    for a, b in zip(torch.load(plain / "model.pt").values(), torch.load(he / "model.pt").values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_dropping_the_id_by_hand_warns_nothing_and_keeping_it_is_possible(uci_csv, tmp_path, capsys):
    _, out = _run(tmp_path, "drop", ["--mode", "plain", "--rounds", "1", "--data", str(uci_csv), "--label", "diagnosis",
                                     "--drop", "id,clinic"], capsys)
    assert "warning" not in out.err and "30 features" in out.out
    _, out = _run(tmp_path, "features", ["--mode", "plain", "--rounds", "1", "--data", str(uci_csv), "--label",
                                         "diagnosis", "--features", "mean radius,clinic"], capsys)
    assert "warning" not in out.err and "4 features" in out.out


def test_standardisation_uses_the_imputed_values(uci_csv):
    config = TrainConfig(mode="plain", data=str(uci_csv), label="diagnosis", impute="median")
    with pytest.warns(IdentifierColumnWarning, match="'id'"):
        sim = build(config)
    assert np.isnan(sim.prepared.train.X).sum() == 7  # 7 of the 10 missing cells are in training rows, not filled before the run
    assert np.isnan(np.concatenate([c._X_raw for c in sim.clients])).any()
    sim.server.setup()  # the sites fill their gaps from the federated median, then standardise
    filled = np.concatenate([c._X_raw for c in sim.clients])
    assert not np.isnan(filled).any() and sim.filled() == 7
    expected = Standardizer.fit(filled)  # the centralised fit on the imputed training rows
    for client in sim.clients:
        np.testing.assert_allclose(client.standardizer.mean, expected.mean, rtol=1e-10)
        np.testing.assert_allclose(client.standardizer.scale, expected.scale, rtol=1e-10)


def test_the_uci_file_under_the_servers_2048_bit_key(uci_csv, tmp_path, capsys):
    """End to end with a real key: the imputation passes masked under the server's 2048-bit key,
    the rest of the default command unchanged; the accuracy of the plain run on the same file."""
    base = ["--data", str(uci_csv), "--label", "diagnosis", "--impute", "median"]
    plain, _ = _run(tmp_path, "plain", ["--mode", "plain", "--clip-norm", "none"] + base, capsys)
    hem, out = _run(tmp_path, "hem", ["--mode", "he", "--key-holder", "server"] + base, capsys)
    assert "7 missing training values filled with the federated median" in out.out
    assert abs(_accuracy(hem) - _accuracy(plain)) <= 0.01
    for a, b in zip(torch.load(plain / "model.pt").values(), torch.load(hem / "model.pt").values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
