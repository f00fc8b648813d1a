"""partition_iid and partition_dirichlet: coverage, sizes, determinism, skew, errors."""

import numpy as np
import pytest

from torchhefl.data import load_wdbc, partition_dirichlet, partition_iid
from torchhefl.exceptions import ConfigError, DataError


def _assert_covers(parts, n):
    allidx = np.concatenate(parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert sorted(allidx.tolist()) == list(range(n))


@pytest.mark.parametrize("n,k", [(10, 1), (10, 3), (455, 3), (455, 10), (7, 7)])
def test_iid_covers_every_row_once_with_even_sizes(n, k):
    parts = partition_iid(n, k, seed=0)
    assert len(parts) == k
    _assert_covers(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_accepts_labels_and_is_shuffled_and_seeded():
    labels = load_wdbc().y
    parts = partition_iid(labels, 3, seed=1)
    _assert_covers(parts, len(labels))
    assert not np.array_equal(np.concatenate(parts), np.arange(len(labels)))
    again = partition_iid(len(labels), 3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_iid(len(labels), 3, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("fn", [partition_iid, lambda y, k, seed: partition_dirichlet(y, k, alpha=1.0, seed=seed)])
def test_client_count_errors(fn):
    labels = np.array([0, 1, 0, 1, 1])
    with pytest.raises(DataError, match=r"^more clients \(6\) than training rows \(5\)$"):
        fn(labels, 6, seed=0)
    with pytest.raises(DataError, match="^number of clients must be at least 1, got 0$"):
        fn(labels, 0, seed=0)
    with pytest.raises(DataError, match="^number of clients must be an integer, got 2.5$"):
        fn(labels, 2.5, seed=0)


def test_dirichlet_covers_and_respects_min_size():
    labels = load_wdbc().y
    for alpha in (0.1, 0.3, 1.0, 100.0):
        parts = partition_dirichlet(labels, 5, alpha=alpha, seed=0)
        _assert_covers(parts, len(labels))
        assert min(len(p) for p in parts) >= 10
    parts = partition_dirichlet(labels, 4, alpha=0.5, seed=0, min_size=50)
    assert min(len(p) for p in parts) >= 50


def test_dirichlet_is_deterministic_for_a_seed():
    labels = load_wdbc().y
    a = partition_dirichlet(labels, 4, alpha=0.3, seed=7)
    b = partition_dirichlet(labels, 4, alpha=0.3, seed=7)
    c = partition_dirichlet(labels, 4, alpha=0.3, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _mean_label_skew(labels, alpha, seeds=range(10)):
    """Mean over seeds of the spread of class-1 fractions across clients."""
    spreads = []
    for seed in seeds:
        parts = partition_dirichlet(labels, 3, alpha=alpha, seed=seed)
        fractions = [labels[p].mean() for p in parts]
        spreads.append(max(fractions) - min(fractions))
    return float(np.mean(spreads))


def test_small_alpha_skews_labels_more_than_large_alpha():
    labels = load_wdbc().y
    skewed = _mean_label_skew(labels, 0.1)
    near_iid = _mean_label_skew(labels, 1000.0)
    assert skewed > 0.3
    assert near_iid < 0.1
    assert skewed > 3 * near_iid


def test_dirichlet_default_min_size_is_capped_by_rows_per_client():
    labels = np.array([0, 1] * 20)  # 40 rows, 4 clients -> default min_size 5 (half an even share)
    for seed in range(5):
        parts = partition_dirichlet(labels, 4, alpha=0.5, seed=seed)
        _assert_covers(parts, 40)
        assert min(len(p) for p in parts) >= 5
    labels = np.array([0, 1] * 20)  # 40 rows, 10 clients -> default min_size 2
    parts = partition_dirichlet(labels, 10, alpha=100.0, seed=0)
    _assert_covers(parts, 40)
    assert min(len(p) for p in parts) >= 2


def test_dirichlet_errors():
    labels = load_wdbc().y[:100]
    with pytest.raises(ConfigError, match="^alpha must be a positive number, got 0$"):
        partition_dirichlet(labels, 3, alpha=0, seed=0)
    with pytest.raises(ConfigError, match="^alpha must be a positive number, got nan$"):
        partition_dirichlet(labels, 3, alpha=float("nan"), seed=0)
    with pytest.raises(ConfigError, match="^min_size must be a non-negative integer, got -1$"):
        partition_dirichlet(labels, 3, alpha=1.0, seed=0, min_size=-1)
    with pytest.raises(DataError, match="^cannot give each of 3 clients at least 40 rows from 100 rows$"):
        partition_dirichlet(labels, 3, alpha=1.0, seed=0, min_size=40)
    with pytest.raises(DataError, match=r"^labels must have shape \(n,\), got \(10, 10\)$"):
        partition_dirichlet(labels.reshape(10, 10), 3, alpha=1.0, seed=0)
    with pytest.raises(
        DataError,
        match=r"^no Dirichlet\(alpha=0.01\) draw gave each of 50 clients at least 1 row in 1000 attempts; "
        "lower min_size or raise alpha$",
    ):
        partition_dirichlet(labels, 50, alpha=0.01, seed=0)
