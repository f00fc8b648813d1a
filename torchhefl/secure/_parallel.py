"""Spread big-integer work over the machine's cores (private).

Three mechanisms:

* :func:`powmod_lists`: modular exponentiations on threads. ``gmpy2.powmod_base_list`` releases
  the GIL, so the threads run on separate cores with no process, fork or pickling at all. Paillier
  decryption (two exponentiations per ciphertext, one per prime) goes this way.
* :func:`map_chunks`: Python-level loops of big-integer multiplications (which hold the GIL) in
  forked processes. Work is split into contiguous chunks; the parent process computes the first
  chunk and forked children compute the others. The children inherit the function and the inputs
  through ``fork`` (copy-on-write), so nothing but the results (lists of integers) is ever
  pickled: no key object crosses a process boundary. Where ``fork`` is unavailable (Windows,
  macOS' default), inside a daemonic process, or inside a worker, it runs serially.
* :class:`ForkedHelper`: one long-lived forked process for work too small to pay for a fork each
  time (an encrypted step's product), with :class:`SplitChooser` deciding by measured wall time
  whether handing it half the work pays off.

``TORCHHEFL_NUM_WORKERS`` overrides the number of threads or processes (``1`` disables both).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import statistics
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gmpy2

__all__ = ["ForkedHelper", "SplitChooser", "map_chunks", "num_workers", "powmod_lists"]

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


class ForkedHelper:
    """One forked helper process that runs ``work(job)`` for the caller, kept for the process's life.

    Forked on first use (:meth:`usable`) on Linux with at least two cores (``TORCHHEFL_NUM_WORKERS``
    or the cpu count) outside daemonic processes; elsewhere it is never started and the caller does
    the work itself. Jobs and results cross a pipe, so they must be plain data (bytes, arrays,
    strings); ``work`` returns ``None`` for the result of a job that raised.

    Attributes:
        process: the helper's ``multiprocessing.Process`` while it runs, else ``None``.
        failed: the helper could not be started, or its pipe broke: it is not used again.
    """

    def __init__(self, work: Callable[[Any], Any]) -> None:
        self.work = work
        self.conn = None
        self.process = None
        self.failed = False
        self.owner = os.getpid()

    def usable(self) -> bool:
        """Whether the helper runs (starting it if need be)."""
        if self.owner != os.getpid():  # a forked copy of the process: the helper is not ours
            self.conn, self.process, self.failed, self.owner = None, None, False, os.getpid()
        if self.failed:
            return False
        if self.conn is not None:
            return True
        env = os.environ.get("TORCHHEFL_NUM_WORKERS")
        cores = int(env) if env is not None and env.isdigit() else (os.cpu_count() or 1)
        if cores < 2 or not sys.platform.startswith("linux") or mp.current_process().daemon:
            self.failed = True
            return False
        try:
            ctx = mp.get_context("fork")
            self.conn, child = ctx.Pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with idle torch threads
                self.process = ctx.Process(target=_helper_loop, args=(child, self.work), daemon=True)
                self.process.start()
            child.close()
            atexit.register(self.close)
        except (OSError, ValueError):
            self.failed, self.conn = True, None
        return not self.failed

    def submit(self, job: Any) -> bool:
        """Hand ``job`` to the helper; ``False`` if it does not run or its pipe broke (then it is retired)."""
        if not self.usable():
            return False
        try:
            self.conn.send(job)
        except (OSError, EOFError):
            self._retire()
            return False
        return True

    def result(self) -> Any:
        """The helper's answer to the job last submitted (``None`` if the job raised or the pipe broke)."""
        try:
            return self.conn.recv()
        except (OSError, EOFError):
            self._retire()
            return None

    def _retire(self) -> None:
        self.failed = True
        self.close()

    def close(self) -> None:
        """Stop the helper (it is forked again on the next :meth:`usable` unless it failed)."""
        if self.owner != os.getpid():
            return
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.conn.close()
            self.conn = None
        if self.process is not None:
            self.process.join(timeout=1)
            self.process = None


def _helper_loop(conn, work: Callable[[Any], Any]) -> None:
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            out = work(job)
        except Exception:  # noqa: BLE001 - the caller redoes the work itself and raises what it raises
            out = None
        conn.send(out)


class SplitChooser:
    """Chooses between doing work serially and splitting it with a helper, by measured wall time.

    The first calls alternate between the split and the serial way; afterwards the faster one (by
    median wall time) is used, and both are re-measured every ``recheck`` calls. The choice affects
    speed only: callers give the same result either way.
    """

    def __init__(self, trials: int = 3, recheck: int = 200) -> None:
        self.trials, self.recheck = trials, recheck
        self.samples: dict[bool, list[float]] = {True: [], False: []}
        self.calls = 0

    def split(self) -> bool:
        """Whether to split this call's work."""
        self.calls += 1
        if self.calls % self.recheck == 0:
            self.samples = {True: [], False: []}
        for mode in (True, False):
            if len(self.samples[mode]) < self.trials:
                return mode
        return statistics.median(self.samples[True]) < statistics.median(self.samples[False])

    def record(self, split: bool, seconds: float) -> None:
        """The wall time of one call done the ``split`` way."""
        if len(self.samples[split]) < self.trials:
            self.samples[split].append(seconds)
