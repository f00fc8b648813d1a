"""The statistics a run's set-up sums over the sites, by purpose, and what each party does with the sums.

Every statistics pass is the same exchange: the server asks each site for a vector of its own rows'
statistics (a ``stats_ins`` request naming the pass's *purpose*), sums the replies through the
mode's protected path (in plaintext, under the sites' key, or masked under the server's key; see
each exchange's ``write_statistics``), and sends the sum back (``standardize_ins`` with the same
purpose), which each site reads. Three purposes, in this order:

* ``"impute"`` (runs that fill missing numbers, ``--impute mean|median``): ``rows`` (1,), and per
  input column ``count`` of non-missing values, their ``sum`` and ``sumsq`` (d,). The mean fill is
  ``sum / count``; the server learns these sums only where it reads the standardisation sums too
  (plain mode and the server-key scheme).
* ``"median"`` (``--impute median``): per input column that has a missing value somewhere (known
  from the ``impute`` sum: ``count < rows``), a ``histogram`` of counts over :data:`MEDIAN_BINS`
  equal bins spanning the pooled mean plus or minus one standard deviation, with a bin below and
  one above: shape ``(m, MEDIAN_BINS + 2)`` (``m = 0``, an empty vector, where no site has a gap).
  The fill is the median the summed histogram locates, within ``sd / MEDIAN_BINS``.
* ``"standardize"`` (every run): ``count`` (1,), ``sum`` and ``sumsq`` (d,) of the filled values.

A mode's exchange masks or encrypts each purpose's vector on its own (under the server's key, one
mask label per purpose, and each site sends each purpose under one participant set only).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from torchhefl.data.encoding import MEDIAN_BINS, column_sums, histogram_counts, median_from_counts, span
from torchhefl.exceptions import DataError, MalformedMessageError, ProtocolError

__all__ = [
    "FIELDS",
    "IMPUTE",
    "MEDIAN",
    "PURPOSES",
    "STANDARDIZE",
    "Imputation",
    "check_length",
    "from_vector",
    "purpose_of",
    "to_vector",
]

IMPUTE, MEDIAN, STANDARDIZE = "impute", "median", "standardize"
#: the passes, in the order a run makes them
PURPOSES = (IMPUTE, MEDIAN, STANDARDIZE)
#: each purpose's named arrays, in their order in the flat vector a mode sums
FIELDS = {STANDARDIZE: ("count", "sum", "sumsq"), IMPUTE: ("rows", "count", "sum", "sumsq"), MEDIAN: ("histogram",)}
#: the longest statistics vector a party accepts
MAX_LENGTH = 1 << 24
_WHOLE = 1e-6  # how far a summed count (fixed point) may sit from a whole number


def purpose_of(meta: Mapping) -> str:
    """The purpose a ``stats_ins`` / ``standardize_ins`` request names (none: ``"standardize"``)."""
    purpose = meta.get("purpose", STANDARDIZE)
    if purpose not in PURPOSES:
        raise MalformedMessageError(f"statistics request for an unknown purpose {purpose!r}")
    return purpose


def to_vector(purpose: str, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """``stats``'s arrays in the purpose's order, flattened into one float64 vector."""
    if set(stats) != set(FIELDS[purpose]):
        raise MalformedMessageError(f"{purpose} statistics hold {sorted(stats)}, expected {', '.join(FIELDS[purpose])}")
    return np.concatenate([np.asarray(stats[k], dtype=np.float64).reshape(-1) for k in FIELDS[purpose]])


def check_length(purpose: str, length: int) -> None:
    """Refuse (:class:`MalformedMessageError`) a vector length no statistics of ``purpose`` have."""
    ok = 0 <= length < MAX_LENGTH and {
        STANDARDIZE: length >= 3 and length % 2 == 1,
        IMPUTE: length >= 4 and length % 3 == 1,
        MEDIAN: length % (MEDIAN_BINS + 2) == 0,
    }[purpose]
    if not ok:
        raise MalformedMessageError(f"a vector of {length} values cannot hold {purpose} statistics")


def from_vector(purpose: str, vector: np.ndarray) -> dict[str, np.ndarray]:
    """The named arrays of a flat vector of ``purpose`` (checked by :func:`check_length`)."""
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    check_length(purpose, len(vector))
    if purpose == MEDIAN:
        return {"histogram": vector.reshape(-1, MEDIAN_BINS + 2)}
    fields = FIELDS[purpose]
    d = (len(vector) - 1) // (len(fields) - 1)
    out = {fields[0]: vector[:1]}
    for i, name in enumerate(fields[1:]):
        out[name] = vector[1 + i * d : 1 + (i + 1) * d]
    return out


def _whole(values: np.ndarray, what: str, *, low: float = 0.0, high: np.ndarray | float = np.inf) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    rounded = np.round(values)
    if not np.isfinite(values).all() or (np.abs(values - rounded) > _WHOLE).any() or (rounded < low).any() or (rounded > high).any():
        raise MalformedMessageError(f"summed {what} are not whole numbers in range")
    return rounded


class Imputation:
    """One party's side of the imputation passes: its own statistics for each pass, and the fill
    values once it has read the sums. Held by every site, and by a server that may read the sums.

    Args:
        method: ``"mean"`` or ``"median"``.
    """

    def __init__(self, method: str) -> None:
        if method not in ("mean", "median"):
            raise ValueError(f"imputation method must be mean or median, got {method!r}")
        self.method = method
        #: the summed ``impute`` statistics (rows, count, sum, sumsq), once read
        self.total: dict[str, np.ndarray] | None = None
        #: per input column, the value of its missing cells (NaN where no cell is missing), once known
        self.fill: np.ndarray | None = None

    @property
    def purposes(self) -> tuple[str, ...]:
        """The passes this method needs."""
        return (IMPUTE, MEDIAN) if self.method == "median" else (IMPUTE,)

    @property
    def missing(self) -> int:
        """Missing training values summed over the sites (0 before the first pass is read)."""
        if self.total is None:
            return 0
        return int(round(float(self.total["rows"][0]) * len(self.total["count"]) - float(self.total["count"].sum())))

    def gaps(self) -> np.ndarray:
        """The columns with a missing value at some site (from the summed first pass)."""
        if self.total is None:
            raise ProtocolError("the median pass comes after the imputation pass")
        return np.flatnonzero(self.total["count"] < self.total["rows"][0])

    def _span(self, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count, total, sumsq = (self.total[k][gaps] for k in ("count", "sum", "sumsq"))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
            sd = np.sqrt(np.maximum(sumsq / count - np.square(mean), 0.0))
        return span(mean, sd)

    def local(self, purpose: str, X: np.ndarray) -> dict[str, np.ndarray]:
        """This site's statistics of ``X`` (shape ``(n, d)``, NaN where missing) for ``purpose``."""
        X = np.asarray(X, dtype=np.float64)
        if purpose == IMPUTE:
            count, total, sumsq = column_sums(X)
            return {"rows": np.array([float(len(X))]), "count": count, "sum": total, "sumsq": sumsq}
        if purpose == MEDIAN:
            if self.method != "median":
                raise ProtocolError("asked for a median histogram in a run that fills missing values with the mean")
            gaps = self.gaps()
            lo, hi = self._span(gaps)
            return {"histogram": histogram_counts(X[:, gaps], lo, hi)}
        raise ValueError(f"no imputation statistics for purpose {purpose!r}")

    def read(self, purpose: str, stats: Mapping[str, np.ndarray], *, num_features: int | None = None) -> None:
        """Take the summed statistics of ``purpose`` (checked: they come from other parties)."""
        if purpose == IMPUTE:
            rows = _whole(stats["rows"], "row counts", low=1)
            count = _whole(stats["count"], "value counts", high=rows[0])
            if num_features is not None and len(count) != num_features:
                raise MalformedMessageError(f"imputation statistics for {len(count)} columns, expected {num_features}")
            total, sumsq = (np.asarray(stats[k], dtype=np.float64) for k in ("sum", "sumsq"))
            if not (np.isfinite(total).all() and np.isfinite(sumsq).all()):
                raise MalformedMessageError("summed imputation statistics are not finite")
            self.total = {"rows": rows, "count": count, "sum": total, "sumsq": sumsq}
            if self.method == "mean":
                self._set_fill(self.gaps(), lambda gaps: total[gaps] / count[gaps])
            return
        if purpose == MEDIAN:
            gaps = self.gaps()
            histogram = np.asarray(stats["histogram"], dtype=np.float64)
            if histogram.shape != (len(gaps), MEDIAN_BINS + 2):
                raise MalformedMessageError(f"median histograms of shape {histogram.shape}, expected ({len(gaps)}, {MEDIAN_BINS + 2})")
            histogram = _whole(histogram, "histogram counts")
            if (histogram.sum(axis=1) != self.total["count"][gaps]).any():
                raise MalformedMessageError("the median histograms do not count the values the imputation pass counted")

            def median(gaps):
                lo, hi = self._span(gaps)
                count, total = self.total["count"][gaps], self.total["sum"][gaps]
                with np.errstate(invalid="ignore", divide="ignore"):
                    return median_from_counts(histogram, lo, hi, count, total / count)

            self._set_fill(gaps, median)
            return
        raise ValueError(f"no imputation statistics for purpose {purpose!r}")

    def _set_fill(self, gaps: np.ndarray, values) -> None:
        empty = gaps[self.total["count"][gaps] == 0]
        if empty.size:
            raise DataError(f"input column {int(empty[0])} has no value at any site: nothing to impute it from")
        fill = np.full(len(self.total["count"]), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            fill[gaps] = values(gaps)
        self.fill = fill

    @property
    def done(self) -> bool:
        return self.fill is not None

    def apply(self, X: np.ndarray | None) -> np.ndarray | None:
        """``X`` with each missing value replaced by its column's fill."""
        if X is None:
            return None
        X = np.asarray(X, dtype=np.float64)
        missing = np.isnan(X)
        if not missing.any():
            return X
        if self.fill is None:
            raise ProtocolError("missing values cannot be filled before the imputation passes")
        # a held-out row may miss a value in a column every training row has: the pooled mean
        return np.where(missing, self.values()[None, :], X)

    def values(self) -> np.ndarray:
        """Per input column, the value a missing cell of a new row gets: the fill where the
        training rows had a gap, the pooled mean elsewhere."""
        if self.fill is None:
            raise ProtocolError("no fill values before the imputation passes")
        return np.where(np.isnan(self.fill), self._mean(), self.fill)

    def _mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.total["sum"] / self.total["count"]
