"""Packed fixed-point encoding for exchange and aggregation (many values per plaintext).

Each value ``v`` becomes ``m = round(v * 2^SCALE)`` (integers: ``m = v``), must satisfy
``|m| < 2^MAG_BITS``, and is stored offset as ``u = (m + 2^MAG_BITS) * weight`` in a slot of
``SLOT_BITS`` bits. A slot has room for a weighted sum over clients with total weight at most
:data:`MAX_TOTAL_WEIGHT` (``u < 2^(MAG_BITS + 1) * 2^WEIGHT_BITS = 2^SLOT_BITS``), so no sum ever
carries into the next slot. ``(n_bits - 2) // SLOT_BITS`` slots share one plaintext (33 for a
2048-bit key: 15.5 bytes per value on the wire). Quantisation error is at most ``2^-25``
(about 3e-8) per value, well inside 1e-6.
"""

from __future__ import annotations

import numpy as np

from torchhefl.secure.encoding import STATE_DICT_FIXED_POINT

__all__ = ["MAG_BITS", "MAX_ABS_VALUE", "MAX_TOTAL_WEIGHT", "SCALE", "SLOT_BITS", "WEIGHT_BITS", "pack", "slots_per_plaintext", "unpack"]

SCALE = STATE_DICT_FIXED_POINT.scale_bits  # 24
"""Bits after the binary point of packed floating values (resolution 2^-24)."""
MAG_BITS = STATE_DICT_FIXED_POINT.mag_bits  # 37
"""``|m| < 2^37``: floating values need ``|v| < 2^13 = 8192``; integer values ``|v| < 2^37``."""
WEIGHT_BITS = STATE_DICT_FIXED_POINT.headroom_bits  # 24
MAX_TOTAL_WEIGHT = STATE_DICT_FIXED_POINT.max_total_weight
"""Largest total weight (e.g. sum of sample counts over clients) a packed aggregate can hold."""
SLOT_BITS = STATE_DICT_FIXED_POINT.slot_bits  # 62
MAX_ABS_VALUE = STATE_DICT_FIXED_POINT.max_abs_value


def slots_per_plaintext(n_bits: int) -> int:
    """Slots per plaintext for a modulus of ``n_bits`` bits (the packed integer stays below 2^(n_bits-2))."""
    return (n_bits - 2) // SLOT_BITS


def _row_bytes(slots: int) -> int:
    return (slots * SLOT_BITS + 7) // 8


def pack(u: np.ndarray, slots: int) -> list[int]:
    """Pack non-negative integers ``u < 2^SLOT_BITS`` (uint64) into plaintexts of ``slots`` slots each."""
    u = np.ascontiguousarray(u, dtype="<u8")
    count = -(-len(u) // slots) if len(u) else 0
    padded = np.zeros(count * slots, dtype="<u8")
    padded[: len(u)] = u
    bits = np.unpackbits(padded.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")[:, :SLOT_BITS]
    bits = bits.reshape(count, slots * SLOT_BITS)
    rb = _row_bytes(slots)
    row = np.zeros((count, rb * 8), dtype=np.uint8)
    row[:, : slots * SLOT_BITS] = bits
    raw = np.packbits(row, axis=1, bitorder="little")
    return [int.from_bytes(raw[i].tobytes(), "little") for i in range(count)]


def unpack(plaintexts: list[int], slots: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``count`` slot values as uint64.

    Raises ``OverflowError`` if a plaintext has bits beyond its slots (overflow or corruption).
    """
    rb = _row_bytes(slots)
    limit = 1 << (slots * SLOT_BITS)
    for p in plaintexts:
        if not 0 <= p < limit:
            raise OverflowError("a packed plaintext exceeds its slots: the aggregate overflowed or is corrupt")
    if not plaintexts:
        return np.zeros(0, dtype=np.uint64)
    raw = np.frombuffer(b"".join(int(p).to_bytes(rb, "little") for p in plaintexts), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(len(plaintexts), rb), axis=1, bitorder="little")[:, : slots * SLOT_BITS]
    bits = bits.reshape(-1, SLOT_BITS)
    full = np.zeros((bits.shape[0], 64), dtype=np.uint8)
    full[:, :SLOT_BITS] = bits
    return np.packbits(full, axis=1, bitorder="little").view("<u8").reshape(-1)[:count].astype(np.uint64)
