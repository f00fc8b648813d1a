"""Reading a CSV table: the file into a frame, the chosen columns, the label mapped to {0, 1}.

Shared by :func:`~torchhefl.data.load_csv` (numbers only) and :func:`~torchhefl.data.load_table`
(numbers and text, missing values kept); every problem is a one-line :class:`DataError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from torchhefl.exceptions import DataError

__all__ = ["labels_of", "listing", "read_frame", "select_columns"]

_MAX_LISTED = 8


def read_frame(path: str | os.PathLike):
    """The CSV file at ``path`` as a pandas DataFrame with string column names, at least one row."""
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
    frame.columns = [str(c) for c in frame.columns]
    return frame


def select_columns(
    frame, label: str, *, features: Sequence[str] | None = None, drop: Sequence[str] = (), where: str | os.PathLike = "the table"
) -> list[str]:
    """The feature columns of ``frame``: ``features`` (in that order) if given, else every column but
    ``label``, less ``drop``. Unknown names, the label among them, a name given twice, and
    ``features`` with ``drop`` are refused by name."""
    columns = list(frame.columns)
    where = os.fspath(where)
    if label not in columns:
        raise DataError(f"label column {label!r} not found in {where}; available columns: {listing(columns)}")
    if features is not None:
        features = list(features)
        if drop:
            raise DataError("give --features or --drop, not both: --features already names every column kept")
        _refuse_unknown("unknown feature column", features, columns)
        if label in features:
            raise DataError(f"the label column {label!r} cannot also be a feature")
        twice = sorted({c for c in features if features.count(c) > 1})
        if twice:
            raise DataError(f"feature column {twice[0]!r} is named twice")
        if not features:
            raise DataError("no feature columns chosen")
        return features
    _refuse_unknown("cannot drop unknown column", drop, columns)
    if label in drop:
        raise DataError(f"cannot drop the label column {label!r}")
    names = [c for c in columns if c != label and c not in drop]
    if not names:
        raise DataError(f"no feature columns in {where}: only the label column {label!r} is left")
    return names


def _refuse_unknown(what: str, names, columns) -> None:
    """``DataError`` naming every one of ``names`` not among ``columns`` (``what`` starts the message)."""
    unknown = [c for c in names if c not in columns]
    if unknown:
        raise DataError(
            f"{what}{'s' * (len(unknown) != 1)} {', '.join(repr(c) for c in unknown)}; available columns: {listing(columns)}"
        )


def labels_of(frame, label: str) -> tuple[np.ndarray, tuple]:
    """``(y, classes)``: the label column mapped to 0, 1, ... in sorted order, and its values."""
    import pandas as pd

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
            f"label column {label!r} must have at least 2 distinct values, got {len(values)}: {listing(values, repr)}"
        )
    index = {v: i for i, v in enumerate(values)}
    y = np.array([index[v] for v in target.to_numpy().tolist()], dtype=np.int64)
    classes = tuple(v.item() if isinstance(v, np.generic) else v for v in values)
    return y, classes


def listing(items: Sequence, fmt=str) -> str:
    """``a, b, c`` for at most 8 items, then ``, ... (N in total)``."""
    items = list(items)
    shown = ", ".join(fmt(item) for item in items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... ({len(items)} in total)"
    return shown


def _sorted_unique(values: np.ndarray) -> list:
    unique = list(dict.fromkeys(values.tolist()))
    try:
        return sorted(unique)
    except TypeError:  # mixed types, e.g. numbers and strings in one column
        return sorted(unique, key=lambda v: (type(v).__name__, str(v)))
