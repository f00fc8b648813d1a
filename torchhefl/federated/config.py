"""The configuration of one federated training run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from torchhefl.data.encoding import IMPUTE
from torchhefl.exceptions import ConfigError
from torchhefl.federated.modes import key_holders, mode_of
from torchhefl.secure.packing import ROUNDINGS

__all__ = ["BUILTIN_DATA", "DP_CLIP_NORM", "DP_LR", "LOSSES", "MODELS", "PARTITIONS", "TrainConfig"]

LOSSES = ("taylor", "bce")
#: ``--model``: logistic regression (softmax regression on more than 2 classes), or an MLP with ReLU
MODELS = ("logreg", "mlp")
#: the ``--data`` names of the data sets bundled with scikit-learn (no ``--label``); ``None`` is WDBC
BUILTIN_DATA = ("wdbc", "digits")
PARTITIONS = ("iid", "dirichlet")
#: learning rate and clipping bound used with --epsilon unless given (few, large, clipped steps:
#: see the README's privacy section)
DP_LR = 0.5
DP_CLIP_NORM = 0.3


@dataclass
class TrainConfig:
    """Every setting of a run; ``config.json`` is this, as JSON.

    The defaults are the ones ``python -m train.federated`` uses (see the README for why).
    """

    mode: str = "he"
    key_holder: str = "clients"
    key_bits: int = 2048
    rounds: int = 30
    clients: int = 3
    fraction: float = 1.0
    min_clients: int = 1
    lr: float = 0.1
    batch_size: int = 16
    local_epochs: int = 2
    clip_norm: float | None = 5.0
    aggregator: str = "fedavg"
    mu: float = 0.01
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    loss: str = "taylor"
    test_size: float = 0.2
    epsilon: float | None = None
    delta: float = 1e-5
    dp_sample_rate: float = 1.0
    dp_steps: int = 1
    data: str | None = None
    label: str | None = None
    he_resolution: float | None = None
    he_rounding: str = "nearest"
    #: the CSV's feature columns (``None``: every column but the label, identifiers left out)
    features: list[str] | None = None
    #: CSV columns to leave out (``None``: none, identifiers left out)
    drop: list[str] | None = None
    #: how a missing number in the CSV is filled: the federated ``mean`` or ``median``, or ``none`` (refused)
    impute: str = "mean"
    model: str = "logreg"
    hidden: list[int] = field(default_factory=lambda: [32])
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        mode = mode_of(self)
        _choice("key_holder", self.key_holder, key_holders())
        _choice("loss", self.loss, LOSSES)
        _choice("partition", self.partition, PARTITIONS)
        _choice("model", self.model, MODELS)
        if (
            not isinstance(self.hidden, list) or not self.hidden
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden)
        ):
            raise ConfigError(f"--hidden must be one or more positive integers (e.g. 64,32), got {self.hidden!r}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {self.rounds}")
        if self.clients < 1:
            raise ConfigError(f"--clients must be at least 1, got {self.clients}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"--fraction must be in (0, 1], got {self.fraction}")
        if not 1 <= self.min_clients <= self.clients:
            raise ConfigError(f"--min-clients must be between 1 and --clients ({self.clients}), got {self.min_clients}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.local_epochs < 1:
            raise ConfigError(f"--local-epochs must be at least 1, got {self.local_epochs}")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"--clip-norm must be a positive number or 'none', got {self.clip_norm}")
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ConfigError(f"--mu must be a non-negative number, got {self.mu}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"--alpha must be a positive number, got {self.alpha}")
        if not 0.0 < self.test_size < 1.0:
            raise ConfigError(f"--test-size must be in (0, 1), got {self.test_size}")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"--epsilon must be a positive number, got {self.epsilon}")
        if not 0.0 < self.dp_sample_rate <= 1.0:
            raise ConfigError(f"--dp-sample-rate must be in (0, 1], got {self.dp_sample_rate}")
        if self.dp_steps < 1:
            raise ConfigError(f"--dp-steps must be at least 1, got {self.dp_steps}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta}")
        _choice("he_rounding", self.he_rounding, ROUNDINGS)
        if self.he_resolution is not None and not (
            isinstance(self.he_resolution, (int, float)) and not isinstance(self.he_resolution, bool)
            and math.isfinite(self.he_resolution) and 0.0 < self.he_resolution <= 1.0
        ):
            raise ConfigError(f"--he-resolution must be a number in (0, 1], got {self.he_resolution!r}")
        if not mode.packs_updates and (self.he_resolution is not None or self.he_rounding != "nearest"):
            raise ConfigError(
                f"--he-resolution and --he-rounding set the packed encoding of the sites' uploads, which only "
                f"--mode he --key-holder clients has; leave them out of a {mode.label()} run"
            )
        mode.validate(self)
        if self.epsilon is not None and self.clip_norm is None:
            raise ConfigError("--epsilon needs a clipping bound: give --clip-norm a number, not 'none'")
        if self.data in BUILTIN_DATA:
            if self.label is not None:
                raise ConfigError(f"--data {self.data} is bundled with scikit-learn and has its own label: leave out --label")
        elif (self.data is None) != (self.label is None):
            raise ConfigError("--data and --label go together: give both, or neither for WDBC")
        _choice("impute", self.impute, IMPUTE)
        for name in ("features", "drop"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.data is None:
                raise ConfigError(f"--{name} needs --data: it chooses columns of your CSV (WDBC's are fixed)")
            if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
                raise ConfigError(f"--{name} must be a list of column names, got {value!r}")
        if self.features is not None and self.drop is not None:
            raise ConfigError("give --features or --drop, not both: --features already names every column kept")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown configuration fields: {', '.join(sorted(unknown))}")
        return cls(**d)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} must be one of {', '.join(allowed)}; got {value!r}")
