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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchhefl.data import Moments, Standardizer
from torchhefl.exceptions import ConfigError, DataError, MalformedMessageError
from torchhefl.federated.messages import decode_state, encode_state
from torchhefl.federated.strategies import Strategy
from torchhefl.federated.statistics import FIELDS, STANDARDIZE, from_vector, to_vector
from torchhefl.secure.identity import Roster, SiteIdentity

__all__ = [
    "ClientExchange",
    "FollowUp",
    "PlainClientExchange",
    "PlainServerExchange",
    "ServerExchange",
    "Timer",
    "standardizer_from_statistics",
]

_STAT_NAMES = ("count", "sum", "sumsq")
_MAX_ROWS = 1 << 53  # row counts travel as float64, exact below this


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


@dataclass(frozen=True)
class FollowUp:
    """A request a client may answer a fit request with, before its fit reply, and how it is served.

    The server checks the envelope of each such request (size, sender, this round and attempt, the
    ``seq``-th of its kind in this fit, at most the server's ``max_follow_ups``), calls ``serve``
    with its payload, and sends ``serve``'s bytes back as a ``reply_kind`` request with the same
    ``round``, ``attempt`` and ``seq``; the client then answers that, and so on until its fit reply.
    """

    #: the kind of the request the server sends back
    reply_kind: str
    #: the payload of the client's request in, the payload of the answer out (raises client faults only)
    serve: Callable[[bytes], bytes]
    #: what one such request is called in error messages ("refresh request")
    what: str
    #: the round result's field counting the requests of this kind served in the round (``None``: not reported)
    counted_as: str | None = None


class ServerExchange:
    """Server side of an exchange. Subclasses implement the hooks below."""

    #: whether a site uploads at most once per round (secure aggregation): the server then never
    #: tries a round again once its fit requests went out
    uploads_once: bool = False

    def __init__(self) -> None:
        self.timer = Timer()
        #: the federation's sites and their public signing keys, where the mode's sites sign
        self.roster: Roster | None = None

    def set_roster(self, roster: Roster) -> None:
        """Take the roster of the sites (agreed out of band). Default: keep it."""
        self.roster = roster

    @property
    def follow_ups(self) -> Mapping[str, FollowUp]:
        """The mid-fit requests this exchange serves, by the kind a client sends (e.g. a mode whose
        server holds the key serves refreshes). Default: none."""
        return {}

    def setup(self, server) -> None:
        """Once before standardisation; ``server.broadcast`` reaches the clients. Default: nothing."""

    def global_payload(self) -> bytes:
        """The bytes sent to clients at the start of a round (and for evaluation)."""
        raise NotImplementedError

    def open_round(self, server, server_round: int, selected: list[str]) -> list[str]:
        """Before the fit requests of ``server_round``: the exchange's own steps (e.g. a key
        exchange); the sites to ask to train. Default: ``selected``."""
        return selected

    def fit_meta(self, cid: str) -> dict:
        """Extra fields of ``cid``'s fit request this round (e.g. what other sites sealed for it). Default: none."""
        return {}

    def close_round(self, server, server_round: int, uploaded: list[str]) -> None:
        """After the uploads of ``server_round`` arrived from ``uploaded`` and before :meth:`aggregate`
        (e.g. unmasking). Raises :class:`ProtocolError` if the round cannot complete. Default: nothing."""

    def check_update(
        self,
        payload: bytes,
        *,
        server_round: int | None = None,
        attempt: int | None = None,
        participants: Sequence[str] | None = None,
    ) -> Any:
        """Parse and check one client's update before anything is combined; returns what
        :meth:`aggregate` takes for it.

        Called once per client reply, so that one bad update excludes only its sender. ``server_round``,
        ``attempt`` and ``participants`` describe the request the update answers (for exchanges whose
        payloads are bound to them). Raises :class:`MalformedMessageError` or :class:`KeyMismatchError`
        for an update that must not be aggregated. Default: the bytes unchanged.
        """
        return payload

    def aggregate(self, payloads: Sequence[Any], strategy: Strategy) -> None:
        """Replace the global parameters with the strategy's combination of checked client updates
        (what :meth:`check_update` returned)."""
        raise NotImplementedError

    def check_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> bytes:
        """Check one client's statistics payload of ``purpose`` (one of
        :data:`~torchhefl.federated.statistics.PURPOSES`) before summing (same contract as
        :meth:`check_update`). Default: the bytes unchanged."""
        return payload

    def sum_statistics(self, payloads: Sequence[bytes], *, purpose: str = STANDARDIZE) -> bytes:
        """Sum clients' statistics payloads of ``purpose`` (counts, sums) into one payload for the clients."""
        raise NotImplementedError

    def read_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> dict[str, np.ndarray] | None:
        """The summed statistics of ``purpose`` (its :data:`~torchhefl.federated.statistics.FIELDS`),
        if the server may read them; else ``None``."""
        return None

    def global_state(self) -> OrderedDict | None:
        """The global state_dict, if the server may read it; else ``None``."""
        return None

    def global_checkpoint(self) -> bytes:
        """The global parameters as the server holds them, as wire bytes for a checkpoint.

        Default: the readable global state_dict as a ``plain_state`` message. An exchange whose server
        cannot read the model stores what it holds instead (ciphertexts); never a private key.
        """
        state = self.global_state()
        if state is None:
            raise NotImplementedError(f"{type(self).__name__} does not say how to checkpoint its global model")
        return encode_state(state)

    def restore_global(self, blob: bytes) -> None:
        """Replace the global parameters with those of :meth:`global_checkpoint` bytes (checked)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be restored from a checkpoint")


class ClientExchange:
    """Client side of an exchange.

    Attributes:
        identity: this site's long-term signing key (:class:`~torchhefl.secure.identity.SiteIdentity`),
            in the modes whose sites sign what they send; ``None`` otherwise.
        roster: the federation's sites and their public signing keys (agreed out of band), against
            which the site checks every peer's signature; ``None`` where nothing is signed.
    """

    def __init__(self) -> None:
        self.timer = Timer()
        self.identity: SiteIdentity | None = None
        self.roster: Roster | None = None

    def set_identity(self, identity: SiteIdentity, roster: Roster) -> None:
        """Give this site its signing key and the roster; the roster must list this very key."""
        if identity.cid not in roster or roster.public_bytes(identity.cid) != identity.public_bytes():
            raise ConfigError(f"the roster (fingerprint {roster.fingerprint[:16]}) does not list site {identity.cid}'s signing key")
        self.identity, self.roster = identity, roster

    def set_initial_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take the public initial model this site starts from (drawn from the run's seed, as every
        party draws it), against which an exchange may check the first global model it is sent.
        Called by :class:`~torchhefl.federated.Client` when it is built. Default: nothing."""

    def read_global(self, payload: bytes) -> OrderedDict:
        raise NotImplementedError

    def read_global_after(self, payload: bytes, after_round: int) -> OrderedDict:
        """The global model as it stands after round ``after_round`` (0: the initial model), from a
        request that says so: a fit request of round ``r`` carries the model after round ``r - 1``,
        an evaluation request of round ``r`` the model after round ``r``. An exchange whose global
        models prove which round's uploads they combine checks that here, and refuses others.
        Default: :meth:`read_global`."""
        return self.read_global(payload)

    def write_update(self, state: Mapping[str, torch.Tensor], num_examples: int) -> bytes:
        raise NotImplementedError

    def write_update_for(
        self, state: Mapping[str, torch.Tensor], num_examples: int, *, server_round: int, attempt: int
    ) -> bytes:
        """The update answering the fit request of ``server_round`` and ``attempt`` (for an exchange
        that binds its uploads to the request, e.g. by signing them). Default: :meth:`write_update`."""
        return self.write_update(state, num_examples)

    def write_statistics(self, stats: Mapping[str, np.ndarray], *, purpose: str = STANDARDIZE) -> bytes:
        """This site's statistics of ``purpose``, named as its
        :data:`~torchhefl.federated.statistics.FIELDS` say, as this mode sends them."""
        raise NotImplementedError

    def read_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> dict[str, np.ndarray]:
        """The summed statistics of ``purpose`` the server sent back."""
        raise NotImplementedError


class PlainServerExchange(ServerExchange):
    """The paper's "directly pass" scheme: parameters and statistics travel in plaintext."""

    def __init__(self, initial_state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.state = OrderedDict((k, v.detach().clone()) for k, v in initial_state.items())

    def global_payload(self) -> bytes:
        return encode_state(self.state)

    def check_update(self, payload: bytes, **context) -> tuple[dict[str, np.ndarray], int]:
        """``(parameters, num_examples)``: the model's names and shapes, finite values, a positive count."""
        state, meta = decode_state(payload, expected=self.state)
        n = meta.get("num_examples")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise MalformedMessageError(f"update carries an invalid num_examples {n!r}")
        return {k: v.numpy() for k, v in state.items()}, n

    def aggregate(self, payloads: Sequence, strategy: Strategy) -> None:
        updates = [self.check_update(p) if isinstance(p, (bytes, bytearray)) else p for p in payloads]
        with self.timer.phase("aggregate"):
            combined = strategy.aggregate(updates)
        self.state = OrderedDict(
            (k, torch.as_tensor(combined[k]).to(ref.dtype)) for k, ref in self.state.items()
        )

    def sum_statistics(self, payloads: Sequence[bytes], *, purpose: str = STANDARDIZE) -> bytes:
        total: dict[str, np.ndarray] | None = None
        for blob in payloads:
            stats, _ = decode_state(blob, expected=None if total is None else {k: torch.as_tensor(v) for k, v in total.items()})
            arrays = {k: v.to(torch.float64).numpy() for k, v in stats.items()}
            with np.errstate(over="ignore"):  # a sum beyond the float range is refused when read
                total = arrays if total is None else {k: total[k] + arrays[k] for k in total}
        if total is None:
            raise MalformedMessageError("no statistics to sum")
        return encode_state(total)

    def check_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> bytes:
        """One site's arrays of ``purpose``, usable on their own (the server may read them in plain
        mode): for standardisation ``count``, ``sum`` and ``sumsq`` that give a standardisation
        (:func:`standardizer_from_statistics`), otherwise the purpose's fields, finite, of a
        length they can have."""
        stats, _ = decode_state(payload)
        if list(stats) != list(FIELDS[purpose]):
            raise MalformedMessageError(f"{purpose} statistics payload holds {list(stats)}, expected {', '.join(FIELDS[purpose])}")
        arrays = {k: v.to(torch.float64).numpy() for k, v in stats.items()}
        if purpose == STANDARDIZE:
            standardizer_from_statistics(arrays)
            return payload
        vector = to_vector(purpose, arrays)
        if not np.isfinite(vector).all():
            raise MalformedMessageError(f"{purpose} statistics that are not finite")
        from_vector(purpose, vector)  # a length the purpose can have
        return payload

    def read_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> dict[str, np.ndarray]:
        return _read_plain_statistics(payload, purpose)

    def global_state(self) -> OrderedDict:
        return OrderedDict((k, v.clone()) for k, v in self.state.items())

    def restore_global(self, blob: bytes) -> None:
        state, _ = decode_state(blob, expected=self.state)
        self.state = OrderedDict((k, state[k].to(ref.dtype)) for k, ref in self.state.items())


class PlainClientExchange(ClientExchange):
    """Client side of the plaintext exchange."""

    def read_global(self, payload: bytes) -> OrderedDict:
        return decode_state(payload)[0]

    def write_update(self, state: Mapping[str, torch.Tensor], num_examples: int) -> bytes:
        return encode_state(state, {"num_examples": int(num_examples)})

    def write_statistics(self, stats: Mapping[str, np.ndarray], *, purpose: str = STANDARDIZE) -> bytes:
        return encode_state({k: np.asarray(stats[k], dtype=np.float64) for k in FIELDS[purpose]})

    def read_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> dict[str, np.ndarray]:
        return _read_plain_statistics(payload, purpose)


def _read_plain_statistics(payload: bytes, purpose: str) -> dict[str, np.ndarray]:
    """The arrays of a plaintext statistics sum of ``purpose`` (its fields, float64)."""
    stats, _ = decode_state(payload)
    if set(stats) != set(FIELDS[purpose]):
        raise MalformedMessageError(f"{purpose} statistics hold {sorted(stats)}, expected {', '.join(FIELDS[purpose])}")
    return {k: v.to(torch.float64).numpy() for k, v in stats.items()}


def standardizer_from_statistics(stats: Mapping[str, np.ndarray], *, num_features: int | None = None) -> Standardizer:
    """The standardisation fitted from summed statistics ``{"count", "sum", "sumsq"}``, checked.

    ``count`` has shape ``(1,)`` and holds a whole number of rows, at least 1; ``sum`` and ``sumsq``
    have one shape ``(d,)`` (``d == num_features`` if given); everything is finite and gives a
    finite mean and scale. Raises :class:`MalformedMessageError` with the reason otherwise (the
    statistics arrive from other parties, summed).
    """
    if not isinstance(stats, Mapping) or set(stats) != set(_STAT_NAMES):
        names = sorted(stats) if isinstance(stats, Mapping) else type(stats).__name__
        raise MalformedMessageError(f"statistics hold {names}, expected count, sum and sumsq")
    count, total, sumsq = (np.asarray(stats[k], dtype=np.float64) for k in _STAT_NAMES)
    if count.shape != (1,) or total.ndim != 1 or total.shape != sumsq.shape:
        raise MalformedMessageError(
            f"statistics of shapes {count.shape}, {total.shape} and {sumsq.shape}, expected (1,), (d,) and (d,)"
        )
    if num_features is not None and total.shape != (num_features,):
        raise MalformedMessageError(f"statistics for {total.shape[0]} features, expected {num_features}")
    with np.errstate(all="ignore"):
        try:
            moments = Moments.from_vector(np.concatenate([count, total, sumsq]))
            if moments.count < 1 or moments.count > _MAX_ROWS:
                raise DataError(f"a row count of {moments.count:g} is not in [1, 2^53]")
            return Standardizer.from_moments(moments)
        except DataError as e:
            raise MalformedMessageError(f"statistics that give no standardisation: {e}") from None
