"""The standardisation statistics: the signed set-up keys that mask them, and their sum as both
roles read it (plaintext, after unmasking)."""

from __future__ import annotations

import numpy as np

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated.messages import decode_state
from torchhefl.secure.identity import signed_bytes

__all__ = ["SETUP_KEY_SIGNED", "read_statistics_sum", "setup_key_bytes"]

SETUP_KEY_SIGNED = "torchhefl/hem/setup-key/v1"


def setup_key_bytes(context: str, cid: str, x25519: bytes) -> bytes:
    """What a site signs with its set-up X25519 key (the statistics' pairwise masks): the key, its
    name and the run (``context``, the fingerprint of the server's Paillier key)."""
    return signed_bytes(SETUP_KEY_SIGNED, run=context, cid=cid, x25519=x25519.hex())


def read_statistics_sum(payload: bytes) -> dict[str, np.ndarray]:
    """The ``count``, ``sum`` and ``sumsq`` arrays of the server's summed statistics payload."""
    state, _ = decode_state(payload)
    if set(state) != {"count", "sum", "sumsq"}:
        raise MalformedMessageError(f"statistics payload holds {sorted(state)}, expected count, sum and sumsq")
    return {k: v.numpy() for k, v in state.items()}
