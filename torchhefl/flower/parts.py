"""Your own model, data, loss, optimizer and metrics on Flower: the deployment side of
:class:`~torchhefl.federated.Federation`.

Flower loads a ClientApp and a ServerApp by module path from the app's ``pyproject.toml``. To
deploy your own parts, write a module that builds both from one :class:`FlowerParts`::

    # my_app.py: referenced as my_app:client_app and my_app:server_app in pyproject.toml
    from torchhefl.flower.parts import FlowerParts, flower_apps

    def site_data(node_config):                   # runs on each site's machine, reads its own rows
        return load_my_rows(node_config["data"])  # (train, test): Datasets, DataLoaders or (X, y)

    client_app, server_app = flower_apps(FlowerParts(
        model=SmallCNN, site_data=site_data, loss=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9), num_classes=10,
    ))

Every party draws the model from the factory after ``torch.manual_seed(seed)`` (the run config's
``seed``), so all start from the same weights, as in :class:`~torchhefl.federated.Federation`. The
run config sets everything else (``mode``, ``key-holder``, ``rounds``, ...); the modes refuse parts
they cannot train exactly as ``Federation`` does (``key-holder = "server"`` takes only logistic
regression with the Taylor loss and plain SGD).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from torchhefl.exceptions import ConfigError, DataError
from torchhefl.federated.api import site_arrays
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.evaluation import check_metrics
from torchhefl.federated.modes import mode_of

__all__ = ["FlowerParts", "flower_apps"]


@dataclass
class FlowerParts:
    """Parts a deployment trains with, in place of the run config's ``model`` and the node
    config's CSV.

    Attributes:
        model: a factory of the ``nn.Module`` to train (called once per party after
            ``torch.manual_seed(seed)``).
        site_data: ``node_config -> (train, test)``, each a ``Dataset`` of ``(input, label)``, a
            ``DataLoader`` or an ``(X, y)`` pair: the site's own rows, read on its machine.
        loss: the training loss (``reduction="mean"``; evaluation uses a sum-reduced copy);
            default the run config's ``loss`` (cross-entropy on more than 2 classes).
        optimizer: ``params -> torch.optim.Optimizer``, built afresh each round; default SGD at ``lr``.
        metrics: your own test metrics, ``{name: fn(logits, targets) -> sum over the rows}``.
        num_classes: ``K``; default the largest label a site holds plus one (at least 2), which
            must then be the same at every site.
        server_test: ``() -> (X, y)`` or a ``Dataset``: the held-out rows of a server that
            evaluates itself (``key-holder = "server"``); default the run config's
            ``server-test-data``.
    """

    model: Callable[[], nn.Module]
    site_data: Callable[[Mapping], tuple]
    loss: nn.Module | None = None
    optimizer: Callable | None = None
    metrics: dict | None = None
    num_classes: int | None = None
    server_test: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        if not callable(self.model):
            raise ConfigError("FlowerParts.model must be a function returning an nn.Module")
        if not callable(self.site_data):
            raise ConfigError("FlowerParts.site_data must be a function of the node config returning (train, test)")
        if self.loss is not None and not (isinstance(self.loss, nn.Module) and isinstance(getattr(self.loss, "reduction", None), str)):
            raise ConfigError("FlowerParts.loss must be an nn.Module with a 'reduction' attribute")
        if self.optimizer is not None and not callable(self.optimizer):
            raise ConfigError("FlowerParts.optimizer must be a function of the parameters returning an optimizer")
        try:
            self.metrics = check_metrics(self.metrics)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def initial_model(self, config: TrainConfig) -> nn.Module:
        """The run's initial model: the factory's, drawn from ``config.seed``; checked against the mode."""
        torch.manual_seed(config.seed)
        model = self.model()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"FlowerParts.model returned {type(model).__name__}, not an nn.Module")
        mode_of(config).validate_parts(model, self.loss, self.optimizer)
        return model

    def train_loss(self, config: TrainConfig, num_classes: int, reduction: str = "mean") -> nn.Module:
        from torchhefl.federated.simulation import make_loss

        if self.loss is None:
            return make_loss(config.loss, reduction=reduction, num_classes=num_classes)
        loss = copy.deepcopy(self.loss)
        loss.reduction = reduction
        return loss

    def rows(self, node_config: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
        """This site's ``(X, y, X_test, y_test, classes)`` from :attr:`site_data`."""
        data = self.site_data(node_config)
        if not (isinstance(data, tuple) and len(data) == 2):
            raise DataError("FlowerParts.site_data must return (train, test)")
        X, y = site_arrays(data[0], "this site's training data")
        X_test, y_test = site_arrays(data[1], "this site's held-out data")
        if X.shape[1:] != X_test.shape[1:]:
            raise DataError(f"this site's training and held-out inputs differ in shape: {X.shape[1:]} and {X_test.shape[1:]}")
        seen = int(max(y.max(), y_test.max())) + 1
        k = max(2, seen) if self.num_classes is None else int(self.num_classes)
        if k < seen:
            raise DataError(f"num_classes={k} but a label {seen - 1} was seen")
        return X, y, X_test, y_test, tuple(range(k))

    def server_rows(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The evaluating server's held-out ``(X, y)`` from :attr:`server_test` (``None`` without it)."""
        return None if self.server_test is None else site_arrays(self.server_test(), "the server's held-out data")


def flower_apps(parts: FlowerParts):
    """A ``(ClientApp, ServerApp)`` pair that trains ``parts`` (see the module text)."""
    from torchhefl.flower.client_app import make_client_app
    from torchhefl.flower.server_app import make_server_app

    return make_client_app(parts), make_server_app(parts)
