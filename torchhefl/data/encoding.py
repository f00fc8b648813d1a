"""How the sites agree to turn a :class:`~torchhefl.data.table.Table` into numbers, without showing
each other a row: a one-hot vocabulary and the values that fill missing cells.

What each site shares, and what that reveals (the README's "Your own table" says the same):

* **Categories.** Each site sends, per text column, the *set* of values present in its rows (no
  counts, no rows: :attr:`TableSummary.categories`). Whoever combines the sets (the server) learns
  which categories each site holds, so a category only one site has tells it that this site has at
  least one such row; the sites receive only the union, the agreed vocabulary (sorted), which
  tells them the categories held somewhere. Sets are not summable, so they cannot hide inside a
  secure sum; that is the price of a vocabulary nobody has to know in advance. A category absent
  from the vocabulary (one a test row has, unseen in training) is encoded as all zeros, as is a
  missing text cell.
* **Means for imputation.** Per numeric column, the number of non-missing values, their sum and
  their sum of squares (:meth:`TableSummary.to_vector`): summable vectors, exactly like the
  standardisation moments, and they travel through the same protected path (a run's
  ``"impute"`` pass, :mod:`torchhefl.federated.statistics`); the mean fill is the summed sum over
  the summed count.
* **Medians for imputation.** A second pass: per numeric column a histogram of counts over
  :data:`MEDIAN_BINS` equal bins spanning ``[mean - sd, mean + sd]`` of the non-missing values,
  from the first pass (the median always lies within one population standard deviation of the
  mean), plus a count below and one above the span. Summed over sites, the histogram locates the
  two middle order statistics; the fill is the mean of their bins' midpoints, within
  ``sd / MEDIAN_BINS`` (half a bin) of the pooled median of the non-missing values.

Imputation happens before standardisation: the federated moments are then those of the filled
values. In a run the median pass covers only the columns with a gap at some site (the summed
first pass says which), and the sites fill their own rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from torchhefl.data.dataset import Dataset
from torchhefl.data.loaders import check_finite
from torchhefl.data.table import CATEGORICAL, NUMERIC, Table
from torchhefl.exceptions import ConfigError, DataError

__all__ = [
    "IMPUTE",
    "MEDIAN_BINS",
    "TableEncoder",
    "TableSummary",
    "agree_encoding",
    "agree_vocabulary",
    "column_sums",
    "histogram_counts",
    "local_histogram",
    "local_summary",
    "median_from_counts",
    "median_from_histogram",
    "span",
]

IMPUTE = ("mean", "median", "none")
"""``--impute`` choices: fill a missing number with the federated mean or median, or refuse it."""

MEDIAN_BINS = 1024
"""Bins of the federated median's histogram over ``[mean - sd, mean + sd]``; its precision is
``sd / MEDIAN_BINS``."""


@dataclass(frozen=True)
class TableSummary:
    """What one site shares of its table (or what several share, summed).

    Attributes:
        rows: number of rows.
        count: per numeric column, the non-missing values, shape ``(k,)``.
        sum: per numeric column, their sum, shape ``(k,)``.
        sumsq: per numeric column, their sum of squares, shape ``(k,)``.
        categories: per text column, the set of values present (missing cells excluded).
    """

    rows: int
    count: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    categories: tuple[frozenset, ...]

    def __add__(self, other: "TableSummary") -> "TableSummary":
        if not isinstance(other, TableSummary):
            return NotImplemented
        if other.count.shape != self.count.shape or len(other.categories) != len(self.categories):
            raise DataError("cannot add the summaries of tables with different columns")
        return TableSummary(
            self.rows + other.rows, self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq,
            tuple(a | b for a, b in zip(self.categories, other.categories)),
        )

    def to_vector(self) -> np.ndarray:
        """``[rows, count..., sum..., sumsq...]``, float64, shape ``(3k + 1,)``: what a secure sum adds."""
        return np.concatenate([[float(self.rows)], self.count, self.sum, self.sumsq])

    @property
    def mean(self) -> np.ndarray:
        """Per numeric column, the mean of the non-missing values (NaN where there are none)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.count

    @property
    def std(self) -> np.ndarray:
        """Per numeric column, the population standard deviation of the non-missing values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            var = self.sumsq / self.count - np.square(self.mean)
        return np.sqrt(np.maximum(var, 0.0))


def local_summary(table: Table) -> TableSummary:
    """A site's :class:`TableSummary` of its own rows."""
    count, total, sumsq = column_sums(table.numeric())
    categories = tuple(
        frozenset(v for v in column if v is not None)
        for column, kind in zip(table.values, table.kinds) if kind == CATEGORICAL
    )
    return TableSummary(len(table), count, total, sumsq, categories)


def column_sums(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``X`` (shape ``(n, k)``, NaN where missing): the count of its non-missing
    values, their sum and their sum of squares, float64."""
    X = np.asarray(X, dtype=np.float64)
    present = ~np.isnan(X)
    filled = np.where(present, X, 0.0)
    return present.sum(axis=0).astype(np.float64), filled.sum(axis=0), np.square(filled).sum(axis=0)


def _span(total: TableSummary) -> tuple[np.ndarray, np.ndarray]:
    return span(total.mean, total.std)


def span(mean: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean - sd, mean + sd)``: where the median's histogram bins lie (the median always does)."""
    return mean - sd, mean + sd


def local_histogram(table: Table, total: TableSummary, *, bins: int = MEDIAN_BINS) -> np.ndarray:
    """A site's median histogram, shape ``(k, bins + 2)``: per numeric column, the count of its
    non-missing values below ``mean - sd``, in each of ``bins`` equal bins up to ``mean + sd``,
    and above it; ``mean`` and ``sd`` are those of the summed first pass ``total``."""
    lo, hi = _span(total)
    return histogram_counts(table.numeric(), lo, hi, bins=bins)


def histogram_counts(X: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, bins: int = MEDIAN_BINS) -> np.ndarray:
    """Per column ``j`` of ``X`` (shape ``(n, k)``, NaN where missing), the count of its non-missing
    values below ``lo[j]``, in each of ``bins`` equal bins up to ``hi[j]``, and above it: shape
    ``(k, bins + 2)``. A column with ``lo == hi`` (constant) counts every value in the first bin;
    one with a non-finite ``lo`` (no value anywhere) counts nothing."""
    X = np.asarray(X, dtype=np.float64)
    out = np.zeros((X.shape[1], bins + 2))
    for j in range(X.shape[1]):
        v = X[:, j][~np.isnan(X[:, j])]
        if not np.isfinite(lo[j]):
            continue  # no value in any site
        width = (hi[j] - lo[j]) / bins
        if width <= 0:  # a constant column: every value is the mean
            out[j, 1] = v.size
            continue
        index = np.clip(np.floor((v - lo[j]) / width).astype(np.int64), 0, bins - 1) + 1
        index[v < lo[j]] = 0
        index[v > hi[j]] = bins + 1
        out[j] = np.bincount(index, minlength=bins + 2)
    return out


def median_from_histogram(histogram: np.ndarray, total: TableSummary) -> np.ndarray:
    """Per numeric column, the median estimated from the summed histogram (see the module text):
    within ``sd / bins`` of the pooled median of the non-missing values."""
    lo, hi = _span(total)
    return median_from_counts(histogram, lo, hi, total.count, total.mean)


def median_from_counts(histogram: np.ndarray, lo: np.ndarray, hi: np.ndarray, count: np.ndarray,
                       mean: np.ndarray) -> np.ndarray:
    """Per column, the median located by a summed :func:`histogram_counts` over ``[lo, hi]`` of
    ``count`` non-missing values whose mean is ``mean`` (the value of a constant column)."""
    bins = histogram.shape[1] - 2
    out = np.full(histogram.shape[0], np.nan)
    for j in range(histogram.shape[0]):
        n = int(round(count[j]))
        if n < 1:
            continue
        width = (hi[j] - lo[j]) / bins
        if width <= 0:
            out[j] = mean[j]
            continue
        cumulative = np.cumsum(histogram[j])
        middle = []
        for k in ((n + 1) // 2, n // 2 + 1):  # the two middle order statistics (1-based; equal for odd n)
            b = int(np.searchsorted(cumulative, k - 0.5))
            b = min(max(b, 1), bins)  # below or above the span only through rounding: the edge bin
            middle.append(lo[j] + (b - 0.5) * width)
        out[j] = sum(middle) / 2
    return out


class TableEncoder:
    """The agreed encoding of a table: numeric columns as they are, missing values filled with
    ``fill``; each text column one-hot over its ``vocabulary`` (unknown or missing: all zeros).

    Args:
        columns, kinds: the table's feature columns and their kinds, in order.
        vocabulary: per text column (by name), its sorted categories.
        fill: per numeric column (by name), the value of a missing cell; ``None`` refuses missing
            values (``--impute none``).
        impute: how ``fill`` was obtained (``"mean"``, ``"median"`` or ``"none"``), for the record.
        missing: how many numeric cells of the training rows were missing (summed over sites), for the record.
    """

    def __init__(self, columns: Sequence[str], kinds: Sequence[str], vocabulary: dict, fill: dict | None,
                 impute: str = "mean", *, missing: int = 0) -> None:
        self.columns, self.kinds = list(columns), list(kinds)
        self.vocabulary = {name: list(cats) for name, cats in vocabulary.items()}
        self.fill = None if fill is None else {name: float(v) for name, v in fill.items()}
        self.impute, self.missing = impute, int(missing)

    @property
    def feature_names(self) -> list[str]:
        """The encoded columns: a numeric column's name, or ``column=category`` per category."""
        names = []
        for name, kind in zip(self.columns, self.kinds):
            names.extend([name] if kind == NUMERIC else [f"{name}={c}" for c in self.vocabulary[name]])
        return names

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def transform(self, table: Table, *, keep_missing: bool = False) -> Dataset:
        """The rows of ``table`` (same columns) encoded as a :class:`Dataset`.

        ``keep_missing``: leave a missing number as NaN (the sites fill it from federated
        statistics once the run has summed them) instead of filling it with :attr:`fill`.
        """
        from sklearn.preprocessing import OneHotEncoder

        if table.columns != self.columns or table.kinds != self.kinds:
            raise DataError("the table's columns differ from the ones the encoding was agreed for")
        blocks = []
        for name, kind, column in zip(self.columns, self.kinds, table.values):
            if kind == NUMERIC:
                missing = np.isnan(column)
                if keep_missing and self.fill is not None:
                    check_finite(name, np.where(missing, 0.0, column))  # an infinity is refused all the same
                    blocks.append(column[:, None])
                elif self.fill is None or not missing.any():
                    check_finite(name, column)  # refuses a missing value: --impute none
                    blocks.append(column[:, None])
                else:
                    blocks.append(np.where(missing, self.fill[name], column)[:, None])
                continue
            categories = self.vocabulary[name]
            if self.fill is None and any(v is None for v in column):
                n = sum(v is None for v in column)
                raise DataError(f"feature column {name!r} has {n} missing value{'s' * (n != 1)}")
            if not categories:  # no site has a value in this column
                continue
            encoder = OneHotEncoder(categories=[categories], handle_unknown="ignore", sparse_output=False,
                                    dtype=np.float64)
            encoder.fit(np.array([[categories[0]]], dtype=object))  # the categories are given: nothing is learnt
            text = np.array([["" if v is None else v for v in column]], dtype=object).T
            onehot = encoder.transform(text)
            onehot[np.array([v is None for v in column])] = 0.0  # a missing cell: all zeros, as an unknown one
            blocks.append(onehot)
        X = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(table), 0))
        return Dataset(X, table.y, self.feature_names, table.label_name, table.classes)

    def describe(self, *, missing: int | None = None) -> str:
        """What the encoding did, for the run's summary line (empty when it changed nothing);
        ``missing``: the count of filled training values, where the run summed it (default :attr:`missing`)."""
        missing = self.missing if missing is None else int(missing)
        parts = []
        text = [c for c, k in zip(self.columns, self.kinds) if k == CATEGORICAL]
        if text:
            parts.append("one-hot " + ", ".join(f"{c!r} ({len(self.vocabulary[c])} categories)" for c in text))
        if missing:
            parts.append(f"{missing} missing training value{'s' * (missing != 1)} filled with the federated {self.impute}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """A JSON-able form."""
        return {"columns": self.columns, "kinds": self.kinds, "vocabulary": self.vocabulary, "fill": self.fill,
                "impute": self.impute, "missing": self.missing}


def _site_tables(site_tables: Iterable[Table], impute: str, what: str) -> list[Table]:
    if impute not in IMPUTE:
        raise ConfigError(f"--impute must be one of {', '.join(IMPUTE)}; got {impute!r}")
    tables = list(site_tables)
    if not tables:
        raise DataError(f"{what} needs the table of at least one site")
    return tables


def agree_vocabulary(site_tables: Iterable[Table], *, impute: str = "mean") -> TableEncoder:
    """The one-hot vocabulary of the sites holding ``site_tables``, from their category sets only:
    an encoding whose fill values are left to the run (``fill`` is empty, not ``None``, unless
    ``impute="none"``), to be used with ``transform(..., keep_missing=True)``; the sites then fill
    their missing numbers from statistics summed through the mode's protected path
    (:mod:`torchhefl.federated.statistics`).

    Raises:
        ConfigError: ``impute`` is not one of :data:`IMPUTE`.
    """
    tables = _site_tables(site_tables, impute, "agree_vocabulary")
    first = tables[0]
    text = first.names_of(CATEGORICAL)
    sets = [local_summary(t).categories for t in tables]
    vocabulary = {name: sorted(frozenset().union(*(s[j] for s in sets))) for j, name in enumerate(text)}
    return TableEncoder(first.columns, first.kinds, vocabulary, None if impute == "none" else {}, impute)


def agree_encoding(site_tables: Iterable[Table], *, impute: str = "mean") -> TableEncoder:
    """The encoding the sites holding ``site_tables`` agree on, from their summaries only.

    Each site's :func:`local_summary` (and, for ``impute="median"``, its :func:`local_histogram`)
    is computed from that site's rows alone, and only the summaries are combined, in plaintext and
    in-process. A run does not use it: it agrees the vocabulary (:func:`agree_vocabulary`) and sums
    the imputation statistics through the mode's protected path; this is the plaintext reference
    the tests compare that path with.

    Raises:
        ConfigError: ``impute`` is not one of :data:`IMPUTE`.
        DataError: a numeric column with no value at any site (nothing to fill it from).
    """
    tables = _site_tables(site_tables, impute, "agree_encoding")
    first = tables[0]
    summaries = [local_summary(t) for t in tables]
    total = summaries[0]
    for s in summaries[1:]:
        total = total + s
    text = first.names_of(CATEGORICAL)
    vocabulary = {name: sorted(cats) for name, cats in zip(text, total.categories)}
    numeric = first.names_of(NUMERIC)
    missing = int(round(total.rows * len(numeric) - total.count.sum()))
    if impute == "none":
        return TableEncoder(first.columns, first.kinds, vocabulary, None, impute, missing=missing)
    empty = [name for name, c in zip(numeric, total.count) if c == 0]
    if empty:
        raise DataError(f"feature column {empty[0]!r} has no value at any site: nothing to impute it from; leave it out with --drop")
    if impute == "mean":
        values = total.mean
    else:
        histogram = sum(local_histogram(t, total) for t in tables)
        values = median_from_histogram(histogram, total)
    return TableEncoder(first.columns, first.kinds, vocabulary, dict(zip(numeric, values.tolist())), impute, missing=missing)
