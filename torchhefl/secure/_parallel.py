"""Spread big-integer work over the machine's cores (private).

Two mechanisms:

* :func:`powmod_lists`: modular exponentiations on threads. ``gmpy2.powmod_base_list`` releases
  the GIL, so the threads run on separate cores with no process, fork or pickling at all. Paillier
  decryption (two exponentiations per ciphertext, one per prime) goes this way.
* :func:`map_chunks`: Python-level loops of big-integer multiplications (which hold the GIL) in
  forked processes. Work is split into contiguous chunks; the parent process computes the first
  chunk and forked children compute the others. The children inherit the function and the inputs
  through ``fork`` (copy-on-write), so nothing but the results (lists of integers) is ever
  pickled: no key object crosses a process boundary. Where ``fork`` is unavailable (Windows,
  macOS' default), inside a daemonic process, or inside a worker, it runs serially.

``TORCHHEFL_NUM_WORKERS`` overrides the number of threads or processes (``1`` disables both).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gmpy2

__all__: list[str] = []

_MAX_DEFAULT_WORKERS = 2
_FORK_SETUP_SECONDS = 0.02  # measured cost of forking a pool with torch imported
_STATE: tuple[Callable[[Sequence[Any]], list], Sequence[Any], list[tuple[int, int]]] | None = None
_IN_WORKER = False
_THREAD_HANDOFF_SECONDS = 2e-4  # a piece of work smaller than ~4x this stays on the calling thread
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


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


def _thread_pool(size: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE != size:  # TORCHHEFL_NUM_WORKERS may change between calls
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL, _POOL_SIZE = ThreadPoolExecutor(max_workers=size, thread_name_prefix="torchhefl-powmod"), size
        return _POOL


def _forget_pool_in_child() -> None:
    # a forked child has none of its parent's threads: it starts a pool of its own if it needs one
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def powmod_lists(jobs: Sequence[tuple[Sequence[Any], Any, Any]], *, seconds_per_item: float) -> list[list[Any]]:
    """``[[b^e mod m for b in bases] for bases, e, m in jobs]``, spread over threads when it pays off.

    The jobs are cut into about :func:`num_workers` pieces of equal size; the calling thread
    computes the first and a thread pool the others, all inside ``gmpy2.powmod_base_list``, which
    runs without the GIL. ``seconds_per_item`` is one exponentiation's estimated cost.
    """
    sizes = [len(bases) for bases, _, _ in jobs]
    total = sum(sizes)
    workers = min(num_workers(), total)
    if workers < 2 or _IN_WORKER or total * seconds_per_item < 4 * _THREAD_HANDOFF_SECONDS:
        return [gmpy2.powmod_base_list(list(bases), e, m) for bases, e, m in jobs]
    step = -(-total // workers)
    pieces = [(j, a, min(a + step, size)) for j, size in enumerate(sizes) for a in range(0, size, step)]
    pool = _thread_pool(workers - 1)
    futures = [pool.submit(gmpy2.powmod_base_list, list(jobs[j][0][a:b]), jobs[j][1], jobs[j][2]) for j, a, b in pieces[1:]]
    j, a, b = pieces[0]
    results = [gmpy2.powmod_base_list(list(jobs[j][0][a:b]), jobs[j][1], jobs[j][2])] + [f.result() for f in futures]
    out: list[list[Any]] = [[] for _ in jobs]
    for (j, _, _), part in zip(pieces, results):
        out[j].extend(part)
    return out
