"""Spread big-integer work over the machine's cores (private).

Work is split into contiguous chunks; the parent process computes the first chunk and forked
children compute the others. The children inherit the function and the inputs through ``fork``
(copy-on-write), so nothing but the results (lists of integers) is ever pickled: no key object
crosses a process boundary. Where ``fork`` is unavailable (Windows, macOS' default), inside a
daemonic process, or inside a worker, everything runs serially. ``TORCHHEFL_NUM_WORKERS``
overrides the number of processes (``1`` disables parallelism).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

__all__: list[str] = []

_MAX_DEFAULT_WORKERS = 2
_FORK_SETUP_SECONDS = 0.02  # measured cost of forking a pool with torch imported
_STATE: tuple[Callable[[Sequence[Any]], list], Sequence[Any], list[tuple[int, int]]] | None = None
_IN_WORKER = False


def num_workers() -> int:
    """Processes used for bulk work: ``TORCHHEFL_NUM_WORKERS`` or min(2, cpu count)."""
    env = os.environ.get("TORCHHEFL_NUM_WORKERS")
    if env is not None:
        try:
            return max(1, int(env))
        except ValueError:
            return 1
    return max(1, min(_MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def _fork_usable() -> bool:
    return (
        not _IN_WORKER
        and sys.platform.startswith("linux")
        and "fork" in mp.get_all_start_methods()
        and not mp.current_process().daemon
    )


def _run_chunk(i: int) -> list:
    global _IN_WORKER
    _IN_WORKER = True
    fn, items, bounds = _STATE  # type: ignore[misc]
    a, b = bounds[i]
    return fn(items[a:b])


def map_chunks(fn: Callable[[Sequence[Any]], list], items: Sequence[Any], *, seconds_per_item: float) -> list:
    """Return ``fn(items)`` computed in parallel chunks when the estimated work pays for the forks.

    ``fn`` maps a slice of ``items`` to a list of the same length; the result is the concatenation.
    """
    global _STATE
    workers = num_workers()
    n = len(items)
    workers = min(workers, n)
    if workers < 2 or n * seconds_per_item < 4 * _FORK_SETUP_SECONDS or not _fork_usable():
        return fn(items)
    step = -(-n // workers)
    bounds = [(a, min(a + step, n)) for a in range(0, n, step)]
    _STATE = (fn, items, bounds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with idle torch threads
            ctx = mp.get_context("fork")
            with ctx.Pool(len(bounds) - 1) as pool:
                pending = [pool.apply_async(_run_chunk, (i,)) for i in range(1, len(bounds))]
                out = fn(items[bounds[0][0] : bounds[0][1]])
                for p in pending:
                    out.extend(p.get())
    finally:
        _STATE = None
    return out
