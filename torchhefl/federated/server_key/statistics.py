"""The set-up statistics (imputation, median histograms, standardisation; see
:mod:`torchhefl.federated.statistics`): the signed set-up keys that mask them, how a vector is
laid out in masked plaintexts, and the sum as both roles read it (plaintext, after unmasking).

Each value is one masked plaintext at :data:`STAT_SCALE` fractional bits, except the median
histograms: their whole, non-negative counts are packed :data:`COUNT_SLOT_BITS` bits a slot, many
slots a plaintext (a 1026-bin histogram is 17 ciphertexts at 2048 bits instead of 1026); the
masks are uniform modulo ``n`` and cancel in the sum, and slot sums of fewer than 2^32 rows do
not carry.
"""

from __future__ import annotations

import numpy as np
import torch

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated.messages import decode_state
from torchhefl.federated.statistics import FIELDS, STANDARDIZE
from torchhefl.secure.identity import signed_bytes

__all__ = [
    "COUNT_SLOT_BITS",
    "SETUP_KEY_SIGNED",
    "mask_purpose",
    "pack_counts",
    "packed_length",
    "read_statistics_sum",
    "setup_key_bytes",
    "unpack_counts",
]

#: bits of one packed histogram count
COUNT_SLOT_BITS = 32

SETUP_KEY_SIGNED = "torchhefl/hem/setup-key/v1"


def setup_key_bytes(context: str, cid: str, x25519: bytes) -> bytes:
    """What a site signs with its set-up X25519 key (the statistics' pairwise masks): the key, its
    name and the run (``context``, the fingerprint of the server's Paillier key)."""
    return signed_bytes(SETUP_KEY_SIGNED, run=context, cid=cid, x25519=x25519.hex())


def mask_purpose(purpose: str) -> str:
    """The purpose in the mask label of one statistics pass (each pass its own masks)."""
    return "stats" if purpose == STANDARDIZE else f"stats/{purpose}"


def _slots(key_bits: int) -> int:
    return (key_bits - 2) // COUNT_SLOT_BITS


def pack_counts(values: np.ndarray, key_bits: int) -> list[int]:
    """Whole counts in ``[0, 2^COUNT_SLOT_BITS)`` packed into plaintexts below ``2^(key_bits - 2)``."""
    counts = [int(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    if any(c < 0 or c >> COUNT_SLOT_BITS for c in counts) or not np.array_equal(np.round(values), values):
        raise ValueError("packed counts must be whole numbers in [0, 2^32)")
    k = _slots(key_bits)
    return [sum(c << (COUNT_SLOT_BITS * j) for j, c in enumerate(counts[i : i + k])) for i in range(0, len(counts), k)]


def packed_length(length: int, key_bits: int) -> int:
    """How many plaintexts :func:`pack_counts` makes of ``length`` counts."""
    return -(-length // _slots(key_bits))


def unpack_counts(ints: list[int], length: int, key_bits: int) -> np.ndarray:
    """The ``length`` counts of summed :func:`pack_counts` plaintexts (refused if one is out of range)."""
    k, mask = _slots(key_bits), (1 << COUNT_SLOT_BITS) - 1
    out = []
    for p in ints:
        if p < 0 or p >> (COUNT_SLOT_BITS * k):
            raise MalformedMessageError("packed counts out of range: a site broke the protocol")
        out += [(p >> (COUNT_SLOT_BITS * j)) & mask for j in range(k)]
    if len(out) < length or any(out[length:]):
        raise MalformedMessageError("packed counts of the wrong length: a site broke the protocol")
    return np.array(out[:length], dtype=np.float64)


def read_statistics_sum(payload: bytes, purpose: str = STANDARDIZE) -> dict[str, np.ndarray]:
    """The arrays of the server's summed statistics payload of ``purpose`` (its fields)."""
    state, _ = decode_state(payload)
    if set(state) != set(FIELDS[purpose]):
        raise MalformedMessageError(f"{purpose} statistics payload holds {sorted(state)}, expected {', '.join(FIELDS[purpose])}")
    return {k: v.to(torch.float64).numpy() for k, v in state.items()}
