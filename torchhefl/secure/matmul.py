"""Products of a plaintext matrix and an encrypted matrix on the raw layer (ciphertexts and integers).

``A @ E`` and ``E @ B`` for an encrypted ``E`` are, per output element, a product of ciphertexts
raised to plaintext integers: ``out[i, col] = prod_j E[j, col] ^ A[i, j]``. :func:`plan_matmul`
lays that out as groups of (bases, exponent rows) and :func:`run_matmul` computes them with
:func:`~torchhefl.secure._fastmath.multi_exp_rows`, over the cores. EncryptedTensor's ``@``
checks the fixed-point bounds between the two steps, before any exponentiation runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from gmpy2 import mpz

from torchhefl.secure import _parallel
from torchhefl.secure._fastmath import multi_exp_rows

__all__ = ["MatmulPlan", "plan_matmul", "run_matmul"]

_MODMUL_SECONDS_2048 = 4e-6


@dataclass
class MatmulPlan:
    """The work of one product: ``groups`` of (bases, exponent rows), one output per row."""

    groups: list[tuple[list[mpz], list[list[int]]]]
    row_sum: int
    """Largest sum of ``|exponent|`` over a row: the result grows by at most ``bitlen(row_sum)`` bits."""
    out_shape: torch.Size
    depth: int
    """Bases per row (the inner dimension)."""
    plain_on_left: bool


def plan_matmul(
    cts: Sequence[mpz], enc_shape: torch.Size, ks: Sequence[int], plain_shape: torch.Size, plain_on_left: bool
) -> MatmulPlan:
    """Lay out ``plain @ enc`` (``plain_on_left``) or ``enc @ plain``; both operands 1-D or 2-D.

    ``cts`` are the encrypted operand's ciphertexts and ``ks`` the plaintext's integers, row-major.
    """
    enc_2d, plain_2d = len(enc_shape) == 2, len(plain_shape) == 2
    if plain_2d:
        pr, pc = plain_shape
        P = [list(ks[i * pc : (i + 1) * pc]) for i in range(pr)]
    if plain_on_left:  # A (m, d) @ E (d, c): out[i, col] = prod_j E[j, col] ^ A[i, j]
        A = P if plain_2d else [list(ks)]
        d = plain_shape[-1]
        Ed, Ec = (enc_shape[0], enc_shape[1]) if enc_2d else (enc_shape[0], 1)
        if d != Ed:
            raise ValueError(f"matmul shape mismatch: {tuple(plain_shape)} @ {tuple(enc_shape)}")
        groups = [([cts[j * Ec + col] for j in range(d)], A) for col in range(Ec)]
        row_sum = max([0] + [sum(abs(k) for k in row) for row in A])
        out_dims = ([len(A)] if plain_2d else []) + ([Ec] if enc_2d else [])
    else:  # E (r, d) @ B (d, k): out[i, col] = prod_j E[i, j] ^ B[j, col]
        B = P if plain_2d else [[k] for k in ks]
        d = plain_shape[0]
        Er, Ed = (enc_shape[0], enc_shape[1]) if enc_2d else (1, enc_shape[0])
        if d != Ed:
            raise ValueError(f"matmul shape mismatch: {tuple(enc_shape)} @ {tuple(plain_shape)}")
        kk = len(B[0]) if B else (plain_shape[1] if plain_2d else 1)
        BT = [[B[j][col] for j in range(d)] for col in range(kk)]
        groups = [([cts[i * Ed + j] for j in range(Ed)], BT) for i in range(Er)]
        row_sum = max([0] + [sum(abs(k) for k in row) for row in BT])
        out_dims = ([Er] if enc_2d else []) + ([kk] if plain_2d else [])
    return MatmulPlan(groups, row_sum, torch.Size(out_dims), d, plain_on_left)


def run_matmul(plan: MatmulPlan, modulus: mpz, key_bits: int, exp_bits: int) -> list[mpz]:
    """The product's ciphertexts, row-major; ``exp_bits`` bounds the exponents (for the work estimate)."""
    groups, n2 = plan.groups, modulus
    per_row = plan.depth * (exp_bits // 4 + 1) * _MODMUL_SECONDS_2048 * (key_bits / 2048.0) ** 1.6
    if len(groups) == 1:  # split the rows of the single group across the cores
        bases, rows = groups[0]
        results = [_parallel.map_chunks(lambda rs: multi_exp_rows(bases, rs, n2), rows, seconds_per_item=per_row)]
    else:
        results = _parallel.map_chunks(
            lambda gs: [multi_exp_rows(b, rs, n2) for b, rs in gs],
            groups,
            seconds_per_item=per_row * (len(groups[0][1]) if groups else 0),
        )
    if plan.plain_on_left:  # results[col][i] -> out[i, col]
        n_rows = len(groups[0][1]) if groups else 0
        return [results[col][i] for i in range(n_rows) for col in range(len(results))]
    return [x for r in results for x in r]  # results[i][col] -> out[i, col]
