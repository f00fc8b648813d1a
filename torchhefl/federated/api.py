"""Bring your own parts: any torch model, each site's data, a loss and an optimizer, through the engine.

:class:`Federation` is the Python way into what ``python -m train.federated`` runs: the same
server, sites, protection modes, retries, checkpoints and TensorBoard logs, around parts you give::

    fed = Federation(
        model=lambda: SmallCNN(),                       # drawn once, from the run's seed
        sites=[loader_a, loader_b, loader_c],           # a Dataset, DataLoader or (X, y) per site
        test=test_set,
        loss=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        mode="he", key_holder="clients", rounds=10, local_epochs=2, batch_size=32,
    )
    history = fed.fit()                                 # one dict of metrics per round
    trained = fed.model()                               # the final global model

The engine batches each site's rows itself (seeded, the batches plain mode uses), so a
``DataLoader`` contributes its dataset and its batch size, not its sampler. Each site's rows are
standardised per input entry with statistics summed over the sites through the mode's protected
statistics path, as the CLI does. ``mode="he", key_holder="clients"`` (the sites' key) and
``mode="plain"`` take any model; ``key_holder="server"`` (the paper's HEM: sites train on
ciphertexts) takes only binary logistic regression with the Taylor loss and plain SGD, and refuses
anything else with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchhefl.data import Dataset, Standardizer
from torchhefl.exceptions import ConfigError, DataError
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.evaluation import check_metrics
from torchhefl.federated.modes import mode_of
from torchhefl.federated.simulation import Simulation, assemble, run

__all__ = ["Federation", "site_arrays"]

def site_arrays(data, what: str = "data", *, missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` arrays of a ``Dataset`` of ``(input, label)`` items, a ``DataLoader`` over one,
    or an ``(X, y)`` pair of arrays or tensors; ``X`` float64 of shape ``(n, *shape)``, ``y`` int64.

    Raises :class:`~torchhefl.exceptions.DataError` naming ``what`` for data that is empty, not
    ``(input, label)`` pairs, non-finite (``missing=True`` lets NaN through: values the run fills),
    or labelled with anything but integers >= 0.
    """
    if isinstance(data, tuple) and len(data) == 2:
        X, y = data
    else:
        dataset = data.dataset if isinstance(data, DataLoader) else data
        if not isinstance(dataset, torch.utils.data.Dataset):
            raise DataError(f"{what}: expected a torch Dataset, a DataLoader or an (X, y) pair, got {type(data).__name__}")
        try:
            n = len(dataset)
        except TypeError:
            raise DataError(f"{what}: an iterable-style dataset has no length; give a map-style Dataset") from None
        if n == 0:
            raise DataError(f"{what} holds no rows")
        try:
            X, y = next(iter(DataLoader(dataset, batch_size=n, shuffle=False)))
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{what}: items must be (input tensor, label) pairs of one shape: {e}") from None
    X = np.asarray(torch.as_tensor(X).detach().cpu(), dtype=np.float64) if not isinstance(X, np.ndarray) else np.asarray(X, dtype=np.float64)
    y = np.asarray(torch.as_tensor(y).detach().cpu()) if not isinstance(y, np.ndarray) else np.asarray(y)
    if X.ndim < 2 or X.shape[0] == 0:
        raise DataError(f"{what}: inputs of shape {X.shape}, expected (n, ...) with n >= 1")
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.shape != (X.shape[0],):
        raise DataError(f"{what}: {X.shape[0]} inputs but labels of shape {y.shape}")
    if np.isinf(X).any() or (not missing and np.isnan(X).any()):
        raise DataError(f"{what}: inputs hold {'infinity' if missing else 'NaN or infinity'}")
    if not (np.isfinite(y).all() and (y == np.round(y)).all() and (y >= 0).all()):
        raise DataError(f"{what}: labels must be class indices, integers >= 0")
    return X, y.astype(np.int64)


class Federation:
    """A federated run around your own parts (see the module's documentation for an example).

    Args:
        model: a function returning the initial ``nn.Module`` (called once, after
            ``torch.manual_seed(seed)``, so every party starts from the same weights), or a module.
        sites: one entry per site: a ``Dataset`` of ``(input, label)``, a ``DataLoader`` over one,
            or an ``(X, y)`` pair. Labels are class indices ``0..K-1``.
        test: the held-out set, in the same forms; the server evaluates on it where it may read the
            model, else each site evaluates on a share of it.
        loss: the training loss (``reduction="mean"``; evaluation uses a ``"sum"`` copy). Default:
            the Taylor loss on 2 classes (``TrainConfig.loss``), ``CrossEntropyLoss`` on more.
        optimizer: builds a site's optimizer from its trainable parameters, once a round. Default:
            ``torch.optim.SGD(params, lr=lr)``.
        num_classes: ``K``; default: the largest label seen plus one (at least 2).
        metrics: your own test metrics, ``{name: fn(logits, targets)}``, each returning the *sum*
            over the rows it is given of a per-row score (e.g. top-3 hits, a Brier score): every
            holder of test rows sums its own and the run reports the mean over all held-out rows as
            ``test_<name>`` (in the history, ``metrics.csv`` and TensorBoard). Sums add up across
            sites; a metric that does not decompose over rows cannot be split this way.
        impute: ``"mean"`` or ``"median"`` lets inputs hold NaN: each site fills its own from the
            federated mean or median of that input entry, summed through the mode's protected
            statistics path before standardisation (:mod:`torchhefl.federated.statistics`); the
            held-out rows are filled by whoever holds them. Default ``None``: NaN is refused.
        config: a :class:`~torchhefl.federated.config.TrainConfig` to start from; ``settings``
            (any of its fields: ``mode``, ``key_holder``, ``rounds``, ``lr``, ``batch_size``,
            ``local_epochs``, ``clip_norm``, ``aggregator``, ``key_bits``, ``epsilon``, ``seed``,
            ...) override it. ``clients`` is the number of ``sites``. Without ``batch_size``, a
            ``DataLoader``'s batch size is used.

    Raises:
        ConfigError: a setting out of range, or parts the mode cannot train (with the reason).
        DataError: a site's data that is not usable (empty, non-finite, not class indices).
    """

    def __init__(
        self,
        model: Callable[[], nn.Module] | nn.Module,
        sites: Sequence,
        *,
        test,
        loss: nn.Module | None = None,
        optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        num_classes: int | None = None,
        metrics: dict[str, Callable] | None = None,
        impute: str | None = None,
        config: TrainConfig | None = None,
        **settings,
    ) -> None:
        sites = list(sites)
        if not sites:
            raise ConfigError("a federation needs at least one site's data")
        base = TrainConfig() if config is None else config
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see TrainConfig for the settings")
        if "clients" in settings and settings["clients"] != len(sites):
            raise ConfigError(f"clients={settings['clients']} but {len(sites)} sites' data were given")
        loader_batch = next((s.batch_size for s in sites if isinstance(s, DataLoader) and s.batch_size), None)
        if "batch_size" not in settings and loader_batch is not None:
            settings["batch_size"] = int(loader_batch)
        settings.setdefault("extra", dict(base.extra))
        self.config = dataclasses.replace(base, clients=len(sites), **settings).validate()
        if impute not in (None, "mean", "median"):
            raise ConfigError(f"impute must be 'mean', 'median' or None, got {impute!r}")
        self.impute = impute
        gaps = impute is not None
        self._sites = [site_arrays(s, f"site {i}'s data", missing=gaps) for i, s in enumerate(sites)]
        self._test = site_arrays(test, "the test data", missing=gaps)
        shapes = {X.shape[1:] for X, _ in [*self._sites, self._test]}
        if len(shapes) > 1:
            raise DataError(f"the sites' and the test set's inputs differ in shape: {sorted(shapes)}")
        seen = max(int(y.max()) for _, y in [*self._sites, self._test]) + 1
        self.num_classes = max(2, seen) if num_classes is None else int(num_classes)
        if self.num_classes < max(2, seen):
            raise DataError(f"num_classes={num_classes} but a label {seen - 1} was seen")
        torch.manual_seed(self.config.seed)
        self._initial = model() if callable(model) and not isinstance(model, nn.Module) else model
        if not isinstance(self._initial, nn.Module):
            raise ConfigError(f"model must be an nn.Module or a function returning one, got {type(self._initial).__name__}")
        if loss is not None and not (isinstance(loss, nn.Module) and isinstance(getattr(loss, "reduction", None), str)):
            raise ConfigError("loss must be an nn.Module with a 'reduction' attribute (as torch's losses have): "
                              "training uses it as given, evaluation a copy with reduction='sum'")
        if optimizer is not None and not callable(optimizer):
            raise ConfigError("optimizer must be a function of the parameters returning a torch.optim.Optimizer")
        self.loss, self.optimizer = loss, optimizer
        try:
            self.metrics = check_metrics(metrics)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        mode = mode_of(self.config)
        mode.validate_model(self.config, self.num_classes)
        mode.validate_parts(self._initial, loss, optimizer)
        self.simulation: Simulation | None = None
        self.history: list[dict] = []
        self.summary: dict | None = None

    def build(self) -> Simulation:
        """The parties of the run (:func:`~torchhefl.federated.simulation.assemble`), before any round."""
        X_all = np.concatenate([X for X, _ in self._sites])
        y_all = np.concatenate([y for _, y in self._sites])
        flat = X_all.reshape(len(X_all), -1)
        description = Dataset(flat, y_all, [f"x{i}" for i in range(flat.shape[1])], "label", tuple(range(self.num_classes)))
        return assemble(
            self.config, model=copy.deepcopy(self._initial), sites=self._sites, test=self._test, num_classes=self.num_classes,
            loss_fn=self.loss, optimizer_fn=self.optimizer, dataset=description, metrics=self.metrics,
            impute=self.impute,
        )

    def fit(
        self, run_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True,
        echo: Callable[[str], None] | None = None,
    ) -> list[dict]:
        """Train every round; returns the rounds' metrics (``test_accuracy``, ``test_f1``,
        ``test_auc``, ``test_loss``, ``bytes_up``, ...), one dict a round (with ``resume``, the
        rounds run now).

        With ``run_dir``, also write the run folder the CLI writes (``config.json``,
        ``metrics.csv``, TensorBoard events, a checkpoint after every round, ``model.pt``);
        ``resume=True`` continues the run saved there up to ``rounds`` (the same parts and
        settings; an HE run needs its key folder in ``extra["key_dir"]``, as ``--resume`` needs
        ``--key-dir``). ``echo`` gets one line per round; ``progress`` shows a bar.
        """
        if resume and run_dir is None:
            raise ConfigError("resume=True needs the run_dir of the run to continue")
        self.simulation = sim = self.build()
        self.history = []
        keep = lambda rnd, result: self.history.append(dict(result))  # noqa: E731
        if run_dir is not None:
            self.summary = run(self.config, run_dir, progress=progress, echo=echo, simulation=sim, after_round=keep,
                               resume=resume)
            return self.history
        from torchhefl.federated.drive import drive, summarize

        sim.server.setup()
        last, totals = drive(
            sim.run_round, first=1, rounds=self.config.rounds, echo=echo, after_round=keep,
            progress=f"{self.config.mode} rounds" if progress else None,
        )
        self.summary = summarize(last, totals, self.config.rounds)
        return self.history

    def state_dict(self) -> OrderedDict:
        """The final global state_dict (read by whoever may read it: the server or a key-holding site)."""
        if self.simulation is None:
            raise ConfigError("the federation has not been trained yet: call fit() first")
        return self.simulation.final_state()

    def model(self) -> nn.Module:
        """A copy of the model with the final global weights. It expects standardised inputs:
        pass new rows through :meth:`transform` first, or call :meth:`predict`."""
        out = copy.deepcopy(self._initial)
        out.load_state_dict(self.state_dict())
        return out

    @property
    def standardizer(self) -> Standardizer:
        """The standardisation the sites agreed on (per input entry, from their summed moments):
        what the model's inputs went through in training. ``.to_sklearn()`` gives it as a fitted
        ``StandardScaler``."""
        if self.simulation is None or self.simulation.clients[0].standardizer is None:
            raise ConfigError("the federation has not been trained yet: call fit() first")
        return self.simulation.clients[0].standardizer

    def transform(self, inputs) -> torch.Tensor:
        """New inputs (array or tensor of the sites' input shape, ``(n, *shape)``) prepared as in
        training (missing values filled as the sites filled theirs, with ``impute``; then
        standardised), as a tensor of the model's dtype."""
        X = np.asarray(inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else inputs, dtype=np.float64)
        shape = self._sites[0][0].shape[1:]
        if X.shape[1:] != shape:
            raise DataError(f"inputs of shape {X.shape}, expected (n, {', '.join(map(str, shape))})")
        dtype = next(self._initial.parameters()).dtype
        standardizer = self.standardizer
        if np.isnan(X).any():
            imputation = self.simulation.clients[0].imputation
            if imputation is None:
                raise DataError("inputs hold NaN; a federation fills missing values only with impute='mean' or 'median'")
            flat = imputation.apply(X.reshape(X.shape[0], -1))  # the sites' fill values
            X = flat.reshape(X.shape)
        return torch.as_tensor(standardizer.transform(X), dtype=dtype)

    def predict(self, inputs) -> np.ndarray:
        """The final model's class (0..K-1) for each of the new ``inputs`` (standardised first):
        a binary model's logit at or above 0, else the largest logit, as the evaluation counts it."""
        model = self.model().eval()
        with torch.no_grad():
            logits = model(self.transform(inputs))
        if logits.dim() == 2 and logits.shape[1] > 1:
            return logits.argmax(dim=1).numpy()
        return (logits.reshape(-1) >= 0).to(torch.int64).numpy()
