"""The sites' agreed encoding: the one-hot vocabulary from their category sets, the mean and the
median fills from summed statistics, each checked against the same computation on pooled rows."""

import numpy as np
import pytest

from torchhefl.data import (
    MEDIAN_BINS,
    Table,
    agree_encoding,
    local_histogram,
    local_summary,
    median_from_histogram,
)
from torchhefl.exceptions import ConfigError, DataError


def _table(numeric: dict, text: dict | None = None, n: int | None = None) -> Table:
    text = text or {}
    n = n or len(next(iter({**numeric, **text}.values())))
    columns = list(numeric) + list(text)
    kinds = ["numeric"] * len(numeric) + ["categorical"] * len(text)
    values = [np.asarray(v, dtype=np.float64) for v in numeric.values()]
    values += [np.array(v, dtype=object) for v in text.values()]
    return Table(columns, kinds, values, np.arange(n) % 2, "y", (0, 1))


def _sites(table: Table, k: int = 3, seed: int = 0) -> list[Table]:
    order = np.random.default_rng(seed).permutation(len(table))
    return [table.subset(part) for part in np.array_split(order, k)]


def _with_missing(values, fraction=0.1, seed=0):
    values = np.array(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values[rng.random(values.size) < fraction] = np.nan
    return values


def test_categories_unseen_at_a_site_are_in_the_vocabulary_and_unseen_ones_encode_as_zeros():
    sites = [
        _table({"x": [1.0, 2.0]}, {"ward": ["a", "b"]}),
        _table({"x": [3.0, 4.0]}, {"ward": ["c", "c"]}),
        _table({"x": [5.0, 6.0]}, {"ward": ["b", None]}),
    ]
    encoder = agree_encoding(sites)
    assert encoder.vocabulary == {"ward": ["a", "b", "c"]}
    assert encoder.feature_names == ["x", "ward=a", "ward=b", "ward=c"]
    # site 1 never saw "a" or "b", yet encodes in the same columns as the others
    np.testing.assert_array_equal(encoder.transform(sites[1]).X, [[3, 0, 0, 1], [4, 0, 0, 1]])
    np.testing.assert_array_equal(encoder.transform(sites[0]).X, [[1, 1, 0, 0], [2, 0, 1, 0]])
    # a test row with a category no training site has, and a missing one: all zeros
    test = _table({"x": [7.0, 8.0]}, {"ward": ["d", None]})
    np.testing.assert_array_equal(encoder.transform(test).X, [[7, 0, 0, 0], [8, 0, 0, 0]])


def test_what_a_site_shares_is_its_category_set_and_sums_not_rows():
    site = _table({"x": [1.0, np.nan, 3.0]}, {"ward": ["b", "a", "b"]})
    summary = local_summary(site)
    assert summary.categories == (frozenset({"a", "b"}),)
    np.testing.assert_array_equal(summary.to_vector(), [3, 2, 4, 10])  # rows, count, sum, sumsq


def test_mean_imputation_is_the_pooled_mean_of_the_non_missing_values():
    rng = np.random.default_rng(3)
    pooled = _table({"a": _with_missing(rng.normal(5, 2, 301)), "b": _with_missing(rng.exponential(3, 301), 0.3, 1)})
    encoder = agree_encoding(_sites(pooled), impute="mean")
    expected = [np.nanmean(pooled.values[0]), np.nanmean(pooled.values[1])]  # plaintext, on pooled rows
    np.testing.assert_allclose([encoder.fill["a"], encoder.fill["b"]], expected, rtol=1e-12)
    X = encoder.transform(pooled).X
    missing = np.isnan(pooled.values[0])
    np.testing.assert_array_equal(X[missing, 0], encoder.fill["a"])
    np.testing.assert_array_equal(X[~missing, 0], pooled.values[0][~missing])
    assert encoder.missing == int(np.isnan(pooled.numeric()).sum())


@pytest.mark.parametrize("n", [300, 301, 2, 1])
def test_median_imputation_is_within_the_documented_precision(n):
    rng = np.random.default_rng(n)
    skewed = rng.lognormal(0, 1.5, n)  # mean and median far apart
    ties = rng.integers(0, 5, n).astype(np.float64)
    pooled = _table({"skewed": skewed, "ties": ties})
    sites = _sites(pooled, k=min(3, n))
    encoder = agree_encoding(sites, impute="median")
    for j, name in enumerate(["skewed", "ties"]):
        v = pooled.values[j]
        precision = v.std() / MEDIAN_BINS  # sd / bins, the population sd of the non-missing values
        assert abs(encoder.fill[name] - np.median(v)) <= precision * (1 + 1e-9) + 1e-12, name


def test_median_ignores_missing_values_and_handles_a_constant_column():
    pooled = _table({"a": _with_missing(np.random.default_rng(0).gamma(2, 2, 200), 0.2), "c": np.full(200, 4.25)})
    sites = _sites(pooled)
    total = sum((local_summary(s) for s in sites[1:]), local_summary(sites[0]))
    histogram = sum(local_histogram(s, total) for s in sites)
    assert histogram.shape == (2, MEDIAN_BINS + 2) and histogram[0].sum() == np.isfinite(pooled.values[0]).sum()
    median = median_from_histogram(histogram, total)
    assert abs(median[0] - np.nanmedian(pooled.values[0])) <= np.nanstd(pooled.values[0]) / MEDIAN_BINS
    assert median[1] == 4.25


def test_impute_none_keeps_the_refusal():
    sites = _sites(_table({"a": [1.0, np.nan, 3.0, np.nan, 5.0, 6.0]}))
    encoder = agree_encoding(sites, impute="none")
    with pytest.raises(DataError, match=r"^feature column 'a' has 2 missing \(NaN\) values$"):
        encoder.transform(_table({"a": [1.0, np.nan, np.nan]}))
    with pytest.raises(DataError, match=r"^feature column 'w' has 1 missing value$"):
        agree_encoding([_table({"a": [1.0, 2.0]}, {"w": ["u", None]})], impute="none").transform(
            _table({"a": [1.0, 2.0]}, {"w": ["u", None]}))


def test_a_column_no_site_has_a_value_in_is_refused_and_impute_must_be_known():
    sites = [_table({"a": [np.nan, np.nan], "b": [1.0, 2.0]}), _table({"a": [np.nan], "b": [3.0]})]
    with pytest.raises(DataError, match=r"^feature column 'a' has no value at any site"):
        agree_encoding(sites)
    with pytest.raises(ConfigError, match=r"^--impute must be one of mean, median, none; got 'mode'$"):
        agree_encoding(sites, impute="mode")


def test_a_table_of_numbers_without_gaps_is_unchanged():
    rng = np.random.default_rng(5)
    pooled = _table({"a": rng.normal(size=50), "b": rng.normal(size=50)})
    for impute in ("mean", "median", "none"):
        np.testing.assert_array_equal(agree_encoding(_sites(pooled), impute=impute).transform(pooled).X, pooled.numeric())
