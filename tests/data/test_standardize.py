"""Federated standardisation from moments against the centralised fit and scikit-learn."""

import json

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from torchhefl.data import (
    Moments,
    Standardizer,
    load_wdbc,
    local_moments,
    partition_dirichlet,
    partition_iid,
    sum_moments,
)
from torchhefl.exceptions import DataError


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_local_moments():
    X = np.array([[1.0, 2.0], [3.0, -4.0], [5.0, 0.5]])
    m = local_moments(X)
    assert m.count == 3 and isinstance(m.count, int)
    np.testing.assert_array_equal(m.sum, [9.0, -1.5])
    np.testing.assert_array_equal(m.sumsq, [35.0, 20.25])
    assert m.sum.dtype == np.float64 and m.sumsq.dtype == np.float64
    m32 = local_moments(X.astype(np.float32))
    assert m32.sum.dtype == np.float64


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_from_moments_over_partitions_equals_centralised_fit(partition):
    data = load_wdbc()
    if partition == "iid":
        parts = partition_iid(len(data), 5, seed=0)
    else:
        parts = partition_dirichlet(data.y, 5, alpha=0.3, seed=0)
    federated = Standardizer.from_moments(sum_moments(local_moments(data.X[p]) for p in parts))
    central = Standardizer.fit(data.X)
    _close(federated.mean, central.mean)
    _close(federated.scale, central.scale)
    _close(federated.transform(data.X), central.transform(data.X))


def test_fit_matches_sklearn_standard_scaler():
    X = load_wdbc().X
    ours = Standardizer.fit(X)
    sk = StandardScaler().fit(X)
    _close(ours.mean, sk.mean_)
    _close(ours.scale, sk.scale_)
    Z = ours.transform(X)
    _close(Z, sk.transform(X))
    _close(Z.mean(axis=0), np.zeros(30))
    _close(Z.std(axis=0), np.ones(30))


def test_constant_feature_gets_scale_one():
    X = np.column_stack([np.full(10, 3.7), np.arange(10.0), np.full(10, 1e6 + 0.1)])
    for s in (Standardizer.fit(X), Standardizer.from_moments(sum_moments([local_moments(X[:3]), local_moments(X[3:])]))):
        assert s.scale[0] == 1.0 and s.scale[2] == 1.0
        _close(s.transform(X)[:, 0], np.zeros(10))
        assert np.abs(s.transform(X)[:, 2]).max() < 1e-6


def test_moments_add_and_sum():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4))
    a, b, c = local_moments(X[:5]), local_moments(X[5:12]), local_moments(X[12:])
    total = sum_moments([a, b, c])
    whole = local_moments(X)
    assert total.count == 20
    _close(total.sum, whole.sum)
    _close(total.sumsq, whole.sumsq)
    assert (a + b).count == 12
    with pytest.raises(DataError, match="^cannot add moments of 4 and 3 features$"):
        a + local_moments(X[:, :3])
    with pytest.raises(DataError, match="^sum_moments needs the moments of at least one client$"):
        sum_moments([])
    with pytest.raises(TypeError):
        a + 1


def test_moments_vector_round_trip_and_additivity():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3))
    a, b = local_moments(X[:10]), local_moments(X[10:])
    v = a.to_vector()
    assert v.shape == (7,) and v[0] == 10.0
    back = Moments.from_vector(v)
    assert back.count == 10
    np.testing.assert_array_equal(back.sum, a.sum)
    np.testing.assert_array_equal(back.sumsq, a.sumsq)
    summed = Moments.from_vector(a.to_vector() + b.to_vector())
    _close(summed.sum, (a + b).sum)
    assert summed.count == 30


def test_moments_errors():
    with pytest.raises(DataError, match=r"^a moments vector has shape \(2d \+ 1,\) with d >= 1, got \(4,\)$"):
        Moments.from_vector(np.zeros(4))
    with pytest.raises(DataError, match="^a moments vector must start with a non-negative row count, got 2.5$"):
        Moments.from_vector([2.5, 1.0, 1.0])
    with pytest.raises(DataError, match="^Moments count must be a non-negative integer, got -1$"):
        Moments(-1, np.zeros(2), np.zeros(2))
    with pytest.raises(DataError, match=r"^Moments needs sum and sumsq of one shape \(d,\), got \(2,\) and \(3,\)$"):
        Moments(1, np.zeros(2), np.zeros(3))
    with pytest.raises(DataError, match=r"^local_moments expects X of shape \(n, d\), got \(3,\)$"):
        local_moments(np.zeros(3))
    with pytest.raises(DataError, match="^cannot standardise from the moments of zero rows$"):
        Standardizer.from_moments(local_moments(np.zeros((0, 2))))


def test_standardizer_dict_round_trip_is_json():
    s = Standardizer.fit(load_wdbc().X)
    state = json.loads(json.dumps(s.to_dict()))
    back = Standardizer.from_dict(state)
    np.testing.assert_array_equal(back.mean, s.mean)
    np.testing.assert_array_equal(back.scale, s.scale)
    assert repr(back) == "Standardizer(num_features=30)"


def test_standardizer_errors():
    s = Standardizer([0.0, 1.0], [1.0, 2.0])
    np.testing.assert_array_equal(s.transform([[1.0, 5.0]]), [[1.0, 2.0]])
    with pytest.raises(DataError, match=r"^Standardizer expects X of shape \(n, 2\), got \(1, 3\)$"):
        s.transform(np.zeros((1, 3)))
    with pytest.raises(DataError, match="^a Standardizer dict has exactly the keys 'mean' and 'scale', got \\['mean'\\]$"):
        Standardizer.from_dict({"mean": [0.0]})
    with pytest.raises(DataError, match="^Standardizer needs a finite mean and a finite, positive scale$"):
        Standardizer([0.0], [0.0])
    with pytest.raises(DataError, match=r"^Standardizer needs mean and scale of one shape \(d,\), got \(2,\) and \(1,\)$"):
        Standardizer([0.0, 1.0], [1.0])
    with pytest.raises(DataError, match=r"^Standardizer.fit expects X of shape \(n, d\) with n >= 1, got \(0, 2\)$"):
        Standardizer.fit(np.zeros((0, 2)))
