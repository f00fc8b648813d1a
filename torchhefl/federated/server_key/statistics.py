"""The summed standardisation statistics as both roles read them (plaintext, after unmasking)."""

from __future__ import annotations

import numpy as np

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated.messages import decode_state

__all__ = ["read_statistics_sum"]


def read_statistics_sum(payload: bytes) -> dict[str, np.ndarray]:
    """The ``count``, ``sum`` and ``sumsq`` arrays of the server's summed statistics payload."""
    state, _ = decode_state(payload)
    if set(state) != {"count", "sum", "sumsq"}:
        raise MalformedMessageError(f"statistics payload holds {sorted(state)}, expected count, sum and sumsq")
    return {k: v.numpy() for k, v in state.items()}
