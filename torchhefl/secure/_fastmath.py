"""Fast modular exponentiation for Paillier on gmpy2 (private).

* :class:`FixedBaseTable`: ``base^e`` for many exponents ``e`` below a fixed size, by a table of
  ``base^(d * 2^(w*i))``; one exponentiation costs one modular multiplication per window. Used for
  DJN short-exponent randomness (``h_s^a`` with a ~2*security-bit ``a``).
* :func:`multi_exp_rows`: ``prod_j bases[j] ** rows[i][j]`` for every row ``i`` (signed exponents)
  by Straus' interleaved windows: the squarings are shared by all bases of a row and each base gets a
  small table of odd/even powers (and of its inverse, for negative exponents) built once and reused
  by every row. This is ``plain_matrix @ encrypted_vector``.
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

__all__: list[str] = []

ONE = mpz(1)


class FixedBaseTable:
    """Precomputed powers of one base modulo ``modulus`` for exponents in ``[0, 2^exp_bits)``."""

    def __init__(self, base: mpz, modulus: mpz, exp_bits: int, window: int = 8) -> None:
        if window != 8:
            raise ValueError("FixedBaseTable uses byte windows")
        self.modulus = modulus
        self.exp_bits = exp_bits
        self.n_windows = -(-exp_bits // window)
        tables = []
        g = mpz(base) % modulus
        for _ in range(self.n_windows):
            row = [ONE, g]
            for _d in range(2, 256):
                row.append(row[-1] * g % modulus)
            tables.append(row)
            g = row[-1] * g % modulus  # g^256
        self._tables = tables

    def pow(self, e: int) -> mpz:
        """``base^e mod modulus`` for ``0 <= e < 2^exp_bits``."""
        m = self.modulus
        acc = ONE
        for row, digit in zip(self._tables, int(e).to_bytes(self.n_windows, "little")):
            if digit:
                acc = acc * row[digit] % m
        return acc


def _best_window(n_rows: int, max_bits: int) -> int:
    best, best_cost = 1, None
    for w in range(1, 9):
        cost = n_rows * (-(-max_bits // w)) + (1 << w)
        if best_cost is None or cost < best_cost:
            best, best_cost = w, cost
    return best


def multi_exp_rows(bases: Sequence[mpz], rows: Sequence[Sequence[int]], modulus: mpz) -> list[mpz]:
    """``[prod_j bases[j] ** row[j] mod modulus for row in rows]`` with signed integer exponents.

    Every base must be invertible modulo ``modulus`` when a negative exponent meets it.
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
    mask = (1 << w) - 1
    n_win = -(-max_bits // w)
    m = modulus
    tables: dict[tuple[int, bool], list[mpz]] = {}

    def table(j: int, neg: bool) -> list[mpz]:
        t = tables.get((j, neg))
        if t is None:
            g = gmpy2.invert(bases[j], m) if neg else mpz(bases[j]) % m
            t = [ONE, g]
            for _ in range(2, mask + 1):
                t.append(t[-1] * g % m)
            tables[(j, neg)] = t
        return t

    out = []
    for row in rows:
        # per window (most significant first): the (table, digit) pairs to multiply in
        plan: list[list[tuple[list[mpz], int]]] = [[] for _ in range(n_win)]
        for j, k in enumerate(row):
            if not k:
                continue
            t = table(j, k < 0)
            a = k if k >= 0 else -k
            i = n_win - 1
            while a:
                digit = a & mask
                if digit:
                    plan[i].append((t, digit))
                a >>= w
                i -= 1
        acc = None
        for steps in plan:
            if acc is not None:
                for _ in range(w):
                    acc = acc * acc % m
            for t, digit in steps:
                acc = t[digit] if acc is None else acc * t[digit] % m
        out.append(ONE if acc is None else acc)
    return out
