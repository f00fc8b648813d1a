"""The federated server: issues rounds, combines what comes back, and evaluates the global model."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from torchhefl.data import Moments, Standardizer
from torchhefl.exceptions import KeyMismatchError, MalformedMessageError, ProtocolError
from torchhefl.federated.evaluation import add_counts, evaluation_counts, metrics_from_counts
from torchhefl.federated.exchange import ServerExchange
from torchhefl.federated.messages import decode_request, decode_state, encode_request, payload_of
from torchhefl.federated.strategies import Strategy
from torchhefl.federated.transport import ClientUnavailableError, Transport

__all__ = ["RoundResult", "Server"]

log = logging.getLogger(__name__)

#: what a misbehaving or vanished client can raise; anything else is a bug and propagates
_CLIENT_FAULTS = (ClientUnavailableError, MalformedMessageError, KeyMismatchError, ProtocolError)

RoundResult = dict


class Server:
    """Runs federated rounds over a transport.

    Args:
        model: a module of the global model's architecture (for evaluation where the server may
            read the model; its weights are replaced by the aggregate).
        strategy: how client results are combined (:func:`~torchhefl.federated.strategies.get_strategy`).
        transport: delivers bytes to clients.
        exchange: the server side of the mode's exchange (plaintext or encrypted).
        loss_fn: a loss with ``reduction="sum"``, for the test loss.
        X_test, y_test: the held-out set, when the server holds it (raw features).
        fraction: the share of clients asked to train each round.
        min_clients: fewest successful clients for a round to count.
        seed: seeds client selection.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        strategy: Strategy,
        transport: Transport,
        exchange: ServerExchange,
        loss_fn: nn.Module,
        X_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
        fraction: float = 1.0,
        min_clients: int = 1,
        seed: int = 0,
    ) -> None:
        self.model, self.strategy, self.transport, self.exchange = model, strategy, transport, exchange
        self.loss_fn = loss_fn
        self._X_test_raw = None if X_test is None else np.asarray(X_test, dtype=np.float64)
        self.y_test = None if y_test is None else torch.as_tensor(np.asarray(y_test), dtype=torch.float64)
        self.X_test: torch.Tensor | None = None
        self.fraction, self.min_clients, self.seed = fraction, min_clients, seed
        self.round = 0
        self.standardizer: Standardizer | None = None

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Before the first round: the exchange's own set-up (e.g. key agreement), then standardisation."""
        self.exchange.setup(self)
        self.standardize()

    def broadcast(self, ids: list[str], request: bytes, reply_kind: str) -> dict:
        """Send ``request`` to ``ids``; the parsed replies of those that answered (failures are logged)."""
        return self._broadcast(ids, request, reply_kind)

    def standardize(self) -> None:
        """Fit the feature standardisation from the clients' summed moments (no rows leave a site)."""
        ids = self.transport.client_ids
        replies = self._broadcast(ids, encode_request("stats_ins", {}), "stats_res")
        if len(replies) < len(ids):
            raise ProtocolError("standardisation needs every client's statistics; some did not answer")
        total = self.exchange.sum_statistics([payload_of(m) for m in replies.values()])
        self._broadcast(ids, encode_request("standardize_ins", {}, total), "standardize_res")
        stats = self.exchange.read_statistics(total)
        if stats is not None:
            moments = Moments(count=int(round(float(stats["count"][0]))), sum=stats["sum"], sumsq=stats["sumsq"])
            self.standardizer = Standardizer.from_moments(moments)
            if self._X_test_raw is not None:
                self.X_test = torch.as_tensor(self.standardizer.transform(self._X_test_raw), dtype=torch.float64)

    # -- rounds ---------------------------------------------------------------------------------

    def select(self, server_round: int) -> list[str]:
        """The clients asked to train in ``server_round`` (seeded, sorted)."""
        ids = self.transport.client_ids
        k = max(self.min_clients, math.ceil(self.fraction * len(ids)))
        if k >= len(ids):
            return list(ids)
        rng = np.random.default_rng([self.seed, server_round, 0x5E1EC7])
        return sorted(rng.choice(ids, size=k, replace=False).tolist(), key=ids.index)

    def run_round(self, server_round: int | None = None) -> RoundResult:
        """One round: send the global model, train, aggregate, evaluate. Returns its metrics."""
        server_round = self.round + 1 if server_round is None else server_round
        start = time.perf_counter()
        up0, down0 = self.transport.bytes_up, self.transport.bytes_down
        selected = self.select(server_round)
        dropped: list[str] = []
        for attempt in range(1, len(selected) + 1):
            request = encode_request(
                "fit_ins",
                {
                    "round": server_round,
                    "attempt": attempt,
                    "participants": selected,
                    "config": self.strategy.configure_fit(server_round),
                },
                self.exchange.global_payload(),
            )
            replies = self._broadcast(selected, request, "fit_res", server_round=server_round)
            if len(replies) < self.min_clients:
                raise ProtocolError(
                    f"round {server_round}: only {len(replies)} of {len(selected)} clients answered "
                    f"(at least {self.min_clients} needed)"
                )
            missing = [cid for cid in selected if cid not in replies]
            dropped += missing
            if missing and self.exchange.needs_every_participant:
                log.warning("round %d: %s dropped out; re-running the round without them", server_round, ", ".join(missing))
                selected = [cid for cid in selected if cid in replies]
                continue
            break
        self.exchange.aggregate([payload_of(m) for m in replies.values()], self.strategy)
        self.round = server_round
        result: RoundResult = {"round": server_round, "clients": list(replies), "dropped": sorted(dropped)}
        result["train_loss"] = {cid: float(m.meta.get("train_loss", float("nan"))) for cid, m in replies.items()}
        seconds: dict[str, float] = {}
        for m in replies.values():
            for phase, s in (m.meta.get("seconds") or {}).items():
                seconds[phase] = seconds.get(phase, 0.0) + float(s)
        for phase, s in self.exchange.timer.take().items():
            seconds[phase] = seconds.get(phase, 0.0) + s
        epsilons = [float(m.meta["epsilon"]) for m in replies.values() if "epsilon" in m.meta]
        if epsilons:
            result["epsilon"] = max(epsilons)
        refreshes = [int(m.meta["refreshes"]) for m in replies.values() if "refreshes" in m.meta]
        if refreshes:
            result["refreshes"] = sum(refreshes)
        result.update({f"test_{k}": v for k, v in self.evaluate().items()})
        result["seconds"] = seconds
        result["bytes_up"] = self.transport.bytes_up - up0
        result["bytes_down"] = self.transport.bytes_down - down0
        result["time"] = time.perf_counter() - start
        return result

    def evaluate(self) -> dict[str, float]:
        """Test metrics of the current global model: on the server's held-out set, or federated."""
        state = self.exchange.global_state()
        if state is not None and self.X_test is not None:
            self.model.load_state_dict(state, strict=True)
            self.model.eval()
            with torch.no_grad():
                logits = self.model(self.X_test.to(next(self.model.parameters()).dtype))
            return metrics_from_counts(evaluation_counts(logits, self.y_test, self.loss_fn))
        request = encode_request("evaluate_ins", {"round": self.round}, self.exchange.global_payload())
        total = None
        for cid, msg in self._broadcast(self.transport.client_ids, request, "evaluate_res").items():
            counts, _ = decode_state(payload_of(msg))
            total = add_counts(total, {k: v.numpy() for k, v in counts.items()})
        if total is None:
            raise ProtocolError("no client could evaluate the model")
        return metrics_from_counts(total)

    def global_state(self) -> OrderedDict | None:
        """The global state_dict if this server may read it (plain mode, server-held key)."""
        return self.exchange.global_state()

    # -- helpers --------------------------------------------------------------------------------

    def _broadcast(self, ids: list[str], request: bytes, reply_kind: str, server_round: int | None = None) -> dict:
        replies = {}
        for cid, answer in self._deliver(ids, request):
            try:
                if isinstance(answer, Exception):
                    raise answer
                msg = decode_request(answer, kind=reply_kind)
                if server_round is not None and msg.meta.get("round") != server_round:
                    raise MalformedMessageError(f"reply for round {msg.meta.get('round')!r}, expected {server_round}")
            except _CLIENT_FAULTS as e:
                log.warning("client %s left out of %s: %s", cid, reply_kind.removesuffix("_res"), e)
                continue
            replies[cid] = msg
        return replies

    def _deliver(self, ids: list[str], request: bytes) -> Iterator[tuple[str, bytes | Exception]]:
        """Each client's reply to ``request``, or the client fault it raised.

        A transport with ``send_all(ids, request)`` (a network one) gets every request out at once
        and returns ``{cid: reply bytes or exception}``; otherwise clients are asked one by one.
        """
        send_all = getattr(self.transport, "send_all", None)
        if send_all is not None:
            answers = send_all(list(ids), request)
            for cid in ids:
                yield cid, answers[cid]
            return
        for cid in ids:
            try:
                answer: bytes | Exception = self.transport.send(cid, request)
            except _CLIENT_FAULTS as e:
                answer = e
            yield cid, answer
