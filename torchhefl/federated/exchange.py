"""How parameters and statistics cross the wire in each mode.

An exchange has a server side and a client side. The server side holds the global parameters in
whatever form its mode allows (plaintext, or ciphertexts it cannot read), turns them into the
payload sent to clients, and combines the clients' payloads. The client side turns a payload into
a state_dict it can train, and its trained state into a payload. The round loop in
:mod:`torchhefl.federated.server` is the same for every mode.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated.messages import decode_state, encode_state
from torchhefl.federated.strategies import Strategy

__all__ = ["ClientExchange", "PlainClientExchange", "PlainServerExchange", "ServerExchange", "Timer"]


class Timer:
    """Accumulates seconds per phase (``encrypt``, ``aggregate``, ``decrypt``, ...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def phase(self, name: str) -> "_Phase":
        return _Phase(self, name)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


class _Phase:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timer.seconds[self.name] = self.timer.seconds.get(self.name, 0.0) + time.perf_counter() - self.start


class ServerExchange:
    """Server side of an exchange. Subclasses implement the hooks below."""

    #: whether a round must be re-run when a selected client does not answer (masked aggregation,
    #: where the survivors' masks do not cancel without every participant)
    needs_every_participant: bool = False

    def __init__(self) -> None:
        self.timer = Timer()

    def setup(self, server) -> None:
        """Once before standardisation; ``server.broadcast`` reaches the clients. Default: nothing."""

    def global_payload(self) -> bytes:
        """The bytes sent to clients at the start of a round (and for evaluation)."""
        raise NotImplementedError

    def aggregate(self, payloads: Sequence[bytes], strategy: Strategy) -> None:
        """Replace the global parameters with the strategy's combination of client payloads."""
        raise NotImplementedError

    def sum_statistics(self, payloads: Sequence[bytes]) -> bytes:
        """Sum clients' statistics payloads (counts, sums) into one payload for the clients."""
        raise NotImplementedError

    def read_statistics(self, payload: bytes) -> dict[str, np.ndarray] | None:
        """The summed statistics, if the server may read them; else ``None``."""
        return None

    def global_state(self) -> OrderedDict | None:
        """The global state_dict, if the server may read it; else ``None``."""
        return None


class ClientExchange:
    """Client side of an exchange."""

    def __init__(self) -> None:
        self.timer = Timer()

    def read_global(self, payload: bytes) -> OrderedDict:
        raise NotImplementedError

    def write_update(self, state: Mapping[str, torch.Tensor], num_examples: int) -> bytes:
        raise NotImplementedError

    def write_statistics(self, stats: Mapping[str, np.ndarray]) -> bytes:
        raise NotImplementedError

    def read_statistics(self, payload: bytes) -> dict[str, np.ndarray]:
        raise NotImplementedError


class PlainServerExchange(ServerExchange):
    """The paper's "directly pass" scheme: parameters and statistics travel in plaintext."""

    def __init__(self, initial_state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.state = OrderedDict((k, v.detach().clone()) for k, v in initial_state.items())

    def global_payload(self) -> bytes:
        return encode_state(self.state)

    def aggregate(self, payloads: Sequence[bytes], strategy: Strategy) -> None:
        updates = []
        for blob in payloads:
            state, meta = decode_state(blob, expected=self.state)
            n = meta.get("num_examples")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise MalformedMessageError(f"update carries an invalid num_examples {n!r}")
            updates.append(({k: v.numpy() for k, v in state.items()}, n))
        with self.timer.phase("aggregate"):
            combined = strategy.aggregate(updates)
        self.state = OrderedDict(
            (k, torch.as_tensor(combined[k]).to(ref.dtype)) for k, ref in self.state.items()
        )

    def sum_statistics(self, payloads: Sequence[bytes]) -> bytes:
        total: dict[str, np.ndarray] | None = None
        for blob in payloads:
            stats, _ = decode_state(blob, expected=None if total is None else {k: torch.as_tensor(v) for k, v in total.items()})
            arrays = {k: v.to(torch.float64).numpy() for k, v in stats.items()}
            total = arrays if total is None else {k: total[k] + arrays[k] for k in total}
        if total is None:
            raise MalformedMessageError("no statistics to sum")
        return encode_state(total)

    def read_statistics(self, payload: bytes) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in decode_state(payload)[0].items()}

    def global_state(self) -> OrderedDict:
        return OrderedDict((k, v.clone()) for k, v in self.state.items())


class PlainClientExchange(ClientExchange):
    """Client side of the plaintext exchange."""

    def read_global(self, payload: bytes) -> OrderedDict:
        return decode_state(payload)[0]

    def write_update(self, state: Mapping[str, torch.Tensor], num_examples: int) -> bytes:
        return encode_state(state, {"num_examples": int(num_examples)})

    def write_statistics(self, stats: Mapping[str, np.ndarray]) -> bytes:
        return encode_state({k: np.asarray(v, dtype=np.float64) for k, v in stats.items()})

    def read_statistics(self, payload: bytes) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in decode_state(payload)[0].items()}
