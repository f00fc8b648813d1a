"""A user's table as read, before the sites agree how to encode it.

:func:`load_table` reads a CSV into a :class:`Table`: numeric columns (missing values allowed, as
NaN), text columns (missing values as ``None``) and the label. Identifier-like columns are left out
unless the caller chose the columns itself (:func:`identifier_columns`). Turning a table into
numbers (one-hot vocabulary, imputed values) needs statistics of every site: that is
:mod:`torchhefl.data.encoding`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from torchhefl.data.reading import labels_of, read_frame, select_columns
from torchhefl.exceptions import DataError

__all__ = ["CATEGORICAL", "NUMERIC", "IdentifierColumnWarning", "Table", "identifier_columns", "load_table"]

NUMERIC = "numeric"
CATEGORICAL = "categorical"

#: fewest rows for "unique values per row" to mark a column as an identifier: in a smaller table an
#: ordinary integer feature (an age, a count) is too often unique by chance
MIN_ROWS_FOR_UNIQUE_IDS = 20
#: ``id``, ``ID``, ``patient_id``, ``patient-id``, ``patient id``, ``record.id`` (any case) ...
_ID_NAME = re.compile(r"(?:.*[ _.\-])?id", re.IGNORECASE)
#: ... and camelCase ``patientId``, ``patientID`` (case matters: ``COVID`` or ``paid`` are no identifiers)
_CAMEL_ID_NAME = re.compile(r".*[a-z0-9]I[dD]")


class IdentifierColumnWarning(UserWarning):
    """Identifier-like columns were left out of the features."""


@dataclass
class Table:
    """A classification table with raw feature columns.

    Attributes:
        columns: the feature column names, in file order.
        kinds: ``"numeric"`` or ``"categorical"`` per column.
        values: per column, shape ``(n,)``: float64 with NaN for a missing value (numeric), or an
            object array of ``str`` with ``None`` for a missing value (categorical).
        y: labels, int64 in {0, ..., K-1}, shape ``(n,)``.
        label_name: name of the label column.
        classes: the label values mapped to 0, 1, ..., in that order.
        identifiers: identifier-like columns left out by :func:`load_table`.
    """

    columns: list[str]
    kinds: list[str]
    values: list[np.ndarray]
    y: np.ndarray
    label_name: str
    classes: tuple = (0, 1)
    identifiers: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        if not (len(self.columns) == len(self.kinds) == len(self.values)):
            raise DataError(f"a Table needs one kind and one value array per column, got {len(self.columns)} columns, "
                            f"{len(self.kinds)} kinds and {len(self.values)} arrays")
        for name, kind, column in zip(self.columns, self.kinds, self.values):
            if kind not in (NUMERIC, CATEGORICAL):
                raise DataError(f"column {name!r} has kind {kind!r}, expected {NUMERIC!r} or {CATEGORICAL!r}")
            if column.shape != self.y.shape:
                raise DataError(f"column {name!r} has shape {column.shape}, expected {self.y.shape} to match the labels")

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (2 for a binary table)."""
        return len(self.classes)

    def names_of(self, kind: str) -> list[str]:
        """The columns of ``kind`` (``"numeric"`` or ``"categorical"``), in file order."""
        return [c for c, k in zip(self.columns, self.kinds) if k == kind]

    def numeric(self) -> np.ndarray:
        """The numeric columns side by side, float64 with NaN, shape ``(n, k)``."""
        cols = [v for v, k in zip(self.values, self.kinds) if k == NUMERIC]
        return np.stack(cols, axis=1) if cols else np.zeros((len(self), 0))

    def categorical(self) -> np.ndarray:
        """The text columns side by side, object (``str`` or ``None``), shape ``(n, m)``."""
        cols = [v for v, k in zip(self.values, self.kinds) if k == CATEGORICAL]
        return np.stack(cols, axis=1) if cols else np.empty((len(self), 0), dtype=object)

    def subset(self, indices) -> "Table":
        """The rows at ``indices`` (in that order), with the same columns."""
        indices = np.asarray(indices, dtype=np.int64)
        return Table(list(self.columns), list(self.kinds), [v[indices] for v in self.values], self.y[indices],
                     self.label_name, self.classes, self.identifiers)


def identifier_columns(frame, label: str) -> list[str]:
    """The columns of ``frame`` (a pandas DataFrame) other than ``label`` that look like row identifiers.

    A column is one if its name is ``id`` or ends in ``_id`` (or ``-id``, `` id``, ``.id``, any
    case, or camelCase ``patientId``), or, with at least :data:`MIN_ROWS_FOR_UNIQUE_IDS` rows, if it
    holds integers (an integer column, no missing value) or text (no value a number), with a
    different value in every row. A float column is never flagged for its values: measurements are often unique.
    """
    import pandas as pd

    found = []
    for name in frame.columns:
        if name == label:
            continue
        column = frame[name]
        if _ID_NAME.fullmatch(name) or _CAMEL_ID_NAME.fullmatch(name):
            found.append(name)
            continue
        if len(column) < MIN_ROWS_FOR_UNIQUE_IDS or column.isna().any():
            continue
        integer = pd.api.types.is_integer_dtype(column) and not pd.api.types.is_bool_dtype(column)
        text = (not pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
                and pd.to_numeric(column, errors="coerce").isna().all())  # numbers with a typo are no identifier
        if (integer or text) and column.nunique() == len(column):
            found.append(name)
    return found


def load_table(
    path: str | os.PathLike,
    label: str,
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
) -> Table:
    """Read a CSV file with a header row into a :class:`Table`.

    Without ``features`` and ``drop``, every column other than ``label`` is a feature except the
    identifier-like ones (:func:`identifier_columns`), which are left out with an
    :class:`IdentifierColumnWarning` naming them. Giving either chooses the
    columns explicitly, and nothing is left out by detection.

    A column is numeric if pandas reads it as numbers (booleans count as 0 and 1); otherwise it is
    categorical and its values are kept as text. Missing values are kept (NaN, ``None``); infinite
    values are refused.

    Args:
        path: the CSV file.
        label: name of the label column (exactly two distinct values, mapped to 0 and 1 in sorted order).
        features: the feature columns to use, in this order. Default: ``None`` (all but ``label``).
        drop: columns to leave out. Default: ``None`` (none, but identifiers are detected).

    Raises:
        DataError: with a one-line message: a missing or unreadable file, no rows, an unknown
            column, ``features`` and ``drop`` both given, a column that mixes numbers and text,
            infinite values, or a label without exactly two classes.
    """
    import pandas as pd

    frame = read_frame(path)
    chosen = features is not None or drop is not None
    identifiers = [] if chosen else identifier_columns(frame, label)
    names = select_columns(frame, label, features=features, drop=list(drop or ()) + identifiers, where=path)
    if identifiers:
        message = (f"left out identifier-like column{'s' * (len(identifiers) != 1)} "
                   f"{', '.join(repr(c) for c in identifiers)} (give --features or --drop to choose the columns yourself)")
        warnings.warn(message, IdentifierColumnWarning, stacklevel=2)

    kinds, values = [], []
    for name in names:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_complex_dtype(column):
            numbers = column.to_numpy(dtype=np.float64, na_value=np.nan)
            n_inf = int(np.isinf(numbers).sum())
            if n_inf:
                raise DataError(f"feature column {name!r} has {n_inf} infinite value{'s' * (n_inf != 1)}")
            kinds.append(NUMERIC)
            values.append(numbers)
            continue
        present = column[column.notna()]
        numeric = pd.to_numeric(present, errors="coerce")
        if numeric.notna().any():
            text = present[numeric.isna()]
            raise DataError(
                f"feature column {name!r} mixes numbers and text (e.g. {text.iloc[0]!r} in row {text.index[0] + 1}); "
                "correct the values, or leave the column out with --drop"
            )
        kinds.append(CATEGORICAL)
        values.append(np.array([None if pd.isna(v) else str(v) for v in column.tolist()], dtype=object))
    y, classes = labels_of(frame, label)
    return Table(names, kinds, values, y, label, classes, tuple(identifiers))

