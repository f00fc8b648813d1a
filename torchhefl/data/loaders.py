"""Loaders: the Wisconsin Diagnostic Breast Cancer data, the 8x8 digits, and a user's CSV table."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from torchhefl.data.dataset import Dataset
from torchhefl.data.reading import labels_of, read_frame, select_columns
from torchhefl.exceptions import DataError

__all__ = ["check_finite", "load_csv", "load_digits", "load_wdbc"]


def load_wdbc() -> Dataset:
    """The Wisconsin Diagnostic Breast Cancer data from scikit-learn's bundled copy (no download).

    569 rows, 30 features; label 1 is benign (357 rows), 0 malignant (212 rows), as in
    scikit-learn and the paper.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _from_bunch(bunch, "diagnosis", tuple(str(name) for name in bunch.target_names))  # ("malignant", "benign")


def load_digits() -> Dataset:
    """The 8x8 handwritten digits from scikit-learn's bundled copy (no download).

    1797 rows, 64 features (pixel intensities 0-16, some columns constant 0), 10 classes: label
    ``k`` is the digit ``k``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    return _from_bunch(bunch, "digit", tuple(int(k) for k in bunch.target_names))


def _from_bunch(bunch, label_name: str, classes: tuple) -> Dataset:
    """A :class:`Dataset` of one of scikit-learn's bundled data sets."""
    return Dataset(
        X=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.int64),
        feature_names=[str(name) for name in bunch.feature_names],
        label_name=label_name,
        classes=classes,
    )


def load_csv(
    path: str | os.PathLike, label: str, *, drop: Sequence[str] = (), features: Sequence[str] | None = None
) -> Dataset:
    """Load a classification table of numbers from a CSV file with a header row.

    Every column other than ``label`` (and those in ``drop``), or exactly the columns in
    ``features``, is a numeric feature. The label must have at least two distinct values; they are
    mapped to 0, 1, ... in sorted order and reported in ``Dataset.classes`` (two values make a
    binary table). (For text columns,
    missing values and identifier detection, see :func:`~torchhefl.data.load_table`.)

    Args:
        path: the CSV file.
        label: name of the label column.
        drop: columns to leave out (such as a row identifier). Default: ``()``.
        features: the feature columns, in this order, instead of all but ``label``. Default: ``None``.

    Raises:
        DataError: with a one-line message naming the problem: a missing or unreadable file, no
            rows, an unknown column, a non-numeric feature column, NaN or infinite values, or a
            label with fewer than two classes.
    """
    import pandas as pd

    frame = read_frame(path)
    feature_names = select_columns(frame, label, features=features, drop=drop, where=path)
    features_frame = frame[feature_names]

    for name in feature_names:
        column = features_frame[name]
        if not (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_complex_dtype(column)):
            numeric = pd.to_numeric(column, errors="coerce")
            bad = column[numeric.isna() & column.notna()]
            example = f" (e.g. {bad.iloc[0]!r} in row {bad.index[0] + 1})" if len(bad) else ""
            raise DataError(f"feature column {name!r} is not numeric{example}")

    X = features_frame.to_numpy(dtype=np.float64)
    for j, name in enumerate(feature_names):
        check_finite(name, X[:, j])
    y, classes = labels_of(frame, label)
    return Dataset(X=X, y=y, feature_names=feature_names, label_name=label, classes=classes)


def check_finite(name: str, column: np.ndarray) -> None:
    """Refuse a feature column holding NaN or infinite values, by name and count."""
    n_nan = int(np.isnan(column).sum())
    if n_nan:
        raise DataError(f"feature column {name!r} has {n_nan} missing (NaN) value{'s' * (n_nan != 1)}")
    n_inf = int(np.isinf(column).sum())
    if n_inf:
        raise DataError(f"feature column {name!r} has {n_inf} infinite value{'s' * (n_inf != 1)}")
