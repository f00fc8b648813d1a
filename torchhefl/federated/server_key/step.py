"""Local SGD on encrypted weights: :func:`torchhefl.nn.functional.sgd_step` as plaintext-matrix @
ciphertext-vector products.

Because the Taylor gradient is affine in ``theta``, one step is ``M @ theta + b + c * theta_global``
for a plaintext matrix ``M`` and vector ``b`` that depend on the batch only
(:func:`~torchhefl.nn.functional.step_map` reads them off the step itself), and a whole round of
steps is one affine map ``A @ theta + B @ theta_global + c``
(:func:`~torchhefl.nn.functional.compose_steps`), which at the start of a round, where ``theta``
is ``theta_global``, is ``(A + B) @ theta + c``: one product per round (:func:`apply_map`). The
matrices are quantised to a fixed, public ``step_bits`` bits after the binary point, so each
product raises the fixed-point scale by exactly ``step_bits``. The product runs on a second core when that pays off
(:func:`torchhefl.secure.split_product.split_matmul`).
"""

from __future__ import annotations

from fractions import Fraction

import torch

from torchhefl.federated.server_key.constants import STEP_BITS, VALUE_BITS
from torchhefl.nn.functional import step_map
from torchhefl.secure import EncryptedTensor
from torchhefl.secure.split_product import split_matmul

__all__ = ["apply_map", "apply_step", "map_fits"]


def _fixed(v: float, scale: int) -> int:
    """``round(v * 2^scale)`` exactly, for any scale (half to even)."""
    return round(Fraction(v) * (1 << scale))


def map_fits(A: torch.Tensor, B: torch.Tensor | None, step_bits: int) -> bool:
    """Whether an affine map's matrices fit ``step_bits`` fraction bits in a 63-bit integer."""
    bound = 2.0 ** (62 - step_bits)
    return float(A.abs().max()) < bound and (B is None or float(B.abs().max()) < bound)


def apply_map(
    theta: EncryptedTensor,
    A: torch.Tensor,
    c: torch.Tensor,
    *,
    B: torch.Tensor | None = None,
    anchor: EncryptedTensor | None = None,
    step_bits: int = STEP_BITS,
    value_bits: int = VALUE_BITS,
) -> EncryptedTensor:
    """``A @ theta + B @ anchor + c`` on encrypted ``theta`` (and ``anchor``, at theta's scale and
    shape, when ``B`` is given) as one plaintext @ ciphertext product.

    ``A`` and ``B`` are quantised to ``step_bits`` bits after the binary point, so the result's
    scale is ``theta.scale + step_bits`` and its bound the public ``scale + value_bits``. Raises
    ``OverflowError`` for a matrix entry that does not fit (see :func:`map_fits`).
    """
    pk = theta.public_key
    if not map_fits(A, B, step_bits):
        raise OverflowError(f"a step matrix entry of {float(A.abs().max()):.3g} does not fit {step_bits} fraction bits in 63")
    K = torch.round(torch.ldexp(A, torch.tensor(float(step_bits), dtype=torch.float64))).to(torch.int64)
    s = theta.scale
    if B is not None:
        if anchor is None or anchor.scale != s or anchor.shape != theta.shape:
            raise ValueError("a proximal step needs the anchor at theta's scale and shape")
        KB = torch.round(torch.ldexp(B, torch.tensor(float(step_bits), dtype=torch.float64))).to(torch.int64)
        K = torch.cat([K, KB], dim=1)
        theta = EncryptedTensor.from_ciphertexts(
            pk, theta.ciphertexts + anchor.ciphertexts, (2 * K.shape[0],), scale=s, bound_bits=theta.bound_bits
        )
    scale = s + step_bits
    cts = [pk.raw_add_plain(ct, _fixed(v, scale)) for ct, v in zip(split_matmul(K, theta), c.tolist())]
    return EncryptedTensor.from_ciphertexts(pk, cts, (K.shape[0],), scale=scale, bound_bits=scale + value_bits)


def apply_step(
    theta: EncryptedTensor,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    proximal_mu: float = 0.0,
    anchor: EncryptedTensor | None = None,
    step_bits: int = STEP_BITS,
    value_bits: int = VALUE_BITS,
) -> EncryptedTensor:
    """:func:`~torchhefl.nn.functional.sgd_step` on an encrypted ``theta`` as one plaintext @ ciphertext product.

    ``anchor`` (with ``proximal_mu > 0``) must be at ``theta``'s scale. The result's scale is
    ``theta.scale + step_bits`` and its bound the public ``scale + value_bits``.
    """
    M, b, c = step_map(X, y, lr=lr, proximal_mu=proximal_mu)
    B = c * torch.eye(M.shape[0], dtype=torch.float64) if c else None
    return apply_map(theta, M, b, B=B, anchor=anchor, step_bits=step_bits, value_bits=value_bits)
