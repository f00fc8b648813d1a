"""Packed fixed-point encoding for exchange and aggregation (many values per plaintext).

Each value ``v`` becomes ``m = round(v * 2^SCALE)`` (integers: ``m = v``), must satisfy
``|m| < 2^MAG_BITS``, and is stored offset as ``u = (m + 2^MAG_BITS) * weight`` in a slot of
``SLOT_BITS`` bits. A slot has room for a weighted sum over clients with total weight at most
:data:`MAX_TOTAL_WEIGHT` (``u < 2^(MAG_BITS + 1) * 2^WEIGHT_BITS = 2^SLOT_BITS``), so no sum ever
carries into the next slot. ``(n_bits - 2) // SLOT_BITS`` slots share one plaintext (33 for a
2048-bit key: 15.5 bytes per value on the wire). Quantisation error is at most ``2^-25``
(about 3e-8) per value, well inside 1e-6.

That is the default. :func:`precision` gives narrower slots for what a model needs: fewer bits
after the binary point, a smaller range, and headroom only for the total weight the sites can
reach. Every function here takes the slot width (``slot_bits``) of the encoding in use.
"""

from __future__ import annotations

import numpy as np

from torchhefl.secure.encoding import STATE_DICT_FIXED_POINT, FixedPoint

__all__ = [
    "MAG_BITS", "MAX_ABS_VALUE", "MAX_SLOT_BITS", "MAX_TOTAL_WEIGHT", "ROUNDINGS", "SCALE", "SLOT_BITS", "WEIGHT_BITS",
    "check_encoding", "pack", "precision", "slots_per_plaintext", "unpack",
]

SCALE = STATE_DICT_FIXED_POINT.scale_bits  # 24
"""Bits after the binary point of packed floating values (resolution 2^-24)."""
MAG_BITS = STATE_DICT_FIXED_POINT.mag_bits  # 37
"""``|m| < 2^37``: floating values need ``|v| < 2^13 = 8192``; integer values ``|v| < 2^37``."""
WEIGHT_BITS = STATE_DICT_FIXED_POINT.headroom_bits  # 24
MAX_TOTAL_WEIGHT = STATE_DICT_FIXED_POINT.max_total_weight
"""Largest total weight (e.g. sum of sample counts over clients) a packed aggregate can hold."""
SLOT_BITS = STATE_DICT_FIXED_POINT.slot_bits  # 62
MAX_ABS_VALUE = STATE_DICT_FIXED_POINT.max_abs_value
MAX_SLOT_BITS = 63
"""A slot's value and every weighted sum of it stay below 2^63: uint64 arithmetic, no carry."""
ROUNDINGS = ("nearest", "stochastic")
"""How floating values are rounded to the resolution: to the nearest step, or stochastically (unbiased)."""


def check_encoding(fp: FixedPoint) -> FixedPoint:
    """``fp`` if it is a packed encoding this module can hold, else ``ValueError`` saying why."""
    if not isinstance(fp, FixedPoint):
        raise TypeError(f"precision must be a FixedPoint (torchhefl.secure.packing.precision(...)), not {type(fp).__name__}")
    if not (0 <= fp.scale_bits <= 52 and 0 <= fp.value_bits and 1 <= fp.headroom_bits and fp.slot_bits <= MAX_SLOT_BITS):
        raise ValueError(
            f"a packed encoding needs 0 <= scale_bits <= 52, value_bits >= 0, headroom_bits >= 1 and slots of at most "
            f"{MAX_SLOT_BITS} bits, got scale_bits={fp.scale_bits}, value_bits={fp.value_bits}, "
            f"headroom_bits={fp.headroom_bits} ({fp.slot_bits}-bit slots)"
        )
    return fp


def precision(*, resolution: float = 2.0**-24, max_abs: float = 8192.0, max_total_weight: int = MAX_TOTAL_WEIGHT) -> FixedPoint:
    """The narrowest packed encoding with at least this resolution, range and weight headroom.

    Args:
        resolution: largest step between representable values: rounding to nearest errs by at
            most half of it (``2^-21`` for ``resolution=1e-6``); stochastic rounding by less than it.
        max_abs: floating values (and integers) must have ``|v| <`` the next power of two.
        max_total_weight: the largest total weight of any sum (e.g. the sites' sample counts added up).

    ``precision(resolution=1e-6, max_abs=4, max_total_weight=1023)`` has 33-bit slots: 62 slots per
    2048-bit ciphertext, 8.3 bytes per value instead of the default's 15.5.
    """
    if not (0 < resolution <= 1 and max_abs > 0 and isinstance(max_total_weight, int) and max_total_weight >= 1):
        raise ValueError(
            f"need 0 < resolution <= 1, max_abs > 0 and an integer max_total_weight >= 1, got "
            f"{resolution!r}, {max_abs!r}, {max_total_weight!r}"
        )
    scale_bits = max(0, int(np.ceil(-np.log2(resolution) - 1e-12)))
    value_bits = max(0, int(np.ceil(np.log2(max_abs) - 1e-12)))
    headroom_bits = max(1, int(max_total_weight).bit_length())
    return check_encoding(FixedPoint(scale_bits=scale_bits, value_bits=value_bits, headroom_bits=headroom_bits))


def slots_per_plaintext(n_bits: int, slot_bits: int = SLOT_BITS) -> int:
    """Slots per plaintext for a modulus of ``n_bits`` bits (the packed integer stays below 2^(n_bits-2))."""
    return (n_bits - 2) // slot_bits


def _row_bytes(slots: int, slot_bits: int) -> int:
    return (slots * slot_bits + 7) // 8


def pack(u: np.ndarray, slots: int, slot_bits: int = SLOT_BITS) -> list[int]:
    """Pack non-negative integers ``u < 2^slot_bits`` (uint64) into plaintexts of ``slots`` slots each."""
    u = np.ascontiguousarray(u, dtype="<u8")
    count = -(-len(u) // slots) if len(u) else 0
    padded = np.zeros(count * slots, dtype="<u8")
    padded[: len(u)] = u
    bits = np.unpackbits(padded.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")[:, :slot_bits]
    bits = bits.reshape(count, slots * slot_bits)
    rb = _row_bytes(slots, slot_bits)
    row = np.zeros((count, rb * 8), dtype=np.uint8)
    row[:, : slots * slot_bits] = bits
    raw = np.packbits(row, axis=1, bitorder="little")
    return [int.from_bytes(raw[i].tobytes(), "little") for i in range(count)]


def unpack(plaintexts: list[int], slots: int, count: int, slot_bits: int = SLOT_BITS) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``count`` slot values as uint64.

    Raises ``OverflowError`` if a plaintext has bits beyond its slots (overflow or corruption).
    """
    rb = _row_bytes(slots, slot_bits)
    limit = 1 << (slots * slot_bits)
    for p in plaintexts:
        if not 0 <= p < limit:
            raise OverflowError("a packed plaintext exceeds its slots: the aggregate overflowed or is corrupt")
    if not plaintexts:
        return np.zeros(0, dtype=np.uint64)
    raw = np.frombuffer(b"".join(int(p).to_bytes(rb, "little") for p in plaintexts), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(len(plaintexts), rb), axis=1, bitorder="little")[:, : slots * slot_bits]
    bits = bits.reshape(-1, slot_bits)
    full = np.zeros((bits.shape[0], 64), dtype=np.uint8)
    full[:, :slot_bits] = bits
    return np.packbits(full, axis=1, bitorder="little").view("<u8").reshape(-1)[:count].astype(np.uint64)
