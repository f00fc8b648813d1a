"""Fast modular exponentiation for Paillier on gmpy2 (private).

* :class:`FixedBaseTable`: ``base^e`` for many exponents ``e`` below a fixed size, by a table of
  ``base^(d * 2^(w*i))``; one exponentiation costs one modular multiplication per window. Used for
  DJN short-exponent randomness (``h_s^a`` with a :func:`~torchhefl.secure.keys.coin_bits`-bit ``a``).
* :func:`multi_exp_rows`: ``prod_j bases[j] ** rows[i][j]`` for every row ``i`` (signed exponents)
  by Straus' interleaved exponentiation over window-NAF digits: the squarings are shared by all
  bases of a row and each base gets a small table of odd powers (and of its inverse, for negative
  digits) built once and reused by every row. This is ``plain_matrix @ encrypted_vector``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

__all__: list[str] = []

ONE = mpz(1)


class FixedBaseTable:
    """Precomputed powers of one base modulo ``modulus`` for exponents in ``[0, 2^exp_bits)``.

    A table of ``window``-bit digits costs ``ceil(exp_bits / window) * (2^window - 1)``
    multiplications to build and ``ceil(exp_bits / window)`` per exponentiation: wide windows pay
    off over many exponentiations, narrow ones over a few.
    """

    def __init__(self, base: mpz, modulus: mpz, exp_bits: int, window: int = 8) -> None:
        if not 1 <= window <= 8:
            raise ValueError(f"window must be 1..8 bits, got {window}")
        self.modulus = modulus
        self.exp_bits = exp_bits
        self.window = window
        self.n_windows = -(-exp_bits // window)
        size = 1 << window
        tables = []
        g = mpz(base) % modulus
        for _ in range(self.n_windows):
            row = [ONE, g]
            for _d in range(2, size):
                row.append(row[-1] * g % modulus)
            tables.append(row)
            g = row[-1] * g % modulus  # g^(2^window)
        self._tables = tables

    def pow(self, e: int) -> mpz:
        """``base^e mod modulus`` for ``0 <= e < 2^exp_bits``."""
        m = self.modulus
        acc = ONE
        if self.window == 8:
            digits = int(e).to_bytes(self.n_windows, "little")
        else:
            w, mask = self.window, (1 << self.window) - 1
            digits = [(e >> (w * i)) & mask for i in range(self.n_windows)]
        for row, digit in zip(self._tables, digits):
            if digit:
                acc = acc * row[digit] % m
        return acc


class AdaptiveFixedBase:
    """Fixed-base powers of one base with the table sized to the work done so far.

    Starts with a narrow table (5-bit windows: for 2048-bit keys 1,395 multiplications to build,
    45 per power) and builds the wide one (8-bit: 7,140 and 28) once :data:`WIDE_AFTER` powers
    have been asked for, where it has paid for itself. Thread-safe.
    """

    NARROW, WIDE, WIDE_AFTER = 5, 8, 500

    def __init__(self, base: mpz, modulus: mpz, exp_bits: int) -> None:
        self.base, self.modulus, self.exp_bits = mpz(base), mpz(modulus), exp_bits
        self._tables: dict[int, FixedBaseTable] = {}
        self._count = 0
        self._lock = threading.Lock()

    @property
    def windows(self) -> set[int]:
        """Window sizes of the tables built so far."""
        return set(self._tables)

    def for_count(self, count: int) -> FixedBaseTable:
        """The table to use for the next ``count`` powers (built now if needed)."""
        with self._lock:
            self._count += count
            wide = self._count >= self.WIDE_AFTER or self.WIDE in self._tables
            window = self.WIDE if wide else self.NARROW
            table = self._tables.get(window)
            if table is None:
                table = FixedBaseTable(self.base, self.modulus, self.exp_bits, window=window)
                self._tables[window] = table
        return table


def _best_window(n_rows: int, max_bits: int) -> int:
    # per base: n_rows * max_bits / (w + 1) multiplications for the wNAF digits, plus tables of
    # 2^(w-2) odd powers for each sign
    return min(range(2, 9), key=lambda w: n_rows * max_bits / (w + 1) + 2 * (1 << (w - 2)))


def _wnaf(k: int, w: int) -> list[tuple[int, int]]:
    """Signed window-NAF of ``k``: ``[(position, odd digit)]`` with ``sum(d << pos) == k`` and |d| < 2^(w-1)."""
    out = []
    pos = 0
    full, half = 1 << w, 1 << (w - 1)
    while k:
        tz = (k & -k).bit_length() - 1
        k >>= tz
        pos += tz
        d = k & (full - 1)
        if d >= half:
            d -= full
        out.append((pos, d))
        k = (k - d) >> w
        pos += w
    return out


def multi_exp_rows(bases: Sequence[mpz], rows: Sequence[Sequence[int]], modulus: mpz) -> list[mpz]:
    """``[prod_j bases[j] ** row[j] mod modulus for row in rows]`` with signed integer exponents.

    Straus' interleaved exponentiation over signed window-NAF digits: one shared squaring per bit
    and row, about ``bits / (w + 1)`` multiplications per exponent, odd-power tables of each base
    (and of its inverse, for negative digits) built once and reused by every row. Every base must be
    invertible modulo ``modulus`` when a negative exponent meets it.
    """
    d = len(bases)
    max_bits = 0
    for row in rows:
        if len(row) != d:
            raise ValueError("every row needs one exponent per base")
        for k in row:
            b = (k if k >= 0 else -k).bit_length()
            if b > max_bits:
                max_bits = b
    if max_bits == 0:
        return [ONE for _ in rows]
    w = _best_window(len(rows), max_bits)
    m = modulus
    n_odd = 1 << (w - 2)
    tables: dict[int, list[mpz]] = {}  # key j for base j, ~j for its inverse: [g, g^3, g^5, ...]

    def table(key: int) -> list[mpz]:
        t = tables.get(key)
        if t is None:
            g = gmpy2.invert(bases[~key], m) if key < 0 else mpz(bases[key]) % m
            g2 = g * g % m
            t = [g]
            for _ in range(n_odd - 1):
                t.append(t[-1] * g2 % m)
            tables[key] = t
        return t

    out = []
    n_pos = max_bits + 2
    for row in rows:
        plan: list[list[mpz]] = [[] for _ in range(n_pos)]
        for j, k in enumerate(row):
            if not k:
                continue
            for pos, digit in _wnaf(k, w):
                if digit > 0:
                    plan[pos].append(table(j)[digit >> 1])
                else:
                    plan[pos].append(table(~j)[(-digit) >> 1])
        acc = None
        for pos in range(n_pos - 1, -1, -1):
            if acc is not None:
                acc = acc * acc % m
            for x in plan[pos]:
                acc = x if acc is None else acc * x % m
        out.append(ONE if acc is None else acc)
    return out
