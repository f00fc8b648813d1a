"""The typed result of one federated round, which also reads as the mapping of ``metrics.csv``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["RoundResult"]


@dataclass(eq=False)
class RoundResult(Mapping):
    """What one round did, as the server measured it.

    Also a read-only mapping, by the names of ``metrics.csv`` and the recorder: ``result["round"]``,
    ``result["test_accuracy"]`` (each test metric as ``test_<name>``), ``result["refreshes"]`` (each
    follow-up count), ``"epsilon" in result`` (only under DP).
    """

    #: the round's number
    round: int
    #: the clients whose updates were aggregated, in reply order
    clients: list[str]
    #: the selected clients left out, in selection order
    dropped: list[str]
    #: the reason each dropped client's reply was refused (those refused rather than silent)
    rejected: dict[str, str]
    #: how many times the round was tried
    attempts: int
    #: each aggregated client's reported training loss (NaN where it cannot see it)
    train_loss: dict[str, float]
    #: the global model's test metrics after the round: ``accuracy``, ``loss``, ``auc``, ``f1``
    test: dict[str, float] = field(default_factory=dict)
    #: seconds per phase (the server's own, and those of sites that share theirs)
    seconds: dict[str, float] = field(default_factory=dict)
    #: bytes the transport carried up (client to server) and down in the round
    bytes_up: int = 0
    bytes_down: int = 0
    #: the round's wall time in seconds
    time: float = 0.0
    #: the most privacy any aggregated client reports having spent (``None`` without DP)
    epsilon: float | None = None
    #: follow-up requests served in the round, by the exchange's ``counted_as`` name (``refreshes``)
    served: dict[str, int] = field(default_factory=dict)

    def keys(self) -> list[str]:  # type: ignore[override]
        """The mapping's names, in the order of the round's fields."""
        out = ["round", "clients", "dropped", "rejected", "attempts", "train_loss"]
        if self.epsilon is not None:
            out.append("epsilon")
        out += list(self.served)
        out += [f"test_{k}" for k in self.test]
        return out + ["seconds", "bytes_up", "bytes_down", "time"]

    def __getitem__(self, key: str):
        if key in self.served:
            return self.served[key]
        if key.startswith("test_") and key[5:] in self.test:
            return self.test[key[5:]]
        if key in _RESULT_FIELDS and not (key == "epsilon" and self.epsilon is None):
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def to_dict(self) -> dict:
        """The result as a plain dict (the mapping's items)."""
        return {k: self[k] for k in self.keys()}


_RESULT_FIELDS = {"round", "clients", "dropped", "rejected", "attempts", "train_loss", "seconds", "bytes_up",
                  "bytes_down", "time", "epsilon"}
