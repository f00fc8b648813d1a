"""Fixed-point encoding of real tensors as integers: ``value = m / 2^scale``.

:class:`FixedPoint` holds the parameters of one encoding (as a TenSEAL context holds its scale
settings); the three containers use one each: :data:`TENSOR_FIXED_POINT` (EncryptedTensor),
:data:`STATE_DICT_FIXED_POINT` (SecureStateDict's packed slots) and :data:`PACKED_SUM_FIXED_POINT`
(PackedSum's wide slots).

* Encrypted tensors use an absolute scale (:data:`DEFAULT_SCALE` bits after the binary point).
* Plaintext operands of ``*`` and ``@`` are quantised with :data:`DEFAULT_PLAIN_BITS` significant
  bits relative to the operand's largest magnitude (like a block floating point), or at the
  smallest scale that represents them exactly (integers get scale 0, ``0.25`` gets scale 2).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DEFAULT_PLAIN_BITS",
    "DEFAULT_SCALE",
    "MAX_PLAIN_SCALE",
    "PACKED_SUM_FIXED_POINT",
    "STATE_DICT_FIXED_POINT",
    "TENSOR_FIXED_POINT",
    "FixedPoint",
    "as_plain_tensor",
    "dequantize",
    "plain_scale",
    "quantize",
]


@dataclass(frozen=True)
class FixedPoint:
    """Parameters of a fixed-point encoding: ``m = round(v * 2^scale_bits)`` (integers: ``m = v``).

    In a packed slot, ``m`` is stored offset by ``2^mag_bits`` (so the slot holds ``m + 2^mag_bits``
    in ``[0, 2^(mag_bits + 1))``), and :attr:`headroom_bits` more bits keep weighted sums of slots
    from carrying into the next: a slot is :attr:`slot_bits` wide.

    Args:
        scale_bits: bits after the binary point (resolution ``2^-scale_bits``).
        value_bits: bits of the integer part: floating values need ``|v| < 2^value_bits``.
        headroom_bits: bits of a slot above the offset value, for sums of total weight below
            ``2^headroom_bits``; default 0 (no slots).
        plain_bits: significant bits kept of a plaintext operand of ``*``, ``/`` and ``@``; default 24.
    """

    scale_bits: int
    value_bits: int
    headroom_bits: int = 0
    plain_bits: int = 24

    @property
    def mag_bits(self) -> int:
        """``|m| < 2^mag_bits`` for every encoded value: ``scale_bits + value_bits``."""
        return self.scale_bits + self.value_bits

    @property
    def slot_bits(self) -> int:
        """Bits of one packed slot: the offset value (``mag_bits + 1``) and the headroom."""
        return self.mag_bits + 1 + self.headroom_bits

    @property
    def max_abs_value(self) -> float:
        """Floating values need ``|v| <`` this (``2^value_bits``)."""
        return float(1 << self.value_bits)

    @property
    def max_total_weight(self) -> int:
        """Largest total weight of a sum of slots that cannot carry: ``2^headroom_bits - 1``."""
        return (1 << self.headroom_bits) - 1


TENSOR_FIXED_POINT = FixedPoint(scale_bits=32, value_bits=16, plain_bits=24)
"""EncryptedTensor (unpacked): resolution 2^-32 (about 2.3e-10); the bound tracked per tensor
starts at ``scale + 16`` bits; plaintext operands keep 24 significant bits."""

STATE_DICT_FIXED_POINT = FixedPoint(scale_bits=24, value_bits=13, headroom_bits=24)
"""SecureStateDict (packed): resolution 2^-24, ``|v| < 8192``, total weight below 2^24; 62-bit slots."""

PACKED_SUM_FIXED_POINT = FixedPoint(scale_bits=56, value_bits=92, headroom_bits=11)
"""PackedSum (wide slots for large statistics): resolution 2^-56, ``|v| < 2^92``; 160-bit slots."""

DEFAULT_SCALE = TENSOR_FIXED_POINT.scale_bits
"""Bits after the binary point when a tensor is encrypted (resolution 2^-32, about 2.3e-10)."""

DEFAULT_PLAIN_BITS = TENSOR_FIXED_POINT.plain_bits
"""Significant bits kept of a plaintext operand of ``*``, ``/`` and ``@`` (relative error <= 2^-24)."""

MAX_PLAIN_SCALE = 64
"""A plaintext operand never gets more than 64 bits after the binary point: operands smaller than
``2^(DEFAULT_PLAIN_BITS - 64)`` keep an absolute resolution of 2^-64 instead of 24 significant bits."""


def as_plain_tensor(x) -> torch.Tensor | None:
    """``x`` as a CPU tensor if it is a plaintext number, tensor or array, else ``None``."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, (bool, numbers.Integral)):
        t = torch.tensor(int(x), dtype=torch.int64) if -(2**63) <= int(x) < 2**63 else None
        if t is None:
            raise OverflowError("plaintext integer operand does not fit in 64 bits")
    elif isinstance(x, numbers.Real):
        t = torch.tensor(float(x), dtype=torch.float64)
    elif isinstance(x, (np.ndarray, np.generic)):
        if x.dtype.kind not in "biuf":
            return None
        t = torch.from_numpy(np.array(x, dtype=np.float64 if x.dtype.kind == "f" else np.int64))
    else:
        return None
    if t.is_complex():
        raise TypeError("complex plaintext operands are not supported")
    return t.cpu()


def _is_integral_dtype(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex())


def _check_finite(t: torch.Tensor) -> None:
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError("cannot encode NaN or infinite values")


def quantize(t: torch.Tensor, scale: int) -> list[int]:
    """``[round(v * 2^scale) for v in t.flatten()]`` exactly (half to even), as Python ints."""
    if _is_integral_dtype(t):
        ints = [int(v) for v in t.reshape(-1).to(torch.int64).tolist()]
        return ints if scale == 0 else [v << scale for v in ints]
    t = t.to(torch.float64).reshape(-1)
    _check_finite(t)
    if t.numel() == 0:
        return []
    scaled = torch.ldexp(t, torch.tensor(float(scale), dtype=torch.float64)) if scale < 1000 else None
    if scaled is not None and bool(torch.isfinite(scaled).all()) and float(scaled.abs().max()) < 2.0**62:
        return [int(v) for v in torch.round(scaled).to(torch.int64).tolist()]
    return [_round_ldexp(v, scale) for v in t.tolist()]


def _round_ldexp(v: float, scale: int) -> int:
    """``round(v * 2^scale)`` exactly, also where the product overflows a float."""
    try:
        return int(round(math.ldexp(v, scale)))
    except OverflowError:
        return _exact_round(v, scale)


def _exact_round(v: float, scale: int) -> int:
    num, den = v.as_integer_ratio()
    x = num << scale
    q, r = divmod(x, den)
    if 2 * r > den or (2 * r == den and q % 2):
        q += 1
    return q


def plain_scale(t: torch.Tensor, plain_bits: int = DEFAULT_PLAIN_BITS) -> int:
    """Scale for a plaintext operand: the smallest exact one, else ``plain_bits`` significant bits.

    Never negative; integers always get scale 0.
    """
    if plain_bits < 1:
        raise ValueError("plain_bits must be at least 1")
    if _is_integral_dtype(t) or t.numel() == 0:
        return 0
    t = t.to(torch.float64)
    _check_finite(t)
    amax = float(t.abs().max())
    if amax == 0.0:
        return 0
    _, e = math.frexp(amax)  # amax < 2^e
    target = min(MAX_PLAIN_SCALE, max(0, plain_bits - e))
    for s in range(0, target):
        if bool((torch.ldexp(t, torch.tensor(float(s), dtype=torch.float64)).frac() == 0).all()):
            return s
    return target


def dequantize(ints: list[int], scale: int) -> torch.Tensor:
    """Flat float64 tensor of ``m / 2^scale`` for each integer ``m`` (correctly rounded to ~60 bits)."""
    out = []
    for m in ints:
        m = int(m)
        b = abs(m).bit_length()
        if b > 60:
            shift = b - 60
            out.append(math.ldexp(float(m >> shift if m >= 0 else -((-m) >> shift)), shift - scale))
        else:
            out.append(math.ldexp(float(m), -scale))
    return torch.tensor(out, dtype=torch.float64)
