"""The federated server: issues rounds, combines what comes back, and evaluates the global model."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from torchhefl.data import Standardizer
from torchhefl.exceptions import KeyMismatchError, MalformedMessageError, ProtocolError
from torchhefl.federated.evaluation import (
    add_counts,
    check_metrics,
    counts_from_wire,
    evaluation_counts,
    metrics_from_counts,
)
from torchhefl.federated.exchange import ServerExchange, standardizer_from_statistics
from torchhefl.federated.messages import (
    EVALUATE_INS,
    EVALUATE_RES,
    FIT_INS,
    FIT_RES,
    GLOBAL_REQ,
    STANDARDIZE_INS,
    STANDARDIZE_RES,
    STATS_INS,
    STATS_RES,
    decode_request,
    decode_state,
    encode_request,
    payload_of,
    same_int,
)
from torchhefl.federated.round_result import RoundResult
from torchhefl.federated.statistics import STANDARDIZE, Imputation
from torchhefl.federated.strategies import Strategy
from torchhefl.federated.transport import CLIENT_FAULTS, Transport, deliver
from torchhefl.secure import wire

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "RoundResult", "Server"]

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
"""The largest client reply a server accepts by default (64 MiB; ``--max-message-bytes``)."""

log = logging.getLogger(__name__)


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
        max_message_bytes: the largest reply accepted; a bigger one is refused before parsing.
        max_retries: how often a round that got fewer than ``min_clients`` good replies is tried again.
        max_follow_ups: the most follow-up requests of one kind (the exchange's
            :attr:`~torchhefl.federated.exchange.ServerExchange.follow_ups`) one client may send while
            answering one fit request (see :meth:`answer_follow_up`).
        num_classes: the number of classes the model tells apart (2: one logit per row), which
            the evaluation counts a site sends must match. Default: ``2``.
        impute: ``"mean"`` or ``"median"`` to have the sites fill missing values from federated
            statistics before standardisation (:mod:`torchhefl.federated.statistics`); ``None``
            (default) for data without gaps.
        metrics: your own test metrics (:func:`~torchhefl.federated.evaluation.check_metrics`),
            reported as ``test_<name>``, the mean of the per-row score over the held-out rows.
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
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_retries: int = 2,
        max_follow_ups: int = 10_000,
        num_classes: int = 2,
        impute: str | None = None,
        metrics: dict[str, Callable] | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        #: your own test metrics: computed here where the server evaluates, else summed from the sites' counts
        self.metrics = check_metrics(metrics)
        #: ``"mean"`` or ``"median"``: run the imputation passes before standardisation; ``None``: none
        self.impute = impute
        #: the server's side of the imputation passes, where it may read their sums (else no fill)
        self.imputation: Imputation | None = None
        self.model, self.strategy, self.transport, self.exchange = model, strategy, transport, exchange
        self.loss_fn = loss_fn
        self.max_follow_ups = max_follow_ups
        self._X_test_raw = None if X_test is None else np.asarray(X_test, dtype=np.float64)
        self.y_test = None if y_test is None else torch.as_tensor(np.asarray(y_test), dtype=torch.float64)
        self.X_test: torch.Tensor | None = None
        self.fraction, self.min_clients, self.seed = fraction, min_clients, seed
        self.max_message_bytes, self.max_retries = int(max_message_bytes), int(max_retries)
        self.round = 0
        self.standardizer: Standardizer | None = None
        #: client id -> SHA-256 of the global payload it received in an evaluation it answered; a
        #: fit request to a client that holds the current global names it by that digest instead
        #: of carrying it again (the client asks for it with ``global_req`` if it no longer has it)
        self.holders: dict[str, str] = {}
        #: follow-up kind -> client id -> requests of that kind this server served it in the current
        #: round (what it counts itself; a reply carries no count)
        self.follow_ups_served: dict[str, dict[str, int]] = {}

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Before the first round: the exchange's own set-up (e.g. key agreement), the imputation
        passes where the run fills missing values, then standardisation."""
        self.exchange.setup(self)
        if self.impute is not None:
            self.imputation = Imputation(self.impute)
            for purpose in self.imputation.purposes:
                self.impute_pass(purpose)
        self.standardize()

    def broadcast(self, ids: list[str], request: bytes, reply_kind: str, *, server_round: int | None = None) -> dict:
        """Send ``request`` to ``ids``; the parsed replies of those that answered (failures are logged).
        With ``server_round``, a reply must be for that round."""
        return self._broadcast(ids, request, reply_kind, server_round)

    def _sum_pass(self, purpose: str, what: str, usable: str, check: Callable):
        """One statistics pass of ``purpose``: ask every client, sum the replies through the
        exchange, let ``check`` read the sum (if the server may), then send the sum back. Returns
        ``check``'s result."""
        ids = self.transport.client_ids
        meta = {} if purpose == STANDARDIZE else {"purpose": purpose}
        replies, refused = {}, {}
        for cid, answer in self._deliver(ids, encode_request(STATS_INS, meta)):
            try:
                replies[cid] = self.read_stats_reply(cid, answer, purpose=purpose)
            except CLIENT_FAULTS as e:
                log.warning("client %s left out of %s: %s", cid, what, e)
                refused[cid] = str(e)
        if len(replies) < len(ids):
            reasons = "; ".join(f"{cid}: {why}" for cid, why in refused.items())
            raise ProtocolError(f"{what} needs every client's statistics ({reasons})")
        try:
            total = self.exchange.sum_statistics([payload_of(m) for m in replies.values()], purpose=purpose)
            stats = self.exchange.read_statistics(total, purpose=purpose)
            result = None if stats is None else check(stats)
        except (MalformedMessageError, KeyMismatchError) as e:
            raise ProtocolError(f"the clients' statistics do not add up to usable {usable}: {e}") from None
        self._broadcast(ids, encode_request(STANDARDIZE_INS, meta, total), STANDARDIZE_RES)
        return result

    def impute_pass(self, purpose: str) -> None:
        """One imputation pass (``"impute"`` or ``"median"``, after :meth:`setup` made
        :attr:`imputation`): the clients fill their missing values from the sums; a server that
        may read them fills those of its held-out rows."""
        num_features = None if self._X_test_raw is None else math.prod(self._X_test_raw.shape[1:])
        imputation = self.imputation
        self._sum_pass(purpose, "imputation", "imputation statistics", lambda stats: imputation.read(purpose, stats, num_features=num_features))
        if imputation.done and self._X_test_raw is not None:
            X = self._X_test_raw
            self._X_test_raw = imputation.apply(X.reshape(X.shape[0], -1)).reshape(X.shape)

    def standardize(self) -> None:
        """Fit the feature standardisation from the clients' summed moments (no rows leave a site)."""
        num_features = None if self._X_test_raw is None else math.prod(self._X_test_raw.shape[1:])
        standardizer = self._sum_pass(
            STANDARDIZE, "standardisation", "moments", lambda stats: standardizer_from_statistics(stats, num_features=num_features)
        )
        if standardizer is not None:
            self.standardizer = standardizer
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
        """One round: send the global model, train, aggregate, evaluate. Returns its metrics.

        Every reply is checked on its own (:meth:`read_fit_reply`); a client whose reply is missing
        or refused is left out with a logged reason (``dropped``, and ``rejected`` with the reason).
        The round completes with the rest if at least ``min_clients`` remain; otherwise it is tried
        again with every selected client, at most ``max_retries`` times, then :class:`ProtocolError`
        (at once where a site uploads only once per round: the exchange's ``uploads_once``). The
        exchange's :meth:`~torchhefl.federated.exchange.ServerExchange.open_round` runs before the
        fit requests and :meth:`~torchhefl.federated.exchange.ServerExchange.close_round` after the
        uploads (secure aggregation's key exchange and unmasking). A refused reply never reaches
        the global model.

        The result's figures are the server's own: ``seconds`` are its phases (``aggregate``, and
        ``encrypt``/``decrypt``/``refresh`` where it does them; plus the phases of sites that chose
        to share theirs), ``time`` the round's wall time, ``refreshes`` (where the exchange serves
        them) the refresh requests it served in the round, retried attempts included (each
        follow-up kind of the exchange with a ``counted_as`` field is counted so).
        """
        server_round = self.round + 1 if server_round is None else server_round
        start = time.perf_counter()
        self.follow_ups_served = {}
        up0, down0 = self.transport.bytes_up, self.transport.bytes_down
        selected = self.select(server_round)
        retries = 0
        attempt = 0
        rejected: dict[str, str] = {}
        while True:
            attempt += 1
            participants = self.exchange.open_round(self, server_round, list(selected))
            meta = {
                "round": server_round,
                "attempt": attempt,
                "participants": participants,
                "config": self.strategy.configure_fit(server_round),
            }
            payload = self.exchange.global_payload()
            digest = hashlib.sha256(payload).hexdigest()
            fulls, requests = {}, {}
            for cid in participants:
                extra = self.exchange.fit_meta(cid)
                fulls[cid] = encode_request(FIT_INS, {**meta, **extra}, payload)
                named = self.holders.get(cid) == digest
                requests[cid] = encode_request(FIT_INS, {**meta, **extra, "global": digest}) if named else fulls[cid]
            replies, updates, seen = {}, {}, {}
            for cid, answer in self._converse(requests, fulls, server_round=server_round, attempt=attempt):
                try:
                    msg, update = self.read_fit_reply(
                        cid, answer, server_round=server_round, attempt=attempt, participants=participants
                    )
                    digest = hashlib.sha256(payload_of(msg)).hexdigest()
                    if digest in seen:
                        raise MalformedMessageError(f"its update duplicates the one {seen[digest]} sent")
                except CLIENT_FAULTS as e:
                    log.warning("client %s left out of round %d (attempt %d): %s", cid, server_round, attempt, e)
                    rejected[cid] = str(e)
                    continue
                seen[digest] = cid
                replies[cid], updates[cid] = msg, update
            if len(replies) < self.min_clients:
                if retries < self.max_retries and not self.exchange.uploads_once:
                    retries += 1
                    log.warning(
                        "round %d: only %d of %d clients answered (at least %d needed); trying again (%d of %d)",
                        server_round, len(replies), len(participants), self.min_clients, retries, self.max_retries,
                    )
                    continue
                tried = f"tried {attempt} times" if not self.exchange.uploads_once else "a site uploads once per round"
                raise ProtocolError(
                    f"round {server_round}: only {len(replies)} of {len(participants)} clients answered "
                    f"(at least {self.min_clients} needed; {tried})"
                )
            break
        self.exchange.close_round(self, server_round, list(replies))
        self.exchange.aggregate([updates[cid] for cid in replies], self.strategy)
        self.round = server_round
        dropped = sorted(set(selected) - set(replies), key=selected.index)
        seconds: dict[str, float] = {}
        for m in replies.values():
            for phase, sec in (m.meta.get("seconds") or {}).items():
                seconds[phase] = seconds.get(phase, 0.0) + _seconds(sec)
        for phase, sec in self.exchange.timer.take().items():
            seconds[phase] = seconds.get(phase, 0.0) + sec
        epsilons = [float(m.meta["epsilon"]) for m in replies.values() if "epsilon" in m.meta]
        served = {
            follow_up.counted_as: sum(self.follow_ups_served.get(kind, {}).values())
            for kind, follow_up in self.exchange.follow_ups.items()
            if follow_up.counted_as is not None
        }
        test = self.evaluate()
        return RoundResult(
            round=server_round,
            clients=list(replies),
            dropped=dropped,
            rejected={cid: rejected[cid] for cid in dropped if cid in rejected},
            attempts=attempt,
            train_loss={cid: float(m.meta.get("train_loss", float("nan"))) for cid, m in replies.items()},
            test=test,
            seconds=seconds,
            bytes_up=self.transport.bytes_up - up0,
            bytes_down=self.transport.bytes_down - down0,
            time=time.perf_counter() - start,
            epsilon=max(epsilons) if epsilons else None,
            served=served,
        )

    def read_fit_reply(
        self,
        cid: str,
        answer: bytes | Exception,
        *,
        server_round: int,
        attempt: int,
        participants: list[str] | None = None,
    ) -> tuple[wire.Message, object]:
        """Check one client's answer to a fit request; returns ``(message, checked update)``.

        The envelope must be a ``fit_res`` no larger than ``max_message_bytes``, from ``cid``, for this
        ``server_round`` and ``attempt``, with well-typed metadata; the payload must pass the exchange's
        :meth:`~torchhefl.federated.exchange.ServerExchange.check_update` (format version, key
        fingerprint, names, shapes, value ranges). Raises only the client faults (``MalformedMessageError``,
        ``KeyMismatchError``, ``ProtocolError``, ``ClientUnavailableError``).
        """
        msg = self._read_reply(cid, answer, FIT_RES)
        meta = msg.meta
        if not (same_int(meta.get("round"), server_round) and same_int(meta.get("attempt"), attempt)):
            raise MalformedMessageError(
                f"stale or replayed reply for round {meta.get('round')!r} attempt {meta.get('attempt')!r}, "
                f"expected round {server_round} attempt {attempt}"
            )
        loss = meta.get("train_loss", 0.0)
        if not isinstance(loss, (int, float)) or isinstance(loss, bool):
            raise MalformedMessageError(f"train_loss {loss!r} is not a number")
        eps = meta.get("epsilon", 0.0)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
            raise MalformedMessageError(f"epsilon {eps!r} is not a non-negative number")
        seconds = meta.get("seconds", {})  # only from a site that chose to share its timings
        if not isinstance(seconds, dict) or not all(isinstance(k, str) for k in seconds):
            raise MalformedMessageError("seconds must map phase names to durations")
        for v in seconds.values():
            _seconds(v)
        update = self.exchange.check_update(
            payload_of(msg), server_round=server_round, attempt=attempt, participants=participants
        )
        return msg, update

    def answer_follow_up(self, cid: str, answer: bytes | Exception, *, server_round: int, attempt: int, seq: int) -> bytes:
        """The request that answers a client's follow-up request (one of the exchange's
        :attr:`~torchhefl.federated.exchange.ServerExchange.follow_ups`, e.g. a refresh).

        A client that needs the server in the middle of a fit answers the fit request, or the
        server's previous answer, with such a request; the exchange's handler serves its payload.
        The envelope is checked like a fit reply: size, kind, sender, this ``server_round`` and
        ``attempt``, and ``seq`` (the client's ``seq``-th request of this kind in this fit, at most
        ``max_follow_ups``). Raises only the client faults.
        """
        follow_ups = self.exchange.follow_ups
        msg = self._read_reply(cid, answer, tuple(follow_ups))
        follow_up = follow_ups[msg.kind]
        what = follow_up.what
        self._check_round(msg, what, server_round=server_round, attempt=attempt)
        if not same_int(msg.meta.get("seq"), seq):
            raise MalformedMessageError(f"{what} number {msg.meta.get('seq')!r}, expected {seq}")
        if seq > self.max_follow_ups:
            raise ProtocolError(f"more than {self.max_follow_ups} {what}s for one fit")
        reply = follow_up.serve(payload_of(msg))
        served = self.follow_ups_served.setdefault(msg.kind, {})
        served[cid] = served.get(cid, 0) + 1
        return encode_request(follow_up.reply_kind, {"round": server_round, "attempt": attempt, "seq": seq}, reply)

    def read_stats_reply(self, cid: str, answer: bytes | Exception, *, purpose: str = STANDARDIZE) -> wire.Message:
        """Check one client's answer to the statistics request of ``purpose`` (envelope, then the
        exchange's :meth:`~torchhefl.federated.exchange.ServerExchange.check_statistics`); same
        errors as :meth:`read_fit_reply`."""
        msg = self._read_reply(cid, answer, STATS_RES)
        self.exchange.check_statistics(payload_of(msg), purpose=purpose)
        return msg

    def read_evaluate_reply(self, cid: str, answer: bytes | Exception) -> dict[str, np.ndarray]:
        """Check one client's answer to a federated evaluation; returns its counts (the expected
        names and shapes, finite, non-negative). Same errors as :meth:`read_fit_reply`."""
        msg = self._read_reply(cid, answer, EVALUATE_RES)
        counts, _ = decode_state(payload_of(msg))
        try:
            return counts_from_wire({k: v.numpy() for k, v in counts.items()}, num_classes=self.num_classes,
                                    metrics=tuple(self.metrics))
        except ValueError as e:
            raise MalformedMessageError(str(e)) from None

    def _read_reply(self, cid: str, answer: bytes | Exception, kind: str | tuple[str, ...]) -> wire.Message:
        if isinstance(answer, Exception):
            raise answer
        msg = decode_request(answer, kind=kind, max_bytes=self.max_message_bytes)
        if msg.meta.get("cid", cid) != cid:
            raise MalformedMessageError(f"reply signed as client {msg.meta.get('cid')!r}")
        return msg

    def evaluate(self) -> dict[str, float]:
        """Test metrics of the current global model: on the server's held-out set, or federated."""
        state = self.exchange.global_state()
        if state is not None and self.X_test is not None:
            self.model.load_state_dict(state, strict=True)
            self.model.eval()
            with torch.no_grad():
                logits = self.model(self.X_test.to(next(self.model.parameters()).dtype))
            return metrics_from_counts(evaluation_counts(logits, self.y_test, self.loss_fn, self.metrics))
        payload = self.exchange.global_payload()
        digest = hashlib.sha256(payload).hexdigest()
        request = encode_request(EVALUATE_INS, {"round": self.round}, payload)
        total = None
        for cid, answer in self._deliver(self.transport.client_ids, request):
            try:
                counts = self.read_evaluate_reply(cid, answer)
            except CLIENT_FAULTS as e:
                log.warning("client %s left out of evaluate: %s", cid, e)
                continue
            total = add_counts(total, counts)
            self.holders[cid] = digest
        if total is None:
            raise ProtocolError("no client could evaluate the model")
        return metrics_from_counts(total)

    def assume_sites_hold_global(self) -> bool:
        """After a restart: take every site to hold the current global model, as it would had the
        server never stopped (a site that does not hold it asks for it). ``False`` when this server
        evaluates the model itself, so that sites only ever get it in fit requests."""
        if self.exchange.global_state() is not None and self._X_test_raw is not None:
            return False
        digest = hashlib.sha256(self.exchange.global_payload()).hexdigest()
        self.holders = {cid: digest for cid in self.transport.client_ids}
        return True

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
                msg = self._read_reply(cid, answer, reply_kind)
                if server_round is not None and not same_int(msg.meta.get("round"), server_round):
                    raise MalformedMessageError(f"reply for round {msg.meta.get('round')!r}, expected {server_round}")
            except CLIENT_FAULTS as e:
                step = reply_kind.removesuffix("_res")
                if server_round is None:
                    log.warning("client %s left out of %s: %s", cid, step, e)
                else:
                    log.warning("client %s left out of round %d (%s): %s", cid, server_round, step, e)
                continue
            replies[cid] = msg
        return replies

    def _converse(
        self, requests: dict[str, bytes], fulls: dict[str, bytes], *, server_round: int, attempt: int
    ) -> list[tuple[str, bytes | Exception]]:
        """Each client's final answer to its fit request, after serving its follow-up requests.

        ``requests`` maps each client to its fit request; ``fulls`` to its fit request that carries
        the global model. A client that answers with ``global_req`` (it was sent the model's digest but
        no longer holds the model) gets its request from ``fulls``, once; while a client answers with one of the
        exchange's follow-up kinds, it gets the answer back (:meth:`answer_follow_up`). The clients waiting for an answer
        are served together. A client whose follow-up request is refused ends with that fault as
        its answer.
        """
        ids = list(requests)
        if not ids:
            return []
        if len(set(requests.values())) == 1:
            answers = dict(self._deliver(ids, requests[ids[0]]))
        else:
            answers = dict(self._deliver_each(requests))
        follow_ups = self.exchange.follow_ups
        asked: dict[tuple[str, str], int] = {}
        resent: set[str] = set()
        while True:
            follow = {}
            for cid, answer in answers.items():
                kind = None if isinstance(answer, Exception) else self._kind(answer)
                try:
                    if kind == GLOBAL_REQ:
                        follow[cid] = self.answer_global_request(
                            cid, answer, fulls[cid], server_round=server_round, attempt=attempt, already=cid in resent
                        )
                        resent.add(cid)
                    elif kind in follow_ups:
                        asked[cid, kind] = seq = asked.get((cid, kind), 0) + 1
                        follow[cid] = self.answer_follow_up(cid, answer, server_round=server_round, attempt=attempt, seq=seq)
                except CLIENT_FAULTS as e:
                    answers[cid] = e
            if not follow:
                return [(cid, answers[cid]) for cid in ids]
            answers.update(self._deliver_each(follow))

    def answer_global_request(
        self, cid: str, answer: bytes, full: bytes, *, server_round: int, attempt: int, already: bool
    ) -> bytes:
        """``full`` (the fit request with the global model) for a client that asked for the model.

        The ``global_req`` is checked like a fit reply (size, kind, sender, this ``server_round``
        and ``attempt``); a client may ask once per fit request. Raises only the client faults.
        """
        self._read_follow_up(cid, answer, GLOBAL_REQ, "request for the model", server_round=server_round, attempt=attempt)
        if already:
            raise ProtocolError("asked for the global model twice in one fit")
        self.holders.pop(cid, None)
        return full

    def _read_follow_up(
        self, cid: str, answer: bytes, kind: str, what: str, *, server_round: int, attempt: int
    ) -> wire.Message:
        """A client's ``kind`` request in the middle of a fit: a reply from ``cid`` for this round and attempt."""
        msg = self._read_reply(cid, answer, kind)
        self._check_round(msg, what, server_round=server_round, attempt=attempt)
        return msg

    @staticmethod
    def _check_round(msg: wire.Message, what: str, *, server_round: int, attempt: int) -> None:
        got = (msg.meta.get("round"), msg.meta.get("attempt"))
        if not (same_int(got[0], server_round) and same_int(got[1], attempt)):
            raise MalformedMessageError(
                f"stale or replayed {what} for round {got[0]!r} attempt {got[1]!r}, "
                f"expected round {server_round} attempt {attempt}"
            )

    def _kind(self, answer: bytes) -> str | None:
        try:
            return decode_request(answer, max_bytes=self.max_message_bytes).kind
        except CLIENT_FAULTS:
            return None  # the caller's own check reports what is wrong with it

    def _deliver_each(self, requests: dict[str, bytes]) -> Iterator[tuple[str, bytes | Exception]]:
        """Each client's reply to its own request, or the client fault it raised (:func:`deliver`)."""
        return deliver(self.transport, requests)

    def _deliver(self, ids: list[str], request: bytes) -> Iterator[tuple[str, bytes | Exception]]:
        """Each client's reply to ``request``, or the client fault it raised (:func:`deliver`)."""
        return deliver(self.transport, dict.fromkeys(ids, request))


def _seconds(value) -> float:
    """A reported duration (a number, or the fixed-width string clients send) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MalformedMessageError(f"duration {value!r} is not a number")
    try:
        out = float(value)
    except ValueError:
        raise MalformedMessageError(f"duration {value!r} is not a number") from None
    if not 0.0 <= out < 1e9:
        raise MalformedMessageError(f"duration {value!r} is out of range")
    return out
