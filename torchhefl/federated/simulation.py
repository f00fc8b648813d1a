"""An in-process federated run: data split across simulated sites, a server, and the round loop.

The parties talk only through :class:`~torchhefl.federated.transport.InProcessTransport`, in the
same bytes a deployment sends. :func:`build` wires a run from a :class:`TrainConfig`;
:func:`run` trains it and writes the run folder.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from torchhefl.data import (
    Dataset,
    Table,
    TableEncoder,
    agree_vocabulary,
    load_digits,
    load_table,
    load_wdbc,
    partition_dirichlet,
    partition_iid,
    train_test_split,
)
from torchhefl.data.table import NUMERIC
from torchhefl.exceptions import ConfigError, DataError
from torchhefl.federated.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from torchhefl.federated.client import Client
from torchhefl.federated.drive import drive, round_line, summarize
from torchhefl.federated.exchange import ClientExchange
from torchhefl.federated.modes import mode_of
from torchhefl.federated.parts import ModeParts  # re-exported from its old home, as round_line is
from torchhefl.federated.recorder import RunRecorder
from torchhefl.federated.server import DEFAULT_MAX_MESSAGE_BYTES, RoundResult, Server
from torchhefl.federated.strategies import get_strategy
from torchhefl.federated.transport import InProcessTransport
from torchhefl.nn import MLP, LogisticRegression, TaylorLoss
from torchhefl.secure.identity import Roster, SiteIdentity

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = [
    "ModeParts",
    "Prepared",
    "assemble",
    "Simulation",
    "build",
    "check_resume",
    "describe_dataset",
    "load_dataset",
    "make_client",
    "make_loss",
    "make_model",
    "prepare",
    "round_line",
    "run",
    "site_name",
]

log = logging.getLogger(__name__)


def site_name(index: int) -> str:
    """The name of site ``index`` (``site0``, ``site1``, ...), as the roster lists it."""
    return f"site{index}"


def make_loss(name: str, reduction: str = "mean", *, num_classes: int = 2) -> nn.Module:
    """``taylor`` (the paper's Eq 12) or ``bce`` (``BCEWithLogitsLoss``), both logits-and-{0,1}-targets;
    on more than 2 classes ``CrossEntropyLoss`` (``(N, K)`` logits, class-index targets) whatever ``name``."""
    if num_classes > 2:
        return nn.CrossEntropyLoss(reduction=reduction)
    if name == "taylor":
        return TaylorLoss(reduction=reduction)
    if name == "bce":
        return nn.BCEWithLogitsLoss(reduction=reduction)
    raise ConfigError(f"unknown loss {name!r}; choose taylor or bce")


def make_model(config: TrainConfig, num_features: int, num_classes: int = 2) -> nn.Module:
    """The run's initial model for ``num_features`` inputs and ``num_classes`` classes, drawn from
    ``config.seed`` (every party draws the same).

    ``config.model`` ``logreg``: :class:`LogisticRegression` for 2 classes, softmax regression
    (``nn.Linear(d, K)``) for more; ``mlp``: :class:`MLP` with ``config.hidden``. Float64.
    """
    torch.manual_seed(config.seed)
    if config.model == "mlp":
        return MLP(num_features, hidden=tuple(config.hidden), num_classes=num_classes, dtype=torch.float64)
    if num_classes > 2:
        return nn.Linear(num_features, num_classes, dtype=torch.float64)
    return LogisticRegression(num_features, dtype=torch.float64)


def load_dataset(config: TrainConfig) -> Dataset | Table:
    """WDBC (bundled with scikit-learn, also ``--data wdbc``), the digits (``--data digits``), or the user's CSV with ``config.label`` as the label as a
    raw :class:`~torchhefl.data.Table` (columns chosen by ``config.features`` / ``config.drop``,
    identifier-like ones left out otherwise, with an
    :class:`~torchhefl.data.IdentifierColumnWarning`), which the sites encode once it is split
    (:func:`prepare`)."""
    if config.data is None or config.data == "wdbc":
        return load_wdbc()
    if config.data == "digits":
        return load_digits()
    return load_table(config.data, config.label, features=config.features, drop=config.drop)


@dataclass
class Prepared:
    """The data of a run once split and encoded: every party's rows as numbers."""

    #: every row, encoded (for the run's description; no party holds it in a deployment)
    dataset: Dataset
    train: Dataset
    test: Dataset
    #: each site's training rows, indices into ``train``
    parts: list
    #: the encoding the sites agreed on (``None`` for a table of numbers given as a Dataset)
    encoder: TableEncoder | None = None
    #: identifier-like columns left out when the table was read
    identifiers: tuple[str, ...] = ()


def prepare(config: TrainConfig, data: Dataset | Table) -> Prepared:
    """Split ``data`` (seeded, stratified), place the training rows on the sites, and, for a raw
    :class:`~torchhefl.data.Table`, encode it with the one-hot vocabulary the sites agree on
    (:func:`~torchhefl.data.agree_vocabulary`).

    The vocabulary is the union of each site's category sets, computed from its own training rows
    (sets are not summable: whoever combines them learns which categories each site holds, as the
    README says). Missing numbers stay NaN: the sites fill them during the run's set-up from
    statistics summed through the mode's protected statistics path
    (:mod:`torchhefl.federated.statistics`; :func:`run_impute` says when), as they standardise.
    With ``--impute none`` a missing value is refused here, naming its column. The held-out rows
    are encoded with the training sites' vocabulary (an unseen category: all zeros).
    """
    train, test = train_test_split(data, test_size=config.test_size, seed=config.seed)
    if config.clients > len(train):
        raise DataError(f"--clients {config.clients} is more than the {len(train)} training rows")
    if config.partition == "iid":
        parts = partition_iid(len(train), config.clients, seed=config.seed)
    else:
        parts = partition_dirichlet(train.y, config.clients, alpha=config.alpha, seed=config.seed)
    if not isinstance(data, Table):
        return Prepared(data, train, test, parts)
    encoder = agree_vocabulary([train.subset(idx) for idx in parts], impute=config.impute)
    keep = encoder.fill is not None
    if keep:
        numeric = train.numeric()
        empty = [name for name, seen in zip(train.names_of(NUMERIC), (~np.isnan(numeric)).any(axis=0)) if not seen]
        if empty:
            raise DataError(f"feature column {empty[0]!r} has no value at any site: nothing to impute it from; leave it out with --drop")
    return Prepared(encoder.transform(data, keep_missing=keep), encoder.transform(train, keep_missing=keep),
                    encoder.transform(test, keep_missing=keep), parts, encoder, data.identifiers)


def data_impute(config: TrainConfig) -> str | None:
    """:func:`run_impute` of a run on ``config.data`` as :func:`load_dataset` reads it: a CSV is a
    table the sites encode, the bundled sets are numbers."""
    if config.data in (None, "wdbc", "digits") or config.impute == "none":
        return None
    return config.impute


def run_impute(config: TrainConfig, prepared: Prepared | None) -> str | None:
    """How the parties of a run fill missing values: ``config.impute`` for a table the sites
    encoded (every site runs the passes, whether or not it has a gap, so that taking part reveals
    nothing), ``None`` for data given as numbers or with ``--impute none``."""
    if prepared is None or prepared.encoder is None or prepared.encoder.fill is None:
        return None
    return config.impute


@dataclass
class Simulation:
    """Everything a run is made of."""

    config: TrainConfig
    #: every row, for the run's description (``None`` where the parts were given without one)
    dataset: Dataset | None
    server: Server
    clients: list[Client]
    transport: InProcessTransport
    extras: dict = field(default_factory=dict)
    #: the split and encoded data the parties were given
    prepared: Prepared | None = None

    def run_round(self, server_round: int | None = None) -> RoundResult:
        """One round (:meth:`Server.run_round`), with the sites' own phase seconds added to its
        ``seconds``: the simulation reads them from the clients it holds (as each site would from
        its own log); they never cross the wire. (A site that shares its timings is counted once,
        from its replies.)"""
        result = self.server.run_round(server_round)
        seconds = dict(result.seconds)
        for client in self.clients:
            own = client.take_timings()
            if client.share_timings:
                continue
            for phase, s in own.items():
                seconds[phase] = seconds.get(phase, 0.0) + s
        result.seconds = seconds
        return result

    @property
    def public_key(self):
        """The run's public key where its mode has a key pair (``extras["public_key"]``), else ``None``."""
        return self.extras.get("public_key") if mode_of(self.config).uses_key else None

    def filled(self) -> int:
        """The missing training values the sites filled (summed over sites, as every site read it
        from the imputation pass); 0 where the run does not impute."""
        imputation = self.clients[0].imputation if self.clients else None
        return 0 if imputation is None else imputation.missing

    def preprocessing(self) -> dict:
        """How a new row is prepared for the final model, as the sites agreed during set-up (JSON-able):
        ``feature_names``, the ``standardizer`` (``mean``, ``scale`` per input entry) and, for a
        table, its ``encoding`` (columns, one-hot vocabulary, the value a missing number gets).
        Known to every site, and to a server that may read the statistics sums."""
        site = self.clients[0]
        if site.standardizer is None:
            raise ConfigError("the run has not been set up yet: no standardisation was agreed")
        out = {"standardizer": site.standardizer.to_dict()}
        if self.dataset is not None:
            out["feature_names"] = list(self.dataset.feature_names)
        encoder = None if self.prepared is None else self.prepared.encoder
        if encoder is not None:
            encoding = encoder.to_dict()
            if encoding["fill"] is not None:
                values = site.imputation.values() if site.imputation is not None and site.imputation.done else None
                names = encoder.feature_names
                encoding["fill"] = {} if values is None else {
                    name: float(values[names.index(name)]) for name, kind in zip(encoder.columns, encoder.kinds) if kind == NUMERIC
                }
                encoding["missing"] = self.filled()
            out["encoding"] = encoding
        return out

    def final_state(self) -> OrderedDict:
        """The final global state_dict, read by whoever may read it (the server, or a key-holding site)."""
        state = self.server.global_state()
        if state is None:
            state = self.clients[0].exchange.read_global_after(self.server.exchange.global_payload(), self.server.round)
        return OrderedDict((k, v.detach().clone()) for k, v in state.items())


def build(
    config: TrainConfig, *, dataset: Dataset | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Simulation:
    """Wire a run from ``config``: load and split the data, place it, and create the parties
    (:func:`assemble` with the model :func:`make_model` draws and the loss :func:`make_loss` names).

    ``max_message_bytes`` bounds each client reply the server accepts.
    """
    config.validate()
    data = dataset if dataset is not None else load_dataset(config)
    mode_of(config).validate_model(config, data.num_classes)
    prepared = prepare(config, data)
    train, test = prepared.train, prepared.test
    return assemble(
        config,
        model=make_model(config, train.num_features, train.num_classes),
        sites=[(train.X[idx], train.y[idx]) for idx in prepared.parts],
        test=(test.X, test.y),
        num_classes=data.num_classes,
        dataset=prepared.dataset,
        prepared=prepared,
        max_message_bytes=max_message_bytes,
        impute=run_impute(config, prepared),
    )


def assemble(
    config: TrainConfig,
    *,
    model: nn.Module,
    sites: list[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    loss_fn: nn.Module | None = None,
    optimizer_fn: Callable | None = None,
    dataset: Dataset | None = None,
    prepared: Prepared | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    impute: str | None = None,
    metrics: dict | None = None,
) -> Simulation:
    """Create the parties of a run around given parts: the initial ``model`` (every party starts
    from its state_dict), each site's raw training rows ``sites[i] = (X, y)`` (``X`` of shape
    ``(n, d)`` or ``(n, *shape)``, labels in ``0..num_classes-1``), the held-out ``test`` pair (held
    by the server, or split over the sites where they evaluate), the training ``loss_fn`` (default
    :func:`make_loss` of ``config.loss``; the server evaluates with a sum-reduced copy) and the
    sites' ``optimizer_fn`` (default SGD at ``config.lr``). ``config`` gives everything else: the
    mode, the rounds, the local-training settings. ``dataset`` describes the data in the run folder.
    ``impute`` (``"mean"`` or ``"median"``)
    has the parties fill the NaN in ``sites`` and ``test`` from federated statistics during set-up.
    ``metrics``: your own test metrics (:func:`~torchhefl.federated.evaluation.check_metrics`),
    computed by whoever holds test rows.
    """
    config.validate()
    if len(sites) != config.clients:
        raise ConfigError(f"{len(sites)} sites' data for a run of {config.clients} clients")
    mode = mode_of(config)
    initial = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    train_loss = make_loss(config.loss, num_classes=num_classes) if loss_fn is None else loss_fn
    eval_loss = copy.deepcopy(train_loss)
    eval_loss.reduction = "sum"

    parts_of_mode = mode.parts(config, initial)
    server_exchange = parts_of_mode.server_exchange
    if mode.signs:  # each site's signing key, and the roster the sites agree on out of band
        make_identity = parts_of_mode.identity_of or SiteIdentity
        identities = [make_identity(site_name(i)) for i in range(config.clients)]
        roster = Roster.of(identities)
        for identity, exchange in zip(identities, parts_of_mode.client_exchanges):
            exchange.set_identity(identity, roster)
        server_exchange.set_roster(roster)
    X_test, y_test = test
    test_parts = None if parts_of_mode.server_holds_test else _test_parts(config, len(y_test))

    clients = []
    for i, (X, y) in enumerate(sites):
        site_X_test = site_y_test = None
        if test_parts is not None:
            site_X_test, site_y_test = X_test[test_parts[i]], y_test[test_parts[i]]
        clients.append(
            make_client(
                config,
                i,
                X,
                y,
                model=model,
                exchange=parts_of_mode.client_exchanges[i],
                X_test=site_X_test,
                y_test=site_y_test,
                privacy=site_privacy(config, len(y)),
                num_classes=num_classes,
                client_class=parts_of_mode.client_class,
                loss_fn=copy.deepcopy(train_loss),
                optimizer_fn=optimizer_fn,
                impute=impute,
                metrics=metrics,
                **parts_of_mode.client_kwargs,
            )
        )
    transport = InProcessTransport({c.cid: c for c in clients})
    server = Server(
        model=model,
        strategy=get_strategy(config.aggregator, mu=config.mu),
        transport=transport,
        exchange=server_exchange,
        loss_fn=eval_loss,
        X_test=X_test if parts_of_mode.server_holds_test else None,
        y_test=y_test if parts_of_mode.server_holds_test else None,
        fraction=config.fraction,
        min_clients=config.min_clients,
        seed=config.seed,
        max_message_bytes=max_message_bytes,
        num_classes=num_classes,
        impute=impute,
        metrics=metrics,
    )
    parts_of_mode.connect(server, clients)
    return Simulation(config, dataset, server, clients, transport, extras=parts_of_mode.extras, prepared=prepared)


def site_data(config: TrainConfig, index: int, *, dataset: Dataset | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Site ``index``'s rows exactly as :func:`build` places them: ``(X, y, X_test, y_test)``.

    ``X`` has shape ``(n, d)`` (encoded, not yet standardised; NaN where a table misses a number, filled during set-up), ``y`` shape ``(n,)`` in {0, ..., K-1}; the test pair is the
    site's share of the held-out set, the share it evaluates on when clients evaluate. For a
    deployment (one process per site) that reproduces the simulation's split.
    """
    config.validate()
    if not 0 <= index < config.clients:
        raise ConfigError(f"site index {index} is outside 0..{config.clients - 1}")
    data = dataset if dataset is not None else load_dataset(config)
    mode_of(config).validate_model(config, data.num_classes)
    prepared = prepare(config, data)
    train, test = prepared.train, prepared.test
    idx, test_idx = prepared.parts[index], _test_parts(config, len(test))[index]
    return train.X[idx], train.y[idx], test.X[test_idx], test.y[test_idx]


def _test_parts(config: TrainConfig, num_test: int) -> list:
    """Each site's share of the ``num_test`` held-out rows (used where clients evaluate)."""
    return partition_iid(num_test, config.clients, seed=config.seed + 1)


def make_client(
    config: TrainConfig,
    index: int,
    X: np.ndarray,
    y: np.ndarray,
    *,
    model: nn.Module,
    exchange: ClientExchange,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    privacy=None,
    num_classes: int = 2,
    client_class: type[Client] = Client,
    loss_fn: nn.Module | None = None,
    **kwargs,
) -> Client:
    """Site ``index`` (named ``site<index>``) with ``config``'s local-training settings, for labels
    of ``num_classes`` classes; ``loss_fn`` defaults to :func:`make_loss` of ``config.loss``."""
    return client_class(
        site_name(index),
        index,
        X,
        y,
        model=model,
        loss_fn=make_loss(config.loss, num_classes=num_classes) if loss_fn is None else loss_fn,
        exchange=exchange,
        lr=config.lr,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        clip_norm=config.clip_norm,
        seed=config.seed,
        X_test=X_test,
        y_test=y_test,
        privacy=privacy,
        num_classes=num_classes,
        **kwargs,
    )


def site_privacy(config: TrainConfig, num_examples: int):
    """The site's DP-SGD under ``--epsilon`` (None without it)."""
    if config.epsilon is None:
        return None
    from torchhefl.federated.dp import SiteDP

    return SiteDP(dp_config(config), num_examples)


def privacy_summary(config: TrainConfig, last: dict) -> dict:
    """``{"epsilon", "privacy"}`` for the summary of a run under ``--epsilon`` (empty without it)."""
    if "epsilon" not in last:
        return {}
    return {
        "epsilon": last["epsilon"],
        "privacy": f"privacy: epsilon spent {last['epsilon']:.3f} of {config.epsilon}; " + dp_config(config).describe(),
    }


def dp_config(config: TrainConfig):
    """The run-wide :class:`~torchhefl.privacy.DPConfig` of ``config`` (which must set ``epsilon``).

    ``config.extra["insecure_seeded_dp_noise"] = True`` (from Python only, for tests: no flag and
    no Flower run config sets it) derives noise and batches from the seed; see
    :class:`~torchhefl.privacy.DPConfig`.
    """
    from torchhefl.privacy import DPConfig

    if config.clip_norm is None:
        raise ConfigError("--epsilon needs a clipping bound: give --clip-norm a number, not 'none'")
    return DPConfig(
        epsilon=config.epsilon,
        delta=config.delta,
        clip_norm=config.clip_norm,
        sample_rate=config.dp_sample_rate,
        rounds=config.rounds,
        local_steps=config.dp_steps,
        insecure_seeded_noise=config.extra.get("insecure_seeded_dp_noise") is True,
    )


def run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
    dataset: Dataset | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    after_round: Callable[[int, dict], None] | None = None,
    simulation: Simulation | None = None,
) -> dict:
    """Train ``config`` and write ``run_dir``; returns the summary (final metrics and totals).

    After every round the round's metrics are written, then a checkpoint
    (:mod:`torchhefl.federated.checkpoint`) to ``checkpoint_dir`` (default ``run_dir/checkpoints``).
    With ``resume=True`` the run continues from that checkpoint up to ``config.rounds``: the result
    is the same ``model.pt`` and ``metrics.csv`` an uninterrupted run writes. ``config`` must then
    equal the checkpoint's except for ``rounds`` (and the key folder); an HE run needs its own key
    from ``config.extra["key_dir"]``. ``after_round(round, result)`` is called once a round is saved.
    ``simulation``: parties assembled from your own parts (:func:`assemble`, as
    :class:`~torchhefl.federated.api.Federation` does) instead of those :func:`build` makes from ``config``.
    """
    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / "checkpoints" if checkpoint_dir is None else Path(checkpoint_dir)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(checkpoint_dir)
        check_resume(config, checkpoint.config, checkpoint.round)
    sim = build(config, dataset=dataset, max_message_bytes=max_message_bytes) if simulation is None else simulation
    if checkpoint is not None:
        restore_checkpoint(sim, checkpoint)
    first = 1 if checkpoint is None else checkpoint.round + 1
    recorder = RunRecorder(run_dir, config.to_dict(), [c.cid for c in sim.clients], num_classes=sim.dataset.num_classes,
                           metrics=list(sim.server.metrics))
    kept = recorder.start(resume_round=first - 1)
    if checkpoint is not None:
        log.info("resuming %s after round %d of %d", run_dir, checkpoint.round, config.rounds)
    sim.server.setup()
    last, totals = drive(
        sim.run_round,
        first=first,
        rounds=config.rounds,
        recorder=recorder,
        save=lambda: save_checkpoint(checkpoint_dir, sim, config.to_dict()),
        echo=echo,
        progress=f"{config.mode} rounds" if progress else None,
        after_round=after_round,
        totals={
            "bytes_up": sum(int(r["bytes_up"]) for r in kept),
            "bytes_down": sum(int(r["bytes_down"]) for r in kept),
            "seconds": sum(float(r["seconds_round"]) for r in recorder.kept_timings),
        },
    )
    final_state = sim.final_state()
    summary = {"data": describe_dataset(sim.dataset, config, sim.prepared, missing=sim.filled()),
               **summarize(last, totals, config.rounds)}
    summary.update(privacy_summary(config, last))
    if checkpoint is not None:
        summary["resumed_after"] = checkpoint.round
    recorder.finish(final_state, summary)
    (run_dir / "preprocessing.json").write_text(json.dumps(sim.preprocessing(), indent=1) + "\n")
    summary["run_dir"] = str(run_dir)
    return summary


#: configuration fields a resumed run may change: its length, and where its key file lives
_RESUMABLE_CHANGES = {"rounds"}
_RESUMABLE_EXTRA_CHANGES = {"key_dir"}


def check_resume(config: TrainConfig, saved: dict, saved_round: int) -> None:
    """Whether ``config`` may continue a run saved with configuration ``saved`` after ``saved_round``.

    Raises :class:`ConfigError` naming the problem: a changed setting other than ``rounds``, no
    rounds left to run, more rounds for a DP run (its noise was calibrated for the rounds it
    planned), or an HE run without the key file it was trained with.
    """
    now, defaults = config.to_dict(), type(config)().to_dict()
    for name in sorted(set(now) | set(saved)):
        if name in _RESUMABLE_CHANGES:
            continue
        a, b = now.get(name), saved.get(name, defaults.get(name))  # a field newer than the run: its default
        if name == "extra":
            a = {k: v for k, v in (a or {}).items() if k not in _RESUMABLE_EXTRA_CHANGES}
            b = {k: v for k, v in (b or {}).items() if k not in _RESUMABLE_EXTRA_CHANGES}
        if a != b:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {a!r} conflicts with the run being resumed ({b!r}); leave it out to keep the run's")
    if config.rounds <= saved_round:
        raise ConfigError(f"the run already completed {saved_round} rounds; pass --rounds above {saved_round} to continue it")
    if config.epsilon is not None and config.rounds != saved.get("rounds"):
        # the noise multiplier was calibrated for the planned rounds: more rounds would spend more
        # than the budget, while the accountant, calibrated anew, would report that they did not
        raise ConfigError(
            f"--rounds {config.rounds}: this run's DP noise was calibrated to spend epsilon {config.epsilon} over "
            f"{saved.get('rounds')} rounds; a differentially private run cannot be extended (start a new run)"
        )
    if mode_of(config).uses_key and config.extra.get("key_dir") is None:
        raise ConfigError(
            "resuming an HE run needs the run's key: pass --key-dir with the folder its key was loaded from "
            "(a run whose key was generated for it, without --key-dir, cannot be resumed)"
        )


def describe_dataset(data: Dataset, config: TrainConfig, prepared: Prepared | None = None, *, missing: int = 0) -> str:
    """One line naming the data, its size and how the label was mapped to {0, ..., K-1}; with
    ``prepared``, also the identifier columns left out and what the encoding did (``missing``: the
    training values the sites filled, as the run's imputation pass summed them)."""
    source = {None: "WDBC (scikit-learn)", "wdbc": "WDBC (scikit-learn)", "digits": "digits (scikit-learn)"}.get(
        config.data, config.data
    )
    mapping = ", ".join(f"{c} -> {i}" for i, c in enumerate(data.classes))
    line = f"data: {source}, {len(data)} rows, {data.num_features} features; label {data.label_name!r}: {mapping}"
    if prepared is not None and prepared.identifiers:
        line += "; left out " + ", ".join(repr(c) for c in prepared.identifiers)
    if prepared is not None and prepared.encoder is not None and prepared.encoder.describe(missing=missing):
        line += "; " + prepared.encoder.describe(missing=missing)
    return line
