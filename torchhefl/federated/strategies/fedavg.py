"""FedAvg: the sample-weighted mean of the clients' parameters (the paper's Eq 14)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from torchhefl.exceptions import ProtocolError
from torchhefl.federated.strategies.base import Strategy, Update

__all__ = ["FedAvg", "weighted_mean"]


def weighted_mean(updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """``sum_k n_k w_k / sum_k n_k`` per parameter, in float64.

    Computed as ``sum_k (n_k / sum n) w_k``: every partial sum is bounded by the largest ``|w_k|``,
    so finite updates give a finite mean whatever the counts."""
    if not updates:
        raise ProtocolError("no client updates to aggregate")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ProtocolError("client updates carry no examples")
    names = list(updates[0][0])
    out = {}
    for name in names:
        acc = np.zeros_like(np.asarray(updates[0][0][name], dtype=np.float64))
        for params, n in updates:
            acc += np.asarray(params[name], dtype=np.float64) * (n / total)
        out[name] = acc
    return out


class FedAvg(Strategy):
    """Federated averaging (McMahan et al.), weighted by each client's number of examples."""

    name = "fedavg"

    def aggregate(self, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        return weighted_mean(updates)
