"""Splitting a training set across clients: IID and label-skewed Dirichlet(alpha) partitions.

Both return one array of row indices per client, drawn from ``numpy.random.default_rng(seed)``:
the same arguments give the same partition.
"""

from __future__ import annotations

import numpy as np

from torchhefl.exceptions import ConfigError, DataError

__all__ = ["partition_dirichlet", "partition_iid"]

_MAX_DRAWS = 1000
_DEFAULT_MIN_SIZE = 10


def partition_iid(n_or_labels: int | np.ndarray, num_clients: int, *, seed: int) -> list[np.ndarray]:
    """Shuffle the rows and deal them out evenly.

    Args:
        n_or_labels: the number of rows, or an array with one entry per row (such as the labels).
        num_clients: number of clients, at least 1 and at most the number of rows.
        seed: seed of the shuffle.

    Returns:
        ``num_clients`` int64 arrays of row indices in shuffled order; they cover every row once
        and their sizes differ by at most 1.
    """
    n = _num_rows(n_or_labels)
    _check_num_clients(num_clients, n)
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return [part.copy() for part in np.array_split(perm, num_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    *,
    alpha: float,
    seed: int,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Label-skewed (non-IID) partition: each class is split across clients by Dirichlet(alpha) shares.

    For every class the rows are shuffled and cut according to proportions drawn from
    ``Dirichlet(alpha, ..., alpha)`` over the clients; small ``alpha`` gives each client few
    classes, large ``alpha`` approaches an IID split. The whole draw is repeated until every client
    holds at least ``min_size`` rows.

    Args:
        labels: class of each row, shape ``(n,)``.
        num_clients: number of clients, at least 1 and at most ``n``.
        alpha: concentration, > 0.
        seed: seed of the draws.
        min_size: fewest rows any client may get. Default: ``None``, meaning 10, or half an even
            share ``max(1, n // (2 * num_clients))`` when that is smaller.

    Returns:
        ``num_clients`` int64 arrays of row indices in shuffled order; together they cover every
        row once.

    Raises:
        DataError: ``num_clients`` is out of range, or no draw gave every client ``min_size`` rows
            within 1000 attempts (lower ``min_size`` or raise ``alpha``).
        ConfigError: ``alpha`` or ``min_size`` is out of range.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must have shape (n,), got {labels.shape}")
    n = labels.shape[0]
    _check_num_clients(num_clients, n)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be a positive number, got {alpha!r}")
    if min_size is None:
        min_size = min(_DEFAULT_MIN_SIZE, max(1, n // (2 * num_clients)))
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ConfigError(f"min_size must be a non-negative integer, got {min_size!r}")
    if min_size * num_clients > n:
        raise DataError(f"cannot give each of {num_clients} clients at least {min_size} rows from {n} rows")

    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(_MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for rows in by_class:
            rows = rng.permutation(rows)
            shares = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].append(chunk)
        sizes = [sum(len(chunk) for chunk in chunks) for chunks in parts]
        if min(sizes) >= min_size:
            return [rng.permutation(np.concatenate(chunks)).astype(np.int64) for chunks in parts]
    raise DataError(
        f"no Dirichlet(alpha={alpha}) draw gave each of {num_clients} clients at least {min_size} row{'s' * (min_size != 1)} "
        f"in {_MAX_DRAWS} attempts; lower min_size or raise alpha"
    )


def _num_rows(n_or_labels) -> int:
    if isinstance(n_or_labels, (int, np.integer)) and not isinstance(n_or_labels, bool):
        if n_or_labels < 0:
            raise DataError(f"number of rows must be non-negative, got {n_or_labels}")
        return int(n_or_labels)
    return len(n_or_labels)


def _check_num_clients(num_clients: int, n: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise DataError(f"number of clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise DataError(f"number of clients must be at least 1, got {num_clients}")
    if num_clients > n:
        raise DataError(f"more clients ({num_clients}) than training rows ({n})")
