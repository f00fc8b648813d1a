"""From Flower's run and node configs to torchhefl's Server and Client objects.

Flower gives the ServerApp a *run config* (the ``[tool.flwr.app.config]`` table of the app's
``pyproject.toml``, overridden by ``flwr run --run-config``) and each ClientApp that and its
SuperNode's *node config* (``flower-supernode --node-config``). This module turns them into the
same :class:`~torchhefl.federated.TrainConfig`, :class:`~torchhefl.federated.Server` and
:class:`~torchhefl.federated.Client` the in-process simulation uses; nothing here trains or
aggregates.

Run config keys (hyphenated :class:`TrainConfig` fields): ``mode``, ``key-holder``, ``rounds``,
``clients``, ``fraction``, ``min-clients``, ``lr``, ``batch-size``, ``local-epochs``,
``clip-norm`` (0 turns clipping off), ``aggregator``, ``mu``, ``partition``, ``alpha``, ``seed``,
``loss``, ``test-size``, ``he-resolution`` and ``he-rounding`` (``--key-holder clients``: the
packed encoding of every upload, which each party derives from the run config alone, as it derives
the model; 0 is the default encoding), ``model`` and ``hidden`` (layer sizes, comma-separated), ``data``
(a bundled data set, ``wdbc`` or ``digits``, for sites whose node config names no CSV; empty: WDBC);
``impute``, ``features`` and ``drop`` (sites with their own CSV tables: as ``--impute``,
``--features`` and ``--drop``, column names comma-separated);
and ``reply-timeout`` (seconds a request may wait for a site),
``node-timeout`` (seconds to wait for every site's SuperNode), ``run-dir`` (where the ServerApp
records metrics and, in HEM, the final model; empty for none). With ``--key-holder server`` (HEM)
the ServerApp also reads ``server-key-dir`` (a directory *on the server's machine* holding the
server's ``private.json``; empty: a fresh 2048-bit key pair for the run), ``server-allow-insecure-keys``
(accept a key under 2048 bits; tests and demos only), and ``server-test-data``/``server-test-label``
(the server's own held-out CSV, on which it evaluates the model it holds; empty: the held-out split
of WDBC, as the simulation makes it). In the modes whose sites sign (both HE modes,
:mod:`torchhefl.flower.identities`): ``roster-fingerprint`` (the SHA-256 fingerprint of the
roster of the sites' signing keys, which every party checks the roster it loaded against) and
``server-roster`` (the roster's path on the server's machine; empty: ``roster.json`` in the app
directory).

Node config keys (one SuperNode per site): ``partition-id`` (this site's index), ``num-partitions``
(must equal ``clients``), ``key-dir`` (the directory of the sites' ``private.json``; ``--key-holder
clients`` only: in HEM a site holds no private key and gets the server's public key from the server),
``data`` and ``label`` (the site's own CSV table; without them the site takes its share of WDBC
exactly as the simulation splits it), ``model-out`` (where to save the latest global model the
site has decrypted, as a plain state_dict, mode 0600; HEM sites never see the model), ``allow-insecure-keys``
(accept a key under 2048 bits; tests and demos only), ``share-timings`` (send the seconds of each
fit phase to the server; default false: a site logs its timings and keeps them, since they reveal
its number of local steps and so its sample count). In the modes whose sites sign (both HE
modes): ``identity`` (the site's signing key, ``identity.json`` of ``python -m train.keys identity``;
default: ``identity.json`` in ``key-dir`` when that is set) and ``roster`` (the roster file on the
site's machine).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
import warnings
from logging import INFO, WARNING
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.common.logger import log

from torchhefl.data import IdentifierColumnWarning, TableEncoder, load_table, local_summary, train_test_split
from torchhefl.data.table import CATEGORICAL, NUMERIC
from torchhefl.exceptions import ConfigError, MalformedMessageError, ProtocolError
from torchhefl.federated.client import Client
from torchhefl.federated.config import BUILTIN_DATA, DP_CLIP_NORM, DP_LR, TrainConfig
from torchhefl.federated.messages import EVALUATE_INS, FIT_INS, STANDARDIZE_INS, decode_request, encode_request, payload_of
from torchhefl.federated.modes import mode_of
from torchhefl.federated.server import Server
from torchhefl.federated.simulation import (
    data_impute,
    load_dataset,
    make_client,
    make_loss,
    make_model,
    prepare,
    site_data,
    site_privacy,
)
from torchhefl.federated.strategies import get_strategy
from torchhefl.flower.identities import check_fingerprint_setting, load_server_roster, load_site_identity
from torchhefl.flower.records import HELLO_TYPE
from torchhefl.secure import PublicKey, strict_json
from torchhefl.secure.identity import Roster
from torchhefl.secure.files import write_private_file

__all__ = [
    "DeploymentSettings",
    "HELLO_TYPE",
    "Hellos",
    "RUN_CONFIG_DEFAULTS",
    "Site",
    "build_server",
    "initial_model",
    "read_hellos",
    "server_roster",
]

#: the TrainConfig fields a run config sets (hyphenated); the others are the app's or the sites'
_TRAIN_FIELDS = (
    "mode", "key_holder", "rounds", "clients", "fraction", "min_clients", "lr", "batch_size", "local_epochs",
    "clip_norm", "aggregator", "mu", "partition", "alpha", "seed", "loss", "test_size", "epsilon", "delta",
    "dp_sample_rate", "dp_steps", "he_resolution", "he_rounding", "model", "hidden", "data", "impute", "features", "drop",
)
_TRAIN_DEFAULTS = TrainConfig()
#: the run config keys of a torchhefl Flower app, with their defaults (TrainConfig's; a run config
#: has no "none": an unset number, epsilon, is 0.0)
RUN_CONFIG_DEFAULTS: dict[str, bool | int | float | str] = {
    **{name.replace("_", "-"): 0.0 if getattr(_TRAIN_DEFAULTS, name) is None else getattr(_TRAIN_DEFAULTS, name)
       for name in _TRAIN_FIELDS},
    # a run config holds scalars: the hidden sizes comma-separated, the built-in data set by name ("": WDBC)
    "hidden": ",".join(str(h) for h in _TRAIN_DEFAULTS.hidden),
    "data": "",
    # a site CSV's columns, comma-separated ("": every column but identifier-like ones)
    "features": "",
    "drop": "",
    "reply-timeout": 600.0,
    "node-timeout": 300.0,
    "run-dir": "",
    "server-key-dir": "",
    "server-allow-insecure-keys": False,
    "server-test-data": "",
    "server-test-label": "",
    "roster-fingerprint": "",
    "server-roster": "",
}
_DEPLOYMENT_KEYS = (
    "reply-timeout", "node-timeout", "run-dir", "server-key-dir", "server-allow-insecure-keys",
    "server-test-data", "server-test-label", "roster-fingerprint", "server-roster",
)
_NODE_KEYS = (
    "partition-id", "num-partitions", "key-dir", "allow-insecure-keys", "data", "label", "model-out", "share-timings",
    "identity", "roster",
)


class _ModeFlags(NamedTuple):
    """A run config's mode keys, as :func:`~torchhefl.federated.modes.mode_of` reads them."""

    mode: str
    key_holder: str


#: the ConfigRecord of a hello reply, and of a site's state between messages
#: the agreed one-hot vocabulary of the sites' CSV tables, sent to every site after the hellos
VOCABULARY_INS, VOCABULARY_RES = "vocabulary_ins", "vocabulary_res"
#: the most categories a text column's vocabulary may hold
MAX_CATEGORIES = 4096
_HELLO_RECORD = "torchhefl.hello"
_STATE_RECORD = "torchhefl.site"
_HEX_KEY = re.compile(r"[0-9a-f]{0,4096}")  # the sites' public n (at most 16384 bits), or "" for none
_DIGEST = re.compile(r"[0-9a-f]{64}")
_MAX_CLASSES = 10_000


@dataclass
class DeploymentSettings:
    """A run config, read: the training configuration and the deployment's own settings."""

    config: TrainConfig
    reply_timeout: float = 600.0
    node_timeout: float = 300.0
    run_dir: str = ""
    #: HEM only, all on the server's machine: its key folder, whether a small key is accepted, and
    #: its held-out CSV and label column
    server_key_dir: str = ""
    server_allow_insecure_keys: bool = False
    server_test_data: str = ""
    server_test_label: str = ""
    #: the signing modes only: the fingerprint of the roster every party must hold, and the
    #: roster's path on the server's machine (empty: ``roster.json`` in the app directory)
    roster_fingerprint: str = ""
    server_roster: str = ""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> "DeploymentSettings":
        """Read Flower's run config; unknown keys and bad values raise :class:`ConfigError`."""
        unknown = sorted(set(run_config) - set(RUN_CONFIG_DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown run config keys: {', '.join(unknown)} (known: {', '.join(RUN_CONFIG_DEFAULTS)})")
        values = {**RUN_CONFIG_DEFAULTS, **run_config}
        fields = {k.replace("-", "_"): v for k, v in values.items() if k not in _DEPLOYMENT_KEYS}
        mode = mode_of(_ModeFlags(str(values["mode"]), str(values["key-holder"])))
        if not mode.clips_gradients and "clip-norm" not in run_config:
            fields["clip_norm"] = 0.0  # its sites train on ciphertexts: nothing to clip
        fields["clip_norm"] = _number("clip_norm", fields["clip_norm"]) or None
        for name in ("rounds", "clients", "min_clients", "batch_size", "local_epochs", "seed", "dp_steps"):
            fields[name] = _integer(name, fields[name])
        for name in ("fraction", "lr", "mu", "alpha", "test_size", "epsilon", "delta", "dp_sample_rate"):
            fields[name] = _number(name, fields[name])
        # epsilon = 0 (the default) trains without DP; with a budget, the CLI's --epsilon defaults apply
        fields["epsilon"] = fields["epsilon"] or None
        # he-resolution = 0 (the default): the default encoding
        fields["he_resolution"] = _number("he_resolution", fields["he_resolution"]) or None
        fields["hidden"] = _sizes(fields["hidden"])
        for name in ("features", "drop"):
            if not isinstance(fields[name], str):
                raise ConfigError(f"run config {name} must be column names, comma-separated, got {fields[name]!r}")
            fields[name] = [c.strip() for c in fields[name].split(",")] if fields[name].strip() else None
        if not isinstance(fields["data"], str) or fields["data"] not in ("", *BUILTIN_DATA):
            raise ConfigError(
                f"run config data must name a data set bundled with scikit-learn ({', '.join(BUILTIN_DATA)}) or be empty "
                f"(WDBC), got {fields['data']!r}; a site's own CSV is its node config's data"
            )
        fields["data"] = fields["data"] or None
        if fields["epsilon"] is not None:
            if "lr" not in run_config:
                fields["lr"] = DP_LR
            if "clip-norm" not in run_config and mode.clips_gradients:
                fields["clip_norm"] = DP_CLIP_NORM
        config = TrainConfig(**fields)
        if mode.clip_norm_refusal() is not None and config.clip_norm is not None and config.epsilon is None:
            raise ConfigError(
                f"clip-norm cannot be used with key-holder=\"{mode.key_holder}\": clients train on encrypted weights "
                "and never see a plaintext gradient to clip (leave clip-norm out, or set clip-norm=0)"
            )
        config.validate()
        reply_timeout, node_timeout = _number("reply_timeout", values["reply-timeout"]), _number("node_timeout", values["node-timeout"])
        if reply_timeout <= 0 or node_timeout <= 0:
            raise ConfigError("reply-timeout and node-timeout must be positive numbers of seconds")
        if not isinstance(values["server-allow-insecure-keys"], bool):
            raise ConfigError("run config server-allow-insecure-keys must be true or false")
        if bool(values["server-test-data"]) != bool(values["server-test-label"]):
            raise ConfigError("run config server-test-data and server-test-label go together")
        return cls(
            config, reply_timeout, node_timeout, str(values["run-dir"]), str(values["server-key-dir"]),
            values["server-allow-insecure-keys"], str(values["server-test-data"]), str(values["server-test-label"]),
            roster_fingerprint=check_fingerprint_setting(values["roster-fingerprint"]),
            server_roster=str(values["server-roster"]),
        )


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"run config {name.replace('_', '-')} must be a number, got {value!r}")
    return float(value)


def _sizes(value: object) -> list[int]:
    """The run config's ``hidden``: layer sizes, comma-separated (``"64,32"``), or one integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", value):
        raise ConfigError(f"run config hidden must be layer sizes, comma-separated (e.g. \"64,32\"), got {value!r}")
    return [int(h) for h in value.split(",")]


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value:
        raise ConfigError(f"run config {name.replace('_', '-')} must be an integer, got {value!r}")
    return int(value)


#: the run's initial model, drawn from ``config.seed`` exactly as the simulation draws it
initial_model = make_model


# -- the site side ------------------------------------------------------------------------------


class Site:
    """This SuperNode's site: its :class:`Client`, rebuilt for each Flower message.

    Flower runs a fresh ClientApp process for every message, so the client object cannot live
    across rounds in memory. What it must keep is kept in Flower's per-run node state
    (``context.state``, which never leaves the node): the vocabulary its CSV table was encoded
    with, the set-up requests it answered (replayed
    into the rebuilt client, which re-derives the same keys, pairwise seeds and standardisation
    from them), the last round it trained (replay protection), and in HEM the client's own secrets
    as bytes (its X25519 private key, and where it is in a fit that waits for a refresh, with that
    refresh's blinding masks, and its secure-aggregation state: this round's keys, seed and shares).
    Everything else a client holds is either rebuilt identically from the node config (rows, key,
    signing key, roster) or sent again by the server (the global model).

    Args:
        config: the run's training configuration.
        node_config: this SuperNode's node config (see the module docstring).
        state: Flower's ``context.state`` of this run on this node (updated in place).
        roster_fingerprint: the run config's ``roster-fingerprint``, which the roster named by the
            node config must have (the signing modes only).
    """

    def __init__(
        self, config: TrainConfig, node_config: Mapping[str, object], state: RecordDict | None = None, *,
        roster_fingerprint: str = "", parts=None,
    ) -> None:
        unknown = sorted(set(node_config) - set(_NODE_KEYS))
        if unknown and parts is None:  # with your own parts, your site_data reads keys of its own
            raise ConfigError(f"unknown node config keys: {', '.join(unknown)} (known: {', '.join(_NODE_KEYS)})")
        self.config = config
        self.node_config = dict(node_config)
        self.index = _node_int(node_config, "partition-id")
        partitions = _node_int(node_config, "num-partitions")
        if partitions != config.clients:
            raise ConfigError(f"node config num-partitions={partitions}, but the run has clients={config.clients}")
        if not 0 <= self.index < partitions:
            raise ConfigError(f"node config partition-id={self.index} is outside 0..{partitions - 1}")
        self.share_timings = node_config.get("share-timings", False)
        if not isinstance(self.share_timings, bool):
            raise ConfigError(f"node config share-timings must be true or false, got {self.share_timings!r}")
        self.state = state if state is not None else RecordDict()
        self.roster_fingerprint = roster_fingerprint
        #: your own parts (:class:`~torchhefl.flower.parts.FlowerParts`), or ``None`` for the run config's
        self.parts = parts
        self._load_rows()
        mode = mode_of(config)
        mode.validate_model(config, len(self.classes))
        key_dir = self.node_config.get("key-dir")
        self._mode_parts = mode.site(
            config, key_dir=str(key_dir) if key_dir else None,
            allow_insecure_keys=self.node_config.get("allow-insecure-keys") is True,
        )
        if mode.signs:
            self._mode_parts.exchange.set_identity(*load_site_identity(config, self.node_config, self.index, self.roster_fingerprint))
        #: the site's client, once its rows are numbers (a table's: once the vocabulary is agreed)
        self.client: Client | None = None
        vocabulary = self._record().get("vocabulary")
        if self.tables is None:
            self.client = self._build_client(*self._arrays)
        elif vocabulary is not None:
            self._encode(strict_json.loads(str(vocabulary), what="the saved vocabulary"))
        if self.client is not None:
            self._restore()

    def _build_client(self, X, y, X_test, y_test) -> Client:
        config, parts, own = self.config, self._mode_parts, self.parts
        k = len(self.classes)
        if own is None:
            model, extra = initial_model(config, X.shape[1], k), {}
        else:
            model = own.initial_model(config)
            extra = {"loss_fn": own.train_loss(config, k), "optimizer_fn": own.optimizer, "metrics": own.metrics}
        return make_client(
            config, self.index, X, y, model=model, exchange=parts.exchange,
            X_test=X_test, y_test=y_test, client_class=parts.client_class, privacy=site_privacy(config, len(y)),
            share_timings=self.share_timings, num_classes=k, impute=self.impute, **extra,
        )

    def _load_rows(self) -> None:
        """This site's training and held-out rows (``_arrays``; a CSV's as raw ``tables``, encoded
        once the vocabulary is agreed), and the label values its labels 0..K-1 stand for."""
        data, label = self.node_config.get("data"), self.node_config.get("label")
        self.tables = None
        if self.parts is not None:  # your own site_data reads this site's rows
            self.impute = None
            X, y, X_test, y_test, self.classes = self.parts.rows(self.node_config)
            self._arrays = (X, y, X_test, y_test)
            return
        if not data:
            if label:
                raise ConfigError("node config label is given without data")
            self.impute = data_impute(self.config)  # a table's gaps are filled in the run's set-up
            self._arrays = site_data(self.config, self.index)
            self.classes = load_dataset(self.config).classes
            return
        if not label:
            raise ConfigError(f'node config data="{data}" needs label="<column>" too')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IdentifierColumnWarning)
            table = load_table(str(data), str(label), features=self.config.features, drop=self.config.drop)
        for w in caught:
            log(WARNING, "site %d: %s", self.index, w.message)
        train, test = train_test_split(table, test_size=self.config.test_size, seed=self.config.seed)
        self.tables, self.classes = (train, test), table.classes
        self.impute = None if self.config.impute == "none" else self.config.impute

    def _encode(self, vocabulary: object) -> None:
        """Encode this site's table with the agreed ``vocabulary`` (checked) and build its client."""
        train, test = self.tables
        text = train.names_of(CATEGORICAL)
        if not isinstance(vocabulary, dict) or sorted(vocabulary) != sorted(text):
            raise MalformedMessageError(f"a vocabulary must name exactly this site's text columns {text}")
        own = dict(zip(text, local_summary(train).categories))
        for name in text:
            cats = vocabulary[name]
            if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats) or cats != sorted(set(cats)):
                raise MalformedMessageError(f"the vocabulary of {name!r} is not a sorted list of distinct strings")
            if len(cats) > MAX_CATEGORIES:
                raise MalformedMessageError(f"the vocabulary of {name!r} has {len(cats)} categories, above {MAX_CATEGORIES}")
            if not own[name] <= set(cats):
                raise MalformedMessageError(f"the vocabulary of {name!r} leaves out categories this site has")
        encoder = TableEncoder(train.columns, train.kinds, vocabulary, None if self.impute is None else {},
                               self.impute or "none")
        keep = self.impute is not None
        rows, held_out = encoder.transform(train, keep_missing=keep), encoder.transform(test, keep_missing=keep)
        self.vocabulary = vocabulary
        self.client = self._build_client(rows.X, rows.y, held_out.X, held_out.y)

    def hello(self) -> RecordDict:
        """What the server learns before the run: which site this is, the feature count, the number
        of classes and a digest of their label values (every site must map the same values to
        0..K-1), the public key; for a CSV table, its columns and the categories its training rows
        hold per text column (the vocabulary is their union; see :func:`read_hellos`)."""
        public_key = getattr(self._mode_parts.exchange, "public_key", None)
        fields = {
            "partition-id": self.index,
            "num-partitions": self.config.clients,
            "num-classes": len(self.classes),
            "classes": classes_digest(self.classes),
            "public-key": "" if public_key is None else format(int(public_key.n), "x"),
        }
        if self.tables is None:
            fields["num-features"] = int(math.prod(self._arrays[0].shape[1:]))
        else:
            train = self.tables[0]
            fields["num-features"] = len(train.columns)
            text = train.names_of(CATEGORICAL)
            fields["table"] = json.dumps({
                "columns": train.columns, "kinds": train.kinds,
                "categories": {name: sorted(c) for name, c in zip(text, local_summary(train).categories)},
            }, sort_keys=True)
        return RecordDict({_HELLO_RECORD: ConfigRecord(fields)})

    def handle(self, request: bytes) -> bytes:
        """Answer one server request (wire-format bytes in and out) and keep what must outlive it."""
        msg = decode_request(request)
        if msg.kind == VOCABULARY_INS:
            return self._on_vocabulary(msg)
        if self.client is None:
            raise ProtocolError(f"site {self.index} was sent {msg.kind} before the vocabulary of its table")
        reply = self.client.handle(request)
        timings = self.client.take_timings()
        if timings:  # a fit finished: this site's own figures, for its own log
            log(INFO, "site %d: fit of round %s took %s", self.index, msg.meta.get("round"),
                ", ".join(f"{k} {v:.3f} s" for k, v in sorted(timings.items())))
        record = self._record()
        if msg.kind == STANDARDIZE_INS or msg.kind in mode_of(self.config).setup_kinds:
            record["setup"] = [*record.get("setup", []), bytes(request)]
        if msg.kind in (FIT_INS, EVALUATE_INS) and "payload" in msg.arrays:
            record["global"] = payload_of(msg)  # a later fit request may name it by its digest
        record["last-round"] = list(self.client.last_round)
        record["asked-global"] = list(self.client.asked_global or [])
        for name, value in self._secrets().items():
            record[name] = value
        self.state[_STATE_RECORD] = record
        if msg.kind == EVALUATE_INS and self.node_config.get("model-out"):
            _save_state(self.client.model.state_dict(), Path(str(self.node_config["model-out"])))
        return reply

    def _on_vocabulary(self, msg) -> bytes:
        if self.tables is None:
            raise ProtocolError(f"site {self.index} holds no CSV table: it needs no vocabulary")
        vocabulary = msg.meta.get("vocabulary")
        saved = self._record().get("vocabulary")
        if saved is not None:  # agreed before (the server sent it again): the client built from it stays
            if strict_json.loads(str(saved), what="the saved vocabulary") != vocabulary:
                raise ProtocolError(f"site {self.index} already agreed on another vocabulary; it agrees once a run")
            return encode_request(VOCABULARY_RES, {"cid": f"site{self.index}"})
        self._encode(vocabulary)
        record = self._record()
        record["vocabulary"] = json.dumps(vocabulary, sort_keys=True)
        self.state[_STATE_RECORD] = record
        return encode_request(VOCABULARY_RES, {"cid": f"site{self.index}"})

    def _record(self) -> ConfigRecord:
        record = self.state.config_records.get(_STATE_RECORD)
        return ConfigRecord(dict(record)) if record is not None else ConfigRecord()

    def _secrets(self) -> dict[str, bytes]:
        site_state = getattr(self.client, "site_state", None)
        return {} if site_state is None else {f"secret-{k}": v for k, v in site_state().items()}

    def _restore(self) -> None:
        record = self.state.config_records.get(_STATE_RECORD)
        if record is None:
            return
        restore = getattr(self.client, "restore_site_state", None)
        if restore is not None:
            restore({k.removeprefix("secret-"): bytes(v) for k, v in record.items() if k.startswith("secret-")})
        for request in record.get("setup", []):
            self.client.handle(bytes(request))
        if "global" in record:
            self.client.remember_global(bytes(record["global"]))
        last = record.get("last-round", [0, 0])
        self.client.last_round = (int(last[0]), int(last[1]))
        asked = record.get("asked-global", [])
        self.client.asked_global = (int(asked[0]), int(asked[1])) if len(asked) == 2 else None


def _node_int(node_config: Mapping[str, object], key: str) -> int:
    value = node_config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"node config {key} must be an integer (e.g. --node-config '{key}=0'), got {value!r}")
    return value


def _save_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Save a decrypted model as a plain state_dict, mode 0600 (the server must not read it), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(OrderedDict((k, v.detach().clone()) for k, v in state.items()), buffer)
    write_private_file(path, buffer.getvalue())


# -- the server side ----------------------------------------------------------------------------


@dataclass
class Hellos:
    """What the SuperNodes said about themselves: the site of each node, and what they agree on."""

    nodes: dict[str, int]
    num_features: int
    public_key: PublicKey | None
    #: the number of classes every site's labels take (2: binary)
    num_classes: int = 2
    #: for sites with CSV tables: per text column, the union of the sites' categories, sorted
    #: (``None``: the sites hold numbers); and the tables' columns and their kinds
    vocabulary: dict[str, list[str]] | None = None
    columns: list[str] | None = None
    kinds: list[str] | None = None


def read_hellos(config: TrainConfig, replies: Mapping[int, RecordDict]) -> Hellos:
    """Check the hello replies ``{node id: content}``: one node per site, one feature count, one
    labelling (number of classes and the digest of their values), one key."""
    nodes: dict[str, int] = {}
    features, keys, labellings = set(), set(), set()
    replies_tables: dict[str, dict] = {}
    for node_id, content in replies.items():
        record = content.config_records.get(_HELLO_RECORD)
        if record is None:
            raise MalformedMessageError(f"SuperNode {node_id} answered the hello without a {_HELLO_RECORD!r} record")
        index, partitions = record.get("partition-id"), record.get("num-partitions")
        num_features, key = record.get("num-features"), record.get("public-key", "")
        num_classes, digest = record.get("num-classes"), record.get("classes")
        if (
            type(index) is not int
            or type(partitions) is not int
            or type(num_features) is not int
            or num_features < 1
            or type(num_classes) is not int
            or not 2 <= num_classes <= _MAX_CLASSES
            or not isinstance(digest, str)
            or not _DIGEST.fullmatch(digest)
            or not isinstance(key, str)
            or not _HEX_KEY.fullmatch(key)
        ):
            raise MalformedMessageError(
                f"SuperNode {node_id} answered the hello with a malformed record (integers partition-id, "
                f"num-partitions and num-features >= 1, num-classes in [2, {_MAX_CLASSES}], a SHA-256 classes digest, "
                "a hexadecimal public-key or none)"
            )
        if partitions != config.clients:
            raise ConfigError(f"SuperNode {node_id} has num-partitions={partitions}, the run has clients={config.clients}")
        cid = f"site{index}"
        if cid in nodes:
            raise ConfigError(f"SuperNodes {nodes[cid]} and {node_id} both claim partition-id={index}")
        nodes[cid] = node_id
        if "table" in record:
            replies_tables[cid] = _hello_table(node_id, record.get("table"))
            num_features = len(replies_tables[cid]["columns"])
        features.add(num_features)
        keys.add(key)
        labellings.add((num_classes, digest))
    missing = [f"site{i}" for i in range(config.clients) if f"site{i}" not in nodes]
    if missing:
        raise ProtocolError(f"no SuperNode answered for {', '.join(missing)}")
    if len(features) != 1:
        raise ConfigError(f"the sites disagree on the number of features: {sorted(features)}")
    if len(labellings) != 1:
        counts = sorted({k for k, _ in labellings})
        raise ConfigError(
            "the sites' labels differ: " + (f"{' vs '.join(map(str, counts))} classes" if len(counts) > 1 else
                                            "the same number of classes, but other label values")
            + "; every site's label column must take the same values (each present at every site)"
        )
    if len(keys) != 1:
        raise ConfigError("the sites hold different key pairs; every site needs the same private.json")
    key = keys.pop()
    if mode_of(config).sites_hold_key and not key:
        raise ConfigError(f"--mode {config.mode}, but the sites sent no public key")
    ordered = {f"site{i}": nodes[f"site{i}"] for i in range(config.clients)}
    try:
        public_key = PublicKey(int(key, 16)) if key else None
    except ValueError as e:
        raise MalformedMessageError(f"the sites' public key is not a Paillier modulus: {e}") from None
    num_classes = labellings.pop()[0]
    mode_of(config).validate_model(config, num_classes)
    tables = {cid: replies_tables[cid] for cid in ordered if cid in replies_tables}
    if not tables:
        return Hellos(ordered, features.pop(), public_key, num_classes)
    if len(tables) != len(ordered):
        raise ConfigError("some sites hold a CSV table and others a bundled data set; every site's node config must name its CSV")
    layouts = {(tuple(t["columns"]), tuple(t["kinds"])) for t in tables.values()}
    if len(layouts) != 1:
        raise ConfigError(
            "the sites' tables have different columns (or kinds of column); choose the same columns at every "
            "site with the run config's features or drop"
        )
    columns, kinds = layouts.pop()
    text = [c for c, k in zip(columns, kinds) if k == CATEGORICAL]
    vocabulary = {name: sorted(set().union(*(t["categories"][name] for t in tables.values()))) for name in text}
    for name, cats in vocabulary.items():
        if len(cats) > MAX_CATEGORIES:
            raise ConfigError(f"text column {name!r} has {len(cats)} categories over the sites, above {MAX_CATEGORIES}")
    num_features = sum(k == NUMERIC for k in kinds) + sum(len(c) for c in vocabulary.values())
    if num_features < 1:
        raise ConfigError("the sites' tables encode to no feature at all")
    return Hellos(ordered, num_features, public_key, num_classes, vocabulary=vocabulary, columns=list(columns), kinds=list(kinds))


def _hello_table(node_id: int, raw: object) -> dict:
    """A hello's ``table`` field, checked: its columns, their kinds, each text column's categories."""
    try:
        doc = strict_json.loads(raw if isinstance(raw, str) else "", what=f"SuperNode {node_id}'s table")
    except MalformedMessageError:
        doc = None
    ok = (
        isinstance(doc, dict) and set(doc) == {"columns", "kinds", "categories"}
        and isinstance(doc["columns"], list) and isinstance(doc["kinds"], list)
        and len(doc["columns"]) == len(doc["kinds"]) and 0 < len(doc["columns"]) <= 100_000
        and all(isinstance(c, str) for c in doc["columns"]) and len(set(doc["columns"])) == len(doc["columns"])
        and all(k in (NUMERIC, CATEGORICAL) for k in doc["kinds"])
        and isinstance(doc["categories"], dict)
        and sorted(doc["categories"]) == sorted(c for c, k in zip(doc["columns"], doc["kinds"]) if k == CATEGORICAL)
        and all(isinstance(v, list) and len(v) <= MAX_CATEGORIES and all(isinstance(x, str) for x in v)
                for v in doc["categories"].values())
    )
    if not ok:
        raise MalformedMessageError(
            f"SuperNode {node_id} answered the hello with a malformed table (distinct column names, kinds "
            f"'{NUMERIC}' or '{CATEGORICAL}', and at most {MAX_CATEGORIES} categories per text column)"
        )
    return doc


def send_vocabulary(transport, hellos: Hellos) -> None:
    """Send the agreed vocabulary to every site (sites with CSV tables encode their rows with it);
    a site that refuses it stops the run, naming it: no site can train without the agreed columns."""
    if hellos.vocabulary is None:
        return
    request = encode_request(VOCABULARY_INS, {"vocabulary": hellos.vocabulary})
    for cid, answer in transport.send_all(list(hellos.nodes), request).items():
        if isinstance(answer, Exception):
            raise ProtocolError(f"{cid} did not take the vocabulary: {answer}")
        reply = decode_request(answer)
        if reply.kind != VOCABULARY_RES or reply.meta.get("cid") != cid:
            raise ProtocolError(f"{cid} answered the vocabulary with {reply.kind}")


def server_roster(settings: DeploymentSettings, app_dir: Path | None = None) -> Roster | None:
    """The ServerApp's roster in the signing modes (run config ``server-roster``, else ``roster.json``
    in ``app_dir``, checked against ``roster-fingerprint``); ``None`` where the sites do not sign."""
    config = settings.config
    if not mode_of(config).signs:
        return None
    return load_server_roster(config, settings.server_roster, settings.roster_fingerprint, app_dir)


def build_server(
    config: TrainConfig, transport, hellos: Hellos, settings: DeploymentSettings | None = None, *,
    roster: Roster | None = None, parts=None,
) -> Server:
    """The run's :class:`Server` over ``transport``.

    With ``--key-holder clients`` it gets the sites' public key only, and holds no data: the sites
    evaluate the model on their shares of the held-out set and the server adds up their counts (in
    plain mode too). With ``--key-holder server`` (HEM) it holds the key pair, read from
    ``settings.server_key_dir`` on its own machine (never from the app bundle), and evaluates the
    model it holds on its own held-out set (``settings.server_test_data``, else WDBC's held-out split).
    In the modes whose sites sign, ``roster`` is the sites' roster (:func:`server_roster`); default
    the one ``settings`` name, with no app directory.
    """
    settings = settings or DeploymentSettings(config)
    k = hellos.num_classes
    model = initial_model(config, hellos.num_features, k) if parts is None else parts.initial_model(config)
    initial = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    mode = mode_of(config)
    exchange = mode.server_exchange(
        config, initial, public_key=hellos.public_key, key_dir=settings.server_key_dir or None,
        allow_insecure_keys=settings.server_allow_insecure_keys,
    )
    if mode.signs:
        exchange.set_roster(roster if roster is not None else server_roster(settings))
    X_test = y_test = None
    if mode.server_evaluates:
        own = None if parts is None else parts.server_rows()
        X_test, y_test = own if own is not None else _server_held_out(config, settings, hellos)
    return Server(
        model=model,
        strategy=get_strategy(config.aggregator, mu=config.mu),
        transport=transport,
        exchange=exchange,
        loss_fn=make_loss(config.loss, reduction="sum", num_classes=k) if parts is None else parts.train_loss(config, k, "sum"),
        X_test=X_test,
        y_test=y_test,
        fraction=config.fraction,
        min_clients=config.min_clients,
        seed=config.seed,
        num_classes=hellos.num_classes,
        impute=server_impute(config, hellos),
        metrics=None if parts is None else parts.metrics,
    )


def classes_digest(classes) -> str:
    """SHA-256 (hex) of a data set's label values in the order they map to 0..K-1, as the hello
    carries them: sites whose labels mean different classes must not train one model."""
    return hashlib.sha256(json.dumps([str(c) for c in classes]).encode()).hexdigest()


def server_impute(config: TrainConfig, hellos: Hellos) -> str | None:
    """How the run fills missing values: ``config.impute`` for sites with CSV tables (unless
    ``none``), as :func:`~torchhefl.federated.simulation.data_impute` says for the bundled sets."""
    if hellos.vocabulary is not None:
        return None if config.impute == "none" else config.impute
    return data_impute(config)


def _server_held_out(config: TrainConfig, settings: DeploymentSettings, hellos: Hellos) -> tuple[np.ndarray, np.ndarray]:
    """The HEM server's held-out rows (raw features, NaN where a number is missing and the run
    imputes) and labels: its own CSV encoded with the sites' vocabulary, else the simulation's split."""
    if settings.server_test_data:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IdentifierColumnWarning)
            table = load_table(settings.server_test_data, settings.server_test_label, features=config.features, drop=config.drop)
        for w in caught:
            log(WARNING, "server held-out set: %s", w.message)
        if hellos.vocabulary is not None:
            if table.columns != hellos.columns or table.kinds != hellos.kinds:
                raise ConfigError("the server's held-out table has other columns (or kinds of column) than the sites' tables")
            vocabulary = hellos.vocabulary
        elif table.names_of(CATEGORICAL):
            raise ConfigError(f"the server's held-out set has text columns {table.names_of(CATEGORICAL)}, but the sites' data are numbers")
        else:
            vocabulary = {}
        impute = server_impute(config, hellos)
        encoder = TableEncoder(table.columns, table.kinds, vocabulary, None if impute is None else {}, impute or "none")
        data = encoder.transform(table, keep_missing=impute is not None)
        X, y = data.X, data.y
    else:
        test = prepare(config, load_dataset(config)).test  # encoded as the sites encode theirs (site_data)
        X, y = test.X, test.y
    if X.shape[1] != hellos.num_features:
        raise ConfigError(f"the server's held-out set has {X.shape[1]} features, the sites have {hellos.num_features}")
    return X, y
