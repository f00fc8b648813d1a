"""FedProx: FedAvg's aggregation, with a proximal term ``mu/2 ||w - w_global||^2`` in local training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from torchhefl.exceptions import ConfigError
from torchhefl.federated.strategies.base import Strategy, Update
from torchhefl.federated.strategies.fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(Strategy):
    """FedProx (Li et al.): wraps an aggregating strategy and asks clients for a proximal term.

    Args:
        mu: the proximal coefficient, >= 0. Default: 0.01.
        base: the strategy whose aggregation is used. Default: :class:`FedAvg`.
    """

    name = "fedprox"

    def __init__(self, mu: float = 0.01, base: Strategy | None = None) -> None:
        if not mu >= 0:
            raise ConfigError(f"FedProx mu must be non-negative, got {mu}")
        self.mu = float(mu)
        self.base = base if base is not None else FedAvg()
        self.weighs_by_samples = self.base.weighs_by_samples

    def configure_fit(self, server_round: int) -> dict:
        return {**self.base.configure_fit(server_round), "proximal_mu": self.mu}

    def aggregate(self, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        return self.base.aggregate(updates)

    def __repr__(self) -> str:
        return f"FedProx(mu={self.mu}, base={self.base!r})"
