"""Missing values are filled from statistics summed through each mode's protected path, and the
result equals the same fill computed in plaintext from the sites' pooled summaries
(:func:`~torchhefl.data.agree_encoding`)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from torchhefl.data import MEDIAN_BINS, Standardizer, agree_encoding, load_table
from torchhefl.data.dataset import train_test_split
from torchhefl.data.partition import partition_iid
from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated.messages import STATS_INS, encode_request
from torchhefl.federated.simulation import build
from torchhefl.federated.statistics import IMPUTE, MEDIAN, Imputation

MODES = {
    "plain": dict(mode="plain"),
    "he-clients": dict(mode="he", key_holder="clients"),
    "he-server": dict(mode="he", key_holder="server", clip_norm=None),
}


@pytest.fixture(scope="module")
def gappy_csv(tmp_path_factory):
    """WDBC with a text column and 40 missing cells spread over 4 columns."""
    bunch = load_breast_cancer()
    frame = pd.DataFrame(bunch.data[:, :6], columns=bunch.feature_names[:6])
    rng = np.random.default_rng(1)
    frame["diagnosis"] = np.where(bunch.target == 0, "M", "B")
    frame["clinic"] = rng.choice(["north", "south", "east"], size=len(frame))
    for j in range(4):
        frame.iloc[rng.choice(len(frame), size=10, replace=False), j] = np.nan
    path = tmp_path_factory.mktemp("gaps") / "gappy.csv"
    frame.to_csv(path, index=False)
    return path


def _reference(config, path):
    """The fill computed in plaintext from each site's own summaries (the in-process reference)."""
    table = load_table(str(path), "diagnosis")
    train, _ = train_test_split(table, test_size=config.test_size, seed=config.seed)
    parts = partition_iid(len(train), config.clients, seed=config.seed)
    encoder = agree_encoding([train.subset(idx) for idx in parts], impute=config.impute)
    return encoder, encoder.transform(train)


@pytest.mark.parametrize("impute", ["mean", "median"])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_fills_as_the_plaintext_reference(small_config, gappy_csv, mode, impute):
    config = small_config(data=str(gappy_csv), label="diagnosis", impute=impute, rounds=1, **MODES[mode])
    sim = build(config)
    assert np.isnan(np.concatenate([c._X_raw for c in sim.clients])).sum() > 0  # the sites hold the gaps
    sim.server.setup()
    encoder, filled = _reference(config, gappy_csv)
    numeric = [i for i, name in enumerate(encoder.feature_names) if name in encoder.fill]
    for client in sim.clients:
        assert not np.isnan(client._X_raw).any()
        gaps = ~np.isnan(client.imputation.fill)
        assert gaps.sum() == 4  # the four columns with a missing value somewhere
        expected = np.array([encoder.fill[encoder.feature_names[j]] for j in numeric])
        # the fixed-point sums (2^-40 to 2^-56) against float64: a relative 1e-9 at worst
        np.testing.assert_allclose(client.imputation.fill[numeric][gaps[numeric]], expected[gaps[numeric]], rtol=1e-9)
    X = np.concatenate([c._X_raw for c in sim.clients])
    order = np.concatenate(sim.prepared.parts)
    np.testing.assert_allclose(X, filled.X[order], rtol=1e-9)
    expected = Standardizer.fit(filled.X)
    for client in sim.clients:
        np.testing.assert_allclose(client.standardizer.mean, expected.mean, rtol=1e-8)
        np.testing.assert_allclose(client.standardizer.scale, expected.scale, rtol=1e-8)
    assert sim.filled() == encoder.missing > 0  # the training rows' gaps (the rest are held out)
    if mode == "plain" or mode == "he-server":  # the server holds the test rows: it filled them too
        assert sim.server.imputation.fill is not None and not np.isnan(sim.server._X_test_raw).any()
    else:
        assert sim.server.imputation.total is None  # it reads no sum


def test_the_server_key_decrypts_only_the_summed_passes(small_config, gappy_csv):
    config = small_config(data=str(gappy_csv), label="diagnosis", impute="median", rounds=1, **MODES["he-server"])
    sim = build(config)
    sim.server.setup()
    purposes = [p for p, _ in sim.server.exchange.decryptions]
    assert purposes == ["statistics_sum"] * 3  # impute, median, standardize: one sum each
    sizes = [n for _, n in sim.server.exchange.decryptions]
    d = sim.clients[0]._X_raw.shape[1]
    # the median histograms are packed: 4 columns of 1026 counts in 32-bit slots of 512-bit plaintexts
    assert sizes == [1 + 3 * d, -(-4 * (MEDIAN_BINS + 2) // ((512 - 2) // 32)), 1 + 2 * d]


def test_a_site_that_does_not_impute_refuses_the_passes(small_config):
    sim = build(small_config(mode="plain"))  # the bundled numbers: nothing to fill
    with pytest.raises(ProtocolError, match="does not fill missing values"):
        sim.clients[0].handle(encode_request(STATS_INS, {"purpose": IMPUTE}))


def test_a_site_with_gaps_refuses_to_standardise_before_filling(small_config, gappy_csv):
    sim = build(small_config(data=str(gappy_csv), label="diagnosis", mode="plain"))
    with pytest.raises(ProtocolError, match="standardisation comes after the imputation passes"):
        sim.clients[0].handle(encode_request(STATS_INS, {}))


def test_summed_statistics_are_checked_before_use():
    imputation = Imputation("median")
    with pytest.raises(MalformedMessageError, match="not whole numbers"):
        imputation.read(IMPUTE, {"rows": np.array([10.0]), "count": np.array([11.0]), "sum": np.zeros(1), "sumsq": np.zeros(1)})
    imputation.read(IMPUTE, {"rows": np.array([10.0]), "count": np.array([9.0, 10.0]), "sum": np.array([9.0, 1.0]), "sumsq": np.array([9.0, 1.0])})
    with pytest.raises(MalformedMessageError, match="do not count the values"):
        imputation.read(MEDIAN, {"histogram": np.zeros((1, MEDIAN_BINS + 2))})


@pytest.mark.parametrize("mode", list(MODES))
def test_the_median_of_a_table_without_gaps_is_an_empty_pass(small_config, tmp_path, mode):
    """--impute median on a table no site has a gap in: the median pass carries an empty vector
    (the sites know from the first pass that no column needs one), and nothing is filled."""
    bunch = load_breast_cancer()
    frame = pd.DataFrame(bunch.data[:, :5], columns=bunch.feature_names[:5])
    frame["diagnosis"] = bunch.target
    frame["ward"] = np.where(bunch.target == 1, "a", "b")
    frame.to_csv(tmp_path / "full.csv", index=False)
    sim = build(small_config(data=str(tmp_path / "full.csv"), label="diagnosis", impute="median", rounds=1, **MODES[mode]))
    sim.server.setup()
    assert sim.filled() == 0 and all(np.isnan(c.imputation.fill).all() for c in sim.clients)
    expected = Standardizer.fit(np.concatenate([c._X_raw for c in sim.clients]))
    np.testing.assert_allclose(sim.clients[0].standardizer.mean, expected.mean, rtol=1e-8)
