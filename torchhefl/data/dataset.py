"""The in-memory data set every loader returns, and the stratified train/test split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from torchhefl.exceptions import ConfigError, DataError

__all__ = ["Dataset", "train_test_split"]


@dataclass
class Dataset:
    """A classification table with ``K >= 2`` classes (binary when ``K == 2``).

    Attributes:
        X: features, float64, shape ``(n, d)``.
        y: labels, int64 in {0, ..., K-1}, shape ``(n,)``.
        feature_names: the ``d`` column names of ``X``.
        label_name: name of the label column.
        classes: the ``K`` original label values that were mapped to 0, 1, ..., in that order.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    label_name: str
    classes: tuple = field(default=(0, 1))

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float64)
        self.y = np.asarray(self.y)
        if self.X.ndim != 2:
            raise DataError(f"X must have shape (n, d), got {self.X.shape}")
        if self.y.shape != (self.X.shape[0],):
            raise DataError(f"y must have shape ({self.X.shape[0]},) to match X, got {self.y.shape}")
        if len(self.classes) < 2:
            raise DataError(f"classes must name at least 2 label values, got {len(self.classes)}")
        if self.y.size and not np.isin(self.y, np.arange(len(self.classes))).all():
            last = len(self.classes) - 1
            raise DataError("y must hold only the labels " + ("0 and 1" if last == 1 else f"0 to {last}"))
        self.y = self.y.astype(np.int64)
        self.feature_names = [str(name) for name in self.feature_names]
        if len(self.feature_names) != self.X.shape[1]:
            raise DataError(f"got {len(self.feature_names)} feature names for {self.X.shape[1]} feature columns")
        self.classes = tuple(self.classes)

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def num_features(self) -> int:
        """Number of feature columns ``d``."""
        return self.X.shape[1]

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (2 for a binary table)."""
        return len(self.classes)

    def subset(self, indices) -> "Dataset":
        """The rows at ``indices`` (in that order), with the same names and classes."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(self.X[indices], self.y[indices], list(self.feature_names), self.label_name, self.classes)


def train_test_split(dataset: Dataset, *, test_size: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split rows into a training and a held-out test set, stratified by label.

    Args:
        dataset: the rows to split (a :class:`Dataset`, or a raw :class:`~torchhefl.data.Table`).
        test_size: fraction of rows in the test set, in (0, 1). Default: ``0.2``.
        seed: seed of the shuffle; the same seed gives the same split. Default: ``0``.

    Returns:
        ``(train, test)``; each keeps every class in about the original proportions.
    """
    from sklearn.model_selection import train_test_split as _sk_split

    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0.0 < test_size < 1.0:
        raise ConfigError(f"test_size must be a fraction between 0 and 1 (exclusive), got {test_size!r}")
    counts = np.bincount(dataset.y, minlength=dataset.num_classes)
    if counts.min() < 2:
        got = " and ".join(f"{c} of class {k}" for k, c in enumerate(counts))
        raise DataError(f"cannot stratify: every class needs at least 2 rows, got {got}")
    n_test = int(np.ceil(test_size * len(dataset)))
    if n_test < 2 or len(dataset) - n_test < 2:
        raise DataError(
            f"test_size={test_size} of {len(dataset)} rows leaves {n_test} test and {len(dataset) - n_test} "
            "training rows; each needs at least 2"
        )
    train_idx, test_idx = _sk_split(
        np.arange(len(dataset)), test_size=test_size, random_state=seed, stratify=dataset.y, shuffle=True
    )
    return dataset.subset(train_idx), dataset.subset(test_idx)
