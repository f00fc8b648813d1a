"""Federated standardisation: clients share per-feature moments, never rows.

Each client computes :func:`local_moments` of its own rows (a count, per-feature sums and sums of
squares), the moments travel through the same aggregation path as model parameters (flattened by
:meth:`Moments.to_vector`) and are summed; :meth:`Standardizer.from_moments` turns the total into a
mean and a scale identical (to rounding) to a centralised fit on all rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from torchhefl.exceptions import DataError

__all__ = ["Moments", "Standardizer", "local_moments", "sum_moments"]

# Below this fraction of the mean square, a variance is treated as 0: the one-pass formula
# sumsq/n - mean^2 cannot resolve it, and it only arises for constant columns.
_VAR_RESOLUTION = 8 * np.finfo(np.float64).eps


@dataclass(frozen=True)
class Moments:
    """Per-feature moments of some rows.

    Attributes:
        count: number of rows.
        sum: per-feature sum, float64, shape ``(d,)``.
        sumsq: per-feature sum of squares, float64, shape ``(d,)``.
    """

    count: int
    sum: np.ndarray
    sumsq: np.ndarray

    def __post_init__(self) -> None:
        total = np.asarray(self.sum, dtype=np.float64)
        sumsq = np.asarray(self.sumsq, dtype=np.float64)
        if total.ndim != 1 or sumsq.shape != total.shape:
            raise DataError(f"Moments needs sum and sumsq of one shape (d,), got {total.shape} and {sumsq.shape}")
        if isinstance(self.count, bool) or int(self.count) != self.count or self.count < 0:
            raise DataError(f"Moments count must be a non-negative integer, got {self.count!r}")
        object.__setattr__(self, "count", int(self.count))
        object.__setattr__(self, "sum", total)
        object.__setattr__(self, "sumsq", sumsq)

    @property
    def num_features(self) -> int:
        return self.sum.shape[0]

    def __add__(self, other: "Moments") -> "Moments":
        if not isinstance(other, Moments):
            return NotImplemented
        if other.num_features != self.num_features:
            raise DataError(f"cannot add moments of {self.num_features} and {other.num_features} features")
        return Moments(self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq)

    def to_vector(self) -> np.ndarray:
        """``[count, sum..., sumsq...]`` as one float64 vector of shape ``(2d + 1,)``.

        Vectors of several clients add up element-wise to the vector of their summed moments.
        """
        return np.concatenate([[float(self.count)], self.sum, self.sumsq])

    @classmethod
    def from_vector(cls, vector) -> "Moments":
        """Inverse of :meth:`to_vector` (the count is rounded to the nearest integer)."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.ndim != 1 or vector.shape[0] < 3 or vector.shape[0] % 2 != 1:
            raise DataError(f"a moments vector has shape (2d + 1,) with d >= 1, got {vector.shape}")
        d = (vector.shape[0] - 1) // 2
        count = float(np.rint(vector[0]))
        if not np.isfinite(vector[0]) or abs(vector[0] - count) > 1e-6 * max(1.0, abs(count)) or count < 0:
            raise DataError(f"a moments vector must start with a non-negative row count, got {float(vector[0])!r}")
        return cls(int(count), vector[1 : d + 1], vector[d + 1 :])


def local_moments(X: np.ndarray) -> Moments:
    """Moments of the rows of ``X`` (shape ``(n, d)``; or ``(n, *shape)``, each of its
    ``prod(shape)`` entries a feature, e.g. the pixels of an image), computed in float64."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim < 2:
        raise DataError(f"local_moments expects X of shape (n, d), got {X.shape}")
    X = X.reshape(X.shape[0], math.prod(X.shape[1:]))
    return Moments(X.shape[0], X.sum(axis=0), np.square(X).sum(axis=0))


def sum_moments(moments: Iterable[Moments]) -> Moments:
    """The moments of the union of the rows behind each of ``moments`` (at least one)."""
    moments = list(moments)
    if not moments:
        raise DataError("sum_moments needs the moments of at least one client")
    total = moments[0]
    for m in moments[1:]:
        total = total + m
    return total


class Standardizer:
    """Per-feature standardisation ``(x - mean) / scale``.

    ``scale`` is the population standard deviation (``ddof=0``, as scikit-learn's
    ``StandardScaler``), with 1 in place of 0 for constant features.

    Args:
        mean: shape ``(d,)``.
        scale: shape ``(d,)``, positive.
    """

    def __init__(self, mean, scale) -> None:
        mean = np.asarray(mean, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        if mean.ndim != 1 or scale.shape != mean.shape:
            raise DataError(f"Standardizer needs mean and scale of one shape (d,), got {mean.shape} and {scale.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise DataError("Standardizer needs a finite mean and a finite, positive scale")
        self.mean = mean
        self.scale = scale

    @property
    def num_features(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def from_moments(cls, moments: Moments) -> "Standardizer":
        """Fit from (summed) moments: the federated way, without seeing any row."""
        if moments.count < 1:
            raise DataError("cannot standardise from the moments of zero rows")
        mean = moments.sum / moments.count
        mean_sq = moments.sumsq / moments.count
        var = mean_sq - np.square(mean)
        return cls(mean, _scale(var, mean_sq))

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardizer":
        """Fit on all rows in one place (the centralised baseline), with a two-pass variance."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1:
            raise DataError(f"Standardizer.fit expects X of shape (n, d) with n >= 1, got {X.shape}")
        mean = X.mean(axis=0)
        var = np.square(X - mean).mean(axis=0)
        return cls(mean, _scale(var, np.square(X).mean(axis=0)))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(X - mean) / scale`` for ``X`` of shape ``(n, d)``, or ``(n, *shape)`` with
        ``prod(shape) == d`` (the features in row-major order, as :func:`local_moments` reads them);
        float64, of ``X``'s shape."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim < 2 or math.prod(X.shape[1:]) != self.num_features:
            raise DataError(f"Standardizer expects X of shape (n, {self.num_features}), got {X.shape}")
        return ((X.reshape(X.shape[0], self.num_features) - self.mean) / self.scale).reshape(X.shape)

    def to_sklearn(self):
        """The same standardisation as a fitted scikit-learn ``StandardScaler`` (for a pipeline
        that prepares new rows before the trained model sees them)."""
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler()
        scaler.mean_, scaler.scale_, scaler.var_ = self.mean.copy(), self.scale.copy(), np.square(self.scale)
        scaler.n_features_in_ = self.num_features
        scaler.n_samples_seen_ = 0  # the rows stay at the sites: only their moments were summed
        return scaler

    def to_dict(self) -> dict:
        """A JSON-able form: ``{"mean": [...], "scale": [...]}``."""
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> "Standardizer":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(state, dict) or set(state) != {"mean", "scale"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise DataError(f"a Standardizer dict has exactly the keys 'mean' and 'scale', got {keys}")
        return cls(state["mean"], state["scale"])

    def __repr__(self) -> str:
        return f"Standardizer(num_features={self.num_features})"


def _scale(var: np.ndarray, mean_sq: np.ndarray) -> np.ndarray:
    var = np.where(var <= _VAR_RESOLUTION * mean_sq, 0.0, var)
    std = np.sqrt(var)
    return np.where(std == 0.0, 1.0, std)
