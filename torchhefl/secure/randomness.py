"""Random factors of encryption drawn ahead, on a second core (private).

Every Paillier encryption and re-randomisation multiplies by a fresh random factor ``h_s^a mod n^2``
(:class:`~torchhefl.secure.public_key.PublicKey`), about 28 modular multiplications of a 2048-bit
key's 4096-bit ciphertexts, against one for the rest of the work. None of it depends on the
values, so a :class:`FactorPool` has a helper process (:class:`~torchhefl.secure._parallel.ForkedHelper`,
forked once) draw the factors while this process does other work (plaintext training, decryption,
the wire), and an encryption takes them from the pool:

* each factor serves once: it is removed from the pool before it is used;
* the helper draws the exponents ``a`` from its own OS randomness (``secrets``), never from a seed;
  the factors cross a pipe between this process and its own child, and are never written anywhere;
* the helper runs at the lowest CPU priority (``nice`` 19), so it draws in time a core would idle;
* the pool is bounded: it holds enough for two takes as large as the largest so far, at most
  :data:`POOL_TARGET` factors per key (1 MiB at 2048 bits); a key starts one only after
  :data:`START_AFTER` encryptions, so a short-lived key never forks;
* a process forked after the pool was filled (a worker, a test) drops its copy and never uses it;
* where no helper can run (one core, no ``fork``, a daemonic process), or when the pool is empty,
  the caller computes the factors itself: the pool changes speed, never results.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import deque

from gmpy2 import mpz

from torchhefl.secure._fastmath import FixedBaseTable
from torchhefl.secure._parallel import ForkedHelper

__all__ = ["BATCH", "HELPER", "MIN_JOB", "POOL_TARGET", "START_AFTER", "FactorPool"]

POOL_TARGET = 2048
"""Factors a key's pool holds ready or asked for, at most."""

BATCH = 256
"""Factors per job handed to the helper, at most (about 0.1 s of its work at 2048 bits)."""

MIN_JOB = 32
"""Factors a pool keeps ready or asked for, at least."""

START_AFTER = 256
"""Encryptions under a key before its pool asks the helper for factors."""

_CHILD_TABLES: dict[tuple[int, int, int], FixedBaseTable] = {}  # filled in the helper process only
_MAX_CHILD_TABLES = 8
_NICED = False


def _draw(job: tuple[str, str, int, int]) -> bytes:
    """The helper's work: ``count`` factors ``h_s^a mod n^2`` for fresh secret ``a``, as fixed-width bytes."""
    global _NICED
    if not _NICED:  # draw in idle time only: the split products and decryption threads come first
        _NICED = True
        try:
            os.nice(19)
        except OSError:
            pass
    n2_hex, hs_hex, exp_bits, count = job
    key = (int(n2_hex, 16), int(hs_hex, 16), int(exp_bits))
    table = _CHILD_TABLES.get(key)
    if table is None:
        if len(_CHILD_TABLES) >= _MAX_CHILD_TABLES:
            _CHILD_TABLES.clear()
        table = _CHILD_TABLES[key] = FixedBaseTable(mpz(key[1]), mpz(key[0]), key[2], window=8)
    width = (key[0].bit_length() + 7) // 8
    return b"".join(int(table.pow(secrets.randbits(key[2]))).to_bytes(width, "big") for _ in range(int(count)))


HELPER = ForkedHelper(_draw)
"""The process's one helper drawing random factors (for every key's pool)."""

_LOCK = threading.Lock()
_PENDING: deque[tuple[FactorPool, int]] = deque()  # (pool, count) of each job handed to HELPER, in order


class FactorPool:
    """Random factors of one key's encryptions, drawn ahead by :data:`HELPER` (see the module docstring).

    Args:
        base: ``h_s``, the key's fixed base.
        modulus: ``n^2``.
        exp_bits: bits of the secret exponents.
    """

    def __init__(self, base: mpz, modulus: mpz, exp_bits: int) -> None:
        self._job = (format(int(modulus), "x"), format(int(base), "x"), int(exp_bits))
        self._width = (int(modulus).bit_length() + 7) // 8
        self._ready: deque[mpz] = deque()
        self._asked = 0  # factors in jobs handed to the helper and not yet received
        self._used = 0
        self._largest = 0  # the largest take so far: the pool keeps about two of them ready
        self._owner = os.getpid()

    def __len__(self) -> int:
        """Factors ready now (after taking in what the helper has finished)."""
        with _LOCK:
            if self._owner != os.getpid():
                return 0
            _drain()
            return len(self._ready)

    @property
    def asked(self) -> int:
        """Factors asked of the helper and not yet received."""
        return self._asked

    def take(self, count: int) -> list[mpz]:
        """Up to ``count`` factors (as many as are ready, possibly none), each removed from the pool; asks for more."""
        with _LOCK:
            if self._owner != os.getpid():  # a forked copy: its factors are the parent's, never ours
                self._ready.clear()
                self._asked, self._used, self._largest, self._owner = 0, 0, 0, os.getpid()
                return []
            self._used += count
            self._largest = max(self._largest, count)
            _drain()
            k = min(count, len(self._ready))
            out = [self._ready.popleft() for _ in range(k)]
            self._refill()
            return out

    def _refill(self) -> None:
        """Ask for enough factors for the next two takes as large as the largest so far (within the bound)."""
        if self._used < START_AFTER:
            return
        target = min(POOL_TARGET, max(2 * self._largest, MIN_JOB))
        job = min(BATCH, target)
        while len(self._ready) + self._asked + job <= target:
            if not HELPER.submit((*self._job, job)):
                return
            self._asked += job
            _PENDING.append((self, job))

    def _receive(self, reply: bytes | None, count: int) -> None:
        self._asked = max(0, self._asked - count)
        w = self._width
        if reply is None or len(reply) != count * w:
            return
        self._ready.extend(mpz(int.from_bytes(reply[i : i + w], "big")) for i in range(0, len(reply), w))


def _drain() -> None:
    """Move the helper's finished jobs into their pools (never waits). Call with ``_LOCK`` held."""
    if HELPER.owner != os.getpid():
        _PENDING.clear()
        return
    while _PENDING:
        if HELPER.failed or HELPER.conn is None:
            while _PENDING:
                pool, count = _PENDING.popleft()
                pool._receive(None, count)
            return
        try:
            if not HELPER.conn.poll():
                return
        except (OSError, EOFError):
            HELPER.result()  # retires the helper
            continue
        pool, count = _PENDING.popleft()
        pool._receive(HELPER.result(), count)
