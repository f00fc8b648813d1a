"""The strategy interface: what the server asks of the clients, and how it combines their answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

__all__ = ["Strategy", "Update"]

Update = tuple[dict[str, np.ndarray], int]
"""One client's result: its parameters by name and the number of examples it trained on."""


class Strategy(ABC):
    """A federated optimisation strategy.

    Hooks:
        configure_fit: the per-round settings sent to every selected client.
        aggregate: combine plaintext client parameters into the next global parameters.
        weighs_by_samples: whether ``aggregate`` weights clients by their example counts; the
            encrypted paths reproduce that weighting without the server learning the counts.
    """

    name: str = "strategy"
    weighs_by_samples: bool = True

    def configure_fit(self, server_round: int) -> dict:
        return {"proximal_mu": 0.0}

    @abstractmethod
    def aggregate(self, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        """Combine ``(parameters, num_examples)`` pairs into new global parameters."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
