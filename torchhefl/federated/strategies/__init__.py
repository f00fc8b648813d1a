"""Federated strategies, picked by name."""

from __future__ import annotations

from torchhefl.exceptions import ConfigError
from torchhefl.federated.strategies.base import Strategy, Update
from torchhefl.federated.strategies.fedavg import FedAvg, weighted_mean
from torchhefl.federated.strategies.fedprox import FedProx

__all__ = ["STRATEGIES", "FedAvg", "FedProx", "Strategy", "Update", "get_strategy", "weighted_mean"]

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx}


def get_strategy(name: str, *, mu: float = 0.01) -> Strategy:
    """The strategy registered as ``name`` (``fedavg`` or ``fedprox``)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown aggregator {name!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    return FedProx(mu=mu) if name == "fedprox" else STRATEGIES[name]()
