"""Loaders: the Wisconsin Diagnostic Breast Cancer data, the 8x8 digits, and a user's CSV table."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from torchhefl.data.dataset import Dataset
from torchhefl.exceptions import DataError

__all__ = ["load_csv", "load_digits", "load_wdbc"]

_MAX_LISTED = 8


def load_wdbc() -> Dataset:
    """The Wisconsin Diagnostic Breast Cancer data from scikit-learn's bundled copy (no download).

    569 rows, 30 features; label 1 is benign (357 rows), 0 malignant (212 rows), as in
    scikit-learn and the paper.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Dataset(
        X=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.int64),
        feature_names=[str(name) for name in bunch.feature_names],
        label_name="diagnosis",
        classes=tuple(str(name) for name in bunch.target_names),  # ("malignant", "benign")
    )


def load_digits() -> Dataset:
    """The 8x8 handwritten digits from scikit-learn's bundled copy (no download).

    1797 rows, 64 features (pixel intensities 0-16, some columns constant 0), 10 classes: label
    ``k`` is the digit ``k``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    return Dataset(
        X=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.int64),
        feature_names=[str(name) for name in bunch.feature_names],
        label_name="digit",
        classes=tuple(int(k) for k in bunch.target_names),
    )


def load_csv(path: str | os.PathLike, label: str, *, drop: Sequence[str] = ()) -> Dataset:
    """Load a classification table from a CSV file with a header row.

    Every column other than ``label`` (and those in ``drop``) is a numeric feature. The label must
    have at least two distinct values; they are mapped to 0, 1, ... in sorted order and reported in
    ``Dataset.classes`` (two values make a binary table).

    Args:
        path: the CSV file.
        label: name of the label column.
        drop: columns to leave out (such as a row identifier). Default: ``()``.

    Raises:
        DataError: with a one-line message naming the problem: a missing or unreadable file, no
            rows, an unknown column, a non-numeric feature column, NaN or infinite values, or a
            label with fewer than two classes.
    """
    import pandas as pd

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")
    if not os.path.isfile(path):
        raise DataError(f"data path is not a file: {path}")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file is empty: {path}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read {path} as CSV: {reason}") from None
    if len(frame) == 0:
        raise DataError(f"data file has a header but no rows: {path}")

    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if label not in columns:
        raise DataError(f"label column {label!r} not found in {path}; available columns: {_listing(columns)}")
    unknown = [c for c in drop if c not in columns]
    if unknown:
        raise DataError(f"cannot drop unknown column {unknown[0]!r}; available columns: {_listing(columns)}")
    if label in drop:
        raise DataError(f"cannot drop the label column {label!r}")

    feature_names = [c for c in columns if c != label and c not in drop]
    if not feature_names:
        raise DataError(f"no feature columns in {path}: only the label column {label!r} is left")
    features = frame[feature_names]

    for name in feature_names:
        column = features[name]
        if not (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_complex_dtype(column)):
            numeric = pd.to_numeric(column, errors="coerce")
            bad = column[numeric.isna() & column.notna()]
            example = f" (e.g. {bad.iloc[0]!r} in row {bad.index[0] + 1})" if len(bad) else ""
            raise DataError(f"feature column {name!r} is not numeric{example}")

    X = features.to_numpy(dtype=np.float64)
    for j, name in enumerate(feature_names):
        n_nan = int(np.isnan(X[:, j]).sum())
        if n_nan:
            raise DataError(f"feature column {name!r} has {n_nan} missing (NaN) value{'s' * (n_nan != 1)}")
        n_inf = int(np.isinf(X[:, j]).sum())
        if n_inf:
            raise DataError(f"feature column {name!r} has {n_inf} infinite value{'s' * (n_inf != 1)}")

    target = frame[label]
    n_nan = int(target.isna().sum())
    if n_nan:
        raise DataError(f"label column {label!r} has {n_nan} missing (NaN) value{'s' * (n_nan != 1)}")
    if pd.api.types.is_float_dtype(target):
        n_inf = int(np.isinf(target.to_numpy()).sum())
        if n_inf:
            raise DataError(f"label column {label!r} has {n_inf} infinite value{'s' * (n_inf != 1)}")
    values = _sorted_unique(target.to_numpy())
    if len(values) < 2:
        raise DataError(
            f"label column {label!r} must have at least 2 distinct values, got {len(values)}: {_listing(values, repr)}"
        )
    index = {v: i for i, v in enumerate(values)}
    y = np.array([index[v] for v in target.to_numpy().tolist()], dtype=np.int64)
    classes = tuple(v.item() if isinstance(v, np.generic) else v for v in values)
    return Dataset(X=X, y=y, feature_names=feature_names, label_name=label, classes=classes)


def _sorted_unique(values: np.ndarray) -> list:
    unique = list(dict.fromkeys(values.tolist()))
    try:
        return sorted(unique)
    except TypeError:  # mixed types, e.g. numbers and strings in one column
        return sorted(unique, key=lambda v: (type(v).__name__, str(v)))


def _listing(items: Sequence, fmt=str) -> str:
    shown = ", ".join(fmt(item) for item in items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... ({len(items)} in total)"
    return shown
