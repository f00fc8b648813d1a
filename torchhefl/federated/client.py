"""A federated client: one site's data, local training, and the client side of the protocol."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from torchhefl.data import Standardizer, local_moments
from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated.evaluation import check_metrics, counts_to_wire, evaluation_counts
from torchhefl.federated.exchange import ClientExchange, standardizer_from_statistics
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
    encode_request,
    encode_state,
    payload_of,
)
from torchhefl.federated.statistics import STANDARDIZE, Imputation, purpose_of

__all__ = ["MAX_ROUND", "Client", "local_batches", "round_generator"]

MAX_ROUND = 2**31 - 1
"""The largest round or attempt number a client accepts in a request."""

log = logging.getLogger(__name__)


def round_generator(seed: int, client_index: int, server_round: int) -> torch.Generator:
    """The batch order of one client in one round without DP: a pure function of its inputs, so
    runs resume exactly. Public (anyone with the seed replays it), so never the source of DP noise
    or sampling: those come from :meth:`SiteDP.generator <torchhefl.federated.dp.SiteDP.generator>`."""
    state = np.random.SeedSequence([seed, client_index, server_round]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def local_batches(num_examples: int, batch_size: int, epochs: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches for local training: a fresh permutation per epoch, the last batch may be short."""
    for _ in range(epochs):
        perm = torch.randperm(num_examples, generator=generator)
        yield from perm.split(batch_size)


class Client:
    """One site. It keeps its rows, trains the model it is sent, and answers the server in bytes.

    Args:
        cid: the client's name on the wire.
        index: the client's position (seeds its randomness).
        X: training inputs, shape ``(n, d)`` or ``(n, *shape)`` (e.g. images), raw: standardised per
            entry once the federated statistics arrive.
        y: training labels in {0, ..., num_classes - 1}, shape ``(n,)``.
        model: the module to train; the client keeps its own copy.
        loss_fn: a loss taking ``(logits, targets)`` with ``reduction`` "mean" (training) and a
            sum-reduced twin for evaluation, e.g. ``TaylorLoss()``.
        exchange: how payloads are read and written in this mode.
        lr, batch_size, local_epochs: local SGD settings.
        clip_norm: ``clip_grad_norm_`` bound, or ``None`` for no clipping.
        seed: the run's seed.
        X_test, y_test: this client's share of the held-out set, for federated evaluation.
        privacy: optional differentially private trainer (see :mod:`torchhefl.privacy`).
        num_classes: the number of classes ``K``: 2 keeps labels as floats in {0, 1} (for
            ``BCEWithLogitsLoss`` or ``TaylorLoss``), more makes them int64 class indices (for
            ``CrossEntropyLoss``). Default: ``2``.
        optimizer_fn: builds the local optimizer from the trainable parameters, once per round
            (e.g. ``lambda params: torch.optim.Adam(params, lr=1e-3)``); default
            ``torch.optim.SGD(params, lr=lr)``.
        impute: fill the missing values (NaN) of ``X`` and ``X_test`` with the federated
            ``"mean"`` or ``"median"`` of their column, from the imputation passes the server runs
            before standardisation (:mod:`torchhefl.federated.statistics`); ``None`` (default):
            the site has no missing values and refuses those passes.
        metrics: your own test metrics, ``{name: fn(logits, targets)}`` returning the sum of a
            per-row score over the rows given (see :func:`~torchhefl.federated.evaluation.check_metrics`).
        share_timings: send the seconds of each fit phase to the server in the reply (default
            ``False``: they stay here, in :attr:`timings` and this site's log, since a site's
            training time reveals its number of local steps and so its sample count).
    """

    #: the requests this client answers; each ``X_ins`` is handled by ``_on_X``
    REQUEST_KINDS: tuple[str, ...] = (STATS_INS, STANDARDIZE_INS, FIT_INS, EVALUATE_INS)

    def __init__(
        self,
        cid: str,
        index: int,
        X: np.ndarray,
        y: np.ndarray,
        *,
        model: nn.Module,
        loss_fn: nn.Module,
        exchange: ClientExchange,
        lr: float,
        batch_size: int,
        local_epochs: int = 1,
        clip_norm: float | None = None,
        seed: int = 0,
        X_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
        privacy=None,
        num_classes: int = 2,
        share_timings: bool = False,
        optimizer_fn: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        impute: str | None = None,
        metrics: dict[str, Callable] | None = None,
    ) -> None:
        self.cid, self.index = cid, index
        #: your own test metrics, each the sum of a per-row score over this site's held-out rows
        self.metrics = check_metrics(metrics)
        #: this site's side of the imputation passes (``None``: missing values are refused)
        self.imputation = None if impute is None else Imputation(impute)
        self._X_raw = np.asarray(X, dtype=np.float64)
        self._X_test_raw = None if X_test is None else np.asarray(X_test, dtype=np.float64)
        self.dtype = next(model.parameters()).dtype
        self.X = torch.as_tensor(self._X_raw, dtype=self.dtype)
        self.num_classes = int(num_classes)
        label_dtype = self.dtype if self.num_classes == 2 else torch.int64
        self.y = torch.as_tensor(np.asarray(y), dtype=label_dtype)
        self.X_test = None if X_test is None else torch.as_tensor(self._X_test_raw, dtype=self.dtype)
        self.y_test = None if y_test is None else torch.as_tensor(np.asarray(y_test), dtype=label_dtype)
        self.model = copy.deepcopy(model)
        exchange.set_initial_state(self.model.state_dict())
        self.loss_fn = loss_fn
        self.eval_loss_fn = copy.deepcopy(loss_fn)
        self.eval_loss_fn.reduction = "sum"
        self.exchange = exchange
        self.lr, self.batch_size, self.local_epochs = lr, batch_size, local_epochs
        self.clip_norm, self.seed = clip_norm, seed
        self.optimizer_fn = optimizer_fn
        self.privacy = privacy
        self.standardizer: Standardizer | None = None
        self.last_round: tuple[int, int] = (0, 0)
        self._global: bytes | None = None  # the last global model received (see remember_global)
        #: the (round, attempt) of the fit whose model this client asked for with ``global_req``
        self.asked_global: tuple[int, int] | None = None
        self.share_timings = bool(share_timings)
        #: seconds per phase (``decrypt``, ``train``, ``encrypt``) of the fits answered since the
        #: last :meth:`take_timings`; this site's own figures, not sent unless ``share_timings``
        self.timings: dict[str, float] = {}

    @property
    def num_examples(self) -> int:
        return len(self.y)

    def take_timings(self) -> dict[str, float]:
        """The seconds per phase of the fits answered since the last call (then cleared)."""
        out, self.timings = self.timings, {}
        return out

    # -- protocol -------------------------------------------------------------------------------

    def handle(self, request: bytes) -> bytes:
        """Answer one request from the server; both are wire-format bytes."""
        msg = decode_request(request, kind=self.REQUEST_KINDS)
        handler = getattr(self, "_on_" + msg.kind.removesuffix("_ins"))
        return handler(msg)

    def _flat(self, X: np.ndarray) -> np.ndarray:
        return X.reshape(X.shape[0], math.prod(X.shape[1:]))

    def _on_stats(self, msg) -> bytes:
        purpose = purpose_of(msg.meta)
        if purpose == STANDARDIZE:
            if np.isnan(self._X_raw).any():
                raise ProtocolError("this site's rows have missing values: standardisation comes after the imputation passes")
            m = local_moments(self._X_raw)
            stats = {"count": np.array([float(m.count)]), "sum": m.sum, "sumsq": m.sumsq}
        elif self.imputation is None:
            raise ProtocolError(f"asked for {purpose} statistics, but this site does not fill missing values (--impute none)")
        else:
            stats = self.imputation.local(purpose, self._flat(self._X_raw))
        return encode_request(STATS_RES, {"cid": self.cid}, self.exchange.write_statistics(stats, purpose=purpose))

    def _on_standardize(self, msg) -> bytes:
        purpose = purpose_of(msg.meta)
        stats = self.exchange.read_statistics(payload_of(msg), purpose=purpose)
        if purpose != STANDARDIZE:
            if self.imputation is None:
                raise ProtocolError(f"sent {purpose} statistics, but this site does not fill missing values (--impute none)")
            self.imputation.read(purpose, stats, num_features=math.prod(self._X_raw.shape[1:]))
            if self.imputation.done:
                self._X_raw = self._fill(self._X_raw)
                self._X_test_raw = None if self._X_test_raw is None else self._fill(self._X_test_raw)
                self.X = torch.as_tensor(self._X_raw, dtype=self.dtype)
            return encode_request(STANDARDIZE_RES, {"cid": self.cid})
        self.standardizer = standardizer_from_statistics(stats, num_features=math.prod(self._X_raw.shape[1:]))
        self.X = torch.as_tensor(self.standardizer.transform(self._X_raw), dtype=self.dtype)
        if self._X_test_raw is not None:
            self.X_test = torch.as_tensor(self.standardizer.transform(self._X_test_raw), dtype=self.dtype)
        return encode_request(STANDARDIZE_RES, {"cid": self.cid})

    def _fill(self, X: np.ndarray) -> np.ndarray:
        return self.imputation.apply(self._flat(X)).reshape(X.shape)

    def remember_global(self, payload: bytes) -> None:
        """Keep ``payload`` as the global model a later fit request may name by its digest."""
        self._global = bytes(payload)

    def _global_of(self, msg) -> bytes | None:
        """The global model a fit request carries, or the one it names by digest if held here."""
        if "payload" in msg.arrays:
            self.remember_global(payload_of(msg))
            return self._global
        digest = msg.meta.get("global")
        if not isinstance(digest, str):
            raise MalformedMessageError("fit request with neither a global model nor its digest")
        if self._global is not None and hashlib.sha256(self._global).hexdigest() == digest:
            return self._global
        return None

    def _on_fit(self, msg) -> bytes:
        if "payload" in msg.arrays and self.asked_global == (msg.meta.get("round"), msg.meta.get("attempt", 1)):
            self.asked_global = None  # the model this client asked for: same round and attempt
            server_round, config = self._fit_settings(msg)
        else:
            server_round, config = self._check_fit(msg)
        payload = self._global_of(msg)
        if payload is None:  # named by a digest this client does not hold: ask for the model
            self.asked_global = (server_round, self.last_round[1])
            return encode_request(GLOBAL_REQ, {"cid": self.cid, "round": server_round, "attempt": self.last_round[1]})
        with self.exchange.timer.phase("decrypt"):  # the model after the previous round
            state = self.exchange.read_global_after(payload, server_round - 1)
        self._load_global(state)
        with self.exchange.timer.phase("train"):
            train_loss = self.fit(server_round, proximal_mu=self._proximal_mu(config))
        with self.exchange.timer.phase("encrypt"):
            try:
                payload = self.exchange.write_update_for(
                    self.model.state_dict(), self.num_examples, server_round=server_round, attempt=self.last_round[1]
                )
            except (OverflowError, ValueError) as e:  # training diverged beyond what the encoding holds
                raise ProtocolError(f"client {self.cid} cannot send its round {server_round} update: {e}") from None
        meta = {"cid": self.cid, "round": server_round, "attempt": self.last_round[1], "train_loss": train_loss}
        if not math.isfinite(train_loss):  # no batch gave a finite loss; JSON holds no NaN or infinity
            del meta["train_loss"]
        if self.privacy is not None:
            meta["epsilon"] = self.privacy.epsilon(server_round)
        return self._fit_reply(meta, payload, self.exchange.timer.take())

    def _fit_reply(self, meta: dict, payload: bytes, seconds: dict[str, float]) -> bytes:
        """The ``fit_res`` of a finished fit; its phase ``seconds`` are kept here (and logged) and
        go into the reply only with ``share_timings``."""
        for phase, s in seconds.items():
            self.timings[phase] = self.timings.get(phase, 0.0) + s
        log.debug("%s round %d: %s", self.cid, meta["round"], ", ".join(f"{k} {v:.3f} s" for k, v in sorted(seconds.items())))
        if self.share_timings:
            meta = {**meta, "seconds": _fixed_width(seconds)}
        return encode_request(FIT_RES, meta, payload)

    def _fit_settings(self, msg) -> tuple[int, dict]:
        server_round, attempt = msg.meta.get("round"), msg.meta.get("attempt", 1)
        config = msg.meta.get("config", {})
        if (
            not all(type(v) is int and 1 <= v <= MAX_ROUND for v in (server_round, attempt))
            or not isinstance(config, dict)
        ):
            raise MalformedMessageError(
                f"fit request with an invalid round, attempt or config (integers in [1, {MAX_ROUND}] and an object)"
            )
        return server_round, config

    def _proximal_mu(self, config: dict) -> float:
        """The FedProx coefficient a fit request's config asks for: a finite number >= 0 (default 0)."""
        mu = config.get("proximal_mu", 0.0)
        if type(mu) not in (int, float) or not 0.0 <= mu < float("inf"):
            raise MalformedMessageError(f"fit request with proximal_mu {mu!r}, expected a finite number >= 0")
        return float(mu)

    def _load_global(self, state) -> None:
        """Load a global state_dict into the model; its names and shapes must be the model's."""
        own = self.model.state_dict()
        if list(state) != list(own):
            raise MalformedMessageError(f"the global model has parameters {list(state)}, this model {list(own)}")
        for name, ref in own.items():
            if tuple(state[name].shape) != tuple(ref.shape):
                raise MalformedMessageError(
                    f"the global model's {name!r} has shape {tuple(state[name].shape)}, expected {tuple(ref.shape)}"
                )
        self.model.load_state_dict(state, strict=True)

    def _check_fit(self, msg) -> tuple[int, dict]:
        """The round and config of a fit request; rejects stale or replayed requests."""
        server_round, config = self._fit_settings(msg)
        attempt = msg.meta.get("attempt", 1)
        if (server_round, attempt) <= self.last_round:
            raise MalformedMessageError(f"fit request for stale round {server_round} (attempt {attempt})")
        self.last_round = (server_round, attempt)
        return server_round, config

    def _on_evaluate(self, msg) -> bytes:
        if self.X_test is None:
            raise ProtocolError(f"client {self.cid} holds no test rows to evaluate on")
        server_round = msg.meta.get("round")
        if type(server_round) is not int or not 0 <= server_round <= MAX_ROUND:
            raise MalformedMessageError(f"evaluation request with an invalid round {server_round!r} (an integer in [0, {MAX_ROUND}])")
        payload = payload_of(msg)
        self._load_global(self.exchange.read_global_after(payload, server_round))  # the model after that round
        self.remember_global(payload)
        self.model.eval()
        with torch.no_grad():
            counts = evaluation_counts(self.model(self.X_test), self.y_test, self.eval_loss_fn, self.metrics)
        return encode_request(EVALUATE_RES, {"cid": self.cid}, encode_state(counts_to_wire(counts)))

    # -- local training -----------------------------------------------------------------------

    def fit(self, server_round: int, *, proximal_mu: float = 0.0) -> float:
        """Run local SGD on this client's rows from the current model; return the mean batch loss."""
        if self.standardizer is None:
            raise ProtocolError(f"client {self.cid} was asked to train before standardisation")
        model = self.model
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=self.lr) if self.optimizer_fn is None else self.optimizer_fn(params)
        if self.privacy is not None:
            # noise and sampling from a secret key, fresh this round; never from the public seed
            generator = self.privacy.generator(self.seed, self.index, server_round)
            batches = self.privacy.batches(self.num_examples, generator)
        else:
            batches = local_batches(
                self.num_examples, self.batch_size, self.local_epochs, round_generator(self.seed, self.index, server_round)
            )
        losses = []
        for idx in batches:
            optimizer.zero_grad(set_to_none=True)
            xb, yb = self.X[idx], self.y[idx]
            if self.privacy is not None:
                loss = self.privacy.step(model, self.loss_fn, xb, yb, generator)
            else:
                loss = self.loss_fn(model(xb), yb)
                loss.backward()
            if proximal_mu > 0:
                for p, a in zip(params, anchor):
                    p.grad.add_(p.detach() - a, alpha=proximal_mu)
            if self.clip_norm is not None and self.privacy is None:
                nn.utils.clip_grad_norm_(params, self.clip_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
        losses = [v for v in losses if not np.isnan(v)]  # a Poisson batch may be empty
        return float(np.mean(losses)) if losses else float("nan")


def _fixed_width(seconds: dict[str, float]) -> dict[str, str]:
    """Timings as fixed-width strings, so a reply's size does not depend on how long it took."""
    return {k: f"{min(v, 99999.0):012.6f}" for k, v in seconds.items()}
