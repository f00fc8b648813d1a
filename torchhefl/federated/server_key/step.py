"""One local SGD step on encrypted weights: :func:`torchhefl.nn.functional.sgd_step` as one
plaintext-matrix @ ciphertext-vector product.

Because the Taylor gradient is affine in ``theta``, one step is ``M @ theta + b + c * theta_global``
for a plaintext matrix ``M`` and vector ``b`` that depend on the batch only;
:func:`~torchhefl.nn.functional.step_map` reads ``M``, ``b`` and ``c`` off the step itself. ``M`` is
quantised to a fixed, public ``step_bits`` bits after the binary point, so each step raises the
fixed-point scale by exactly ``step_bits``. The product runs on a second core when that pays off
(:func:`torchhefl.secure.split_product.split_matmul`).
"""

from __future__ import annotations

from fractions import Fraction

import torch

from torchhefl.federated.server_key.constants import STEP_BITS, VALUE_BITS
from torchhefl.nn.functional import step_map
from torchhefl.secure import EncryptedTensor
from torchhefl.secure.split_product import split_matmul

__all__ = ["apply_step"]


def _fixed(v: float, scale: int) -> int:
    """``round(v * 2^scale)`` exactly, for any scale (half to even)."""
    return round(Fraction(v) * (1 << scale))


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
    pk = theta.public_key
    M, b, c = step_map(X, y, lr=lr, proximal_mu=proximal_mu)
    if float(M.abs().max()) >= 2.0 ** (62 - step_bits):
        raise OverflowError(f"a step matrix entry of {float(M.abs().max()):.3g} does not fit {step_bits} fraction bits in 63")
    K = torch.round(torch.ldexp(M, torch.tensor(float(step_bits), dtype=torch.float64))).to(torch.int64)
    s = theta.scale
    if c:
        if anchor is None or anchor.scale != s or anchor.shape != theta.shape:
            raise ValueError("a proximal step needs the anchor at theta's scale and shape")
        kc = round(c * 2.0**step_bits)
        K = torch.cat([K, kc * torch.eye(K.shape[0], dtype=torch.int64)], dim=1)
        theta = EncryptedTensor.from_ciphertexts(
            pk, theta.ciphertexts + anchor.ciphertexts, (2 * K.shape[0],), scale=s, bound_bits=theta.bound_bits
        )
    scale = s + step_bits
    cts = [pk.raw_add_plain(ct, _fixed(v, scale)) for ct, v in zip(split_matmul(K, theta), b.tolist())]
    return EncryptedTensor.from_ciphertexts(pk, cts, (K.shape[0],), scale=scale, bound_bits=scale + value_bits)
