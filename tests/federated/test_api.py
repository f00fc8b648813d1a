"""Federation: your own model, data, loss and optimizer through the engine, against the runs the
config builds and against plain mode; what each mode refuses; bad data from Python."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchhefl.data import load_digits, load_wdbc, partition_iid, train_test_split
from torchhefl.exceptions import ConfigError, DataError
from torchhefl.federated import Federation, TrainConfig
from torchhefl.federated.simulation import build, prepare
from torchhefl.nn import LogisticRegression, TaylorLoss
from torchhefl.secure import InsecureKeyWarning

SMALL_KEYS = {"key_bits": 512, "extra": {"allow_insecure_keys": True}}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        yield


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.head(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def _digits(sites=3, seed=0):
    data = load_digits()
    train, test = train_test_split(data, test_size=0.2, seed=seed)
    parts = partition_iid(len(train), sites, seed=seed)

    def images(X, y):
        return TensorDataset(torch.tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y))

    return [images(train.X[i], train.y[i]) for i in parts], images(test.X, test.y)


def _wdbc_parts(config: TrainConfig):
    prepared = prepare(config, load_wdbc())
    tr, te = prepared.train, prepared.test
    return [(tr.X[i], tr.y[i]) for i in prepared.parts], (te.X, te.y)


def _weights(fed: Federation) -> torch.Tensor:
    return torch.cat([v.detach().reshape(-1).double() for v in fed.state_dict().values()])


@pytest.mark.parametrize("mode, key_holder", [("plain", "clients"), ("he", "clients"), ("he", "server")])
def test_logistic_regression_on_wdbc_is_one_use_of_it(mode, key_holder):
    """The CLI's run (build from a config) and the same parts given from Python train the same model."""
    config = TrainConfig(mode=mode, key_holder=key_holder, rounds=3, **SMALL_KEYS)
    if key_holder == "server":
        config.clip_norm = None
    sim = build(config)
    sim.server.setup()
    expected = [sim.run_round(r)["test_accuracy"] for r in (1, 2, 3)]
    sites, test = _wdbc_parts(config)
    fed = Federation(lambda: LogisticRegression(30, dtype=torch.float64), sites, test=test, config=config)
    history = fed.fit(progress=False)
    assert [r["test_accuracy"] for r in history] == expected
    ref = torch.cat([v.reshape(-1) for v in sim.final_state().values()])
    assert torch.allclose(_weights(fed), ref, atol=1e-12, rtol=0)


def test_a_cnn_under_the_sites_key_trains_as_in_plain_mode():
    """Encrypted exchange of a conv net's state_dict: in float64, the same weights as plain mode to
    the packing's precision (2^-24 a value); in float32 (torch's default) the same accuracies."""
    sites, test = _digits()
    runs = {}
    for mode in ("plain", "he"):
        for rounds, dtype in ((3, torch.float64), (3, torch.float32)):
            fed = Federation(
                lambda: TinyCNN().to(dtype), [DataLoader(s, batch_size=32) for s in sites], test=test, loss=nn.CrossEntropyLoss(),
                optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), mode=mode, rounds=rounds,
                clip_norm=None, **SMALL_KEYS,
            )
            runs[mode, dtype] = (fed, fed.fit(progress=False))
    plain, he = runs["plain", torch.float64][0], runs["he", torch.float64][0]
    assert plain.config.batch_size == 32  # taken from the DataLoader
    assert (_weights(he) - _weights(plain)).abs().max() < 1e-6
    for dtype in (torch.float64, torch.float32):
        plain_hist, he_hist = runs["plain", dtype][1], runs["he", dtype][1]
        assert [r["test_accuracy"] for r in he_hist] == [r["test_accuracy"] for r in plain_hist]
        assert plain_hist[-1]["test_accuracy"] > 0.85


def test_the_optimizer_factory_builds_each_sites_optimizer_every_round():
    sites, test = _digits()
    made = []

    def adam(params):
        made.append(len(params))
        return torch.optim.Adam(params, lr=1e-2)

    fed = Federation(TinyCNN, sites, test=test, loss=nn.CrossEntropyLoss(), optimizer=adam, mode="plain", rounds=2)
    history = fed.fit(progress=False)
    assert made == [4] * 6  # 2 rounds x 3 sites, each with the conv and head weights and biases
    assert history[-1]["test_accuracy"] > 0.8
    sgd = Federation(TinyCNN, sites, test=test, loss=nn.CrossEntropyLoss(), mode="plain", rounds=2)
    sgd.fit(progress=False)
    assert not torch.allclose(_weights(fed), _weights(sgd))


def test_record_level_dp_with_a_custom_model():
    sites, test = _digits()
    fed = Federation(TinyCNN, sites, test=test, loss=nn.CrossEntropyLoss(), mode="plain", rounds=2,
                     epsilon=8.0, clip_norm=1.0, lr=0.5)
    history = fed.fit(progress=False)
    assert 0 < history[-1]["epsilon"] <= 8.0
    assert math.isfinite(history[-1]["test_loss"])


def test_run_folder_and_final_model(tmp_path):
    sites, test = _digits()
    fed = Federation(TinyCNN, sites, test=test, loss=nn.CrossEntropyLoss(), mode="he", rounds=2, **SMALL_KEYS)
    lines = []
    history = fed.fit(tmp_path / "run", progress=False, echo=lines.append)
    assert len(history) == len(lines) == 2
    for name in ("config.json", "metrics.csv", "model.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert list((tmp_path / "run").glob("**/events.out.tfevents.*")), "TensorBoard events"
    assert fed.summary["test_accuracy"] == history[-1]["test_accuracy"]
    model = fed.model()
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert set(saved) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k].to(v.dtype), v), k
    # the run folder says how new rows are prepared for model.pt: the sites' standardisation
    prep = json.loads((tmp_path / "run" / "preprocessing.json").read_text())
    assert prep["standardizer"] == fed.standardizer.to_dict() and len(prep["feature_names"]) == 64


@pytest.mark.parametrize("mode", ["plain", "he"])
def test_predict_standardises_new_inputs_as_in_training(mode):
    """``model()`` wants standardised inputs; ``predict`` applies the sites' standardisation, and
    its accuracy on the held-out set is the one the run reported (counted by the sites under the
    sites' key). The standardiser is also a fitted scikit-learn StandardScaler."""
    sites, test = _digits()
    fed = Federation(TinyCNN, sites, test=test, loss=nn.CrossEntropyLoss(), mode=mode, rounds=2, **SMALL_KEYS)
    with pytest.raises(ConfigError, match="call fit"):
        fed.predict(test.tensors[0])
    history = fed.fit(progress=False)
    X, y = test.tensors[0].numpy(), test.tensors[1].numpy()
    assert (fed.predict(X) == y).mean() == pytest.approx(history[-1]["test_accuracy"], abs=1e-12)
    raw = (fed.model()(torch.as_tensor(X)).argmax(1).numpy() == y).mean()
    assert raw < history[-1]["test_accuracy"] - 0.05  # the trap predict avoids: unstandardised pixels
    flat = X.reshape(len(X), -1).astype(np.float64)
    np.testing.assert_allclose(fed.standardizer.to_sklearn().transform(flat), fed.standardizer.transform(flat), rtol=1e-12)
    with pytest.raises(DataError, match=r"inputs of shape \(2, 64\), expected \(n, 1, 8, 8\)"):
        fed.predict(np.zeros((2, 64)))


def test_a_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    sites, test = _digits()
    parts = dict(loss=nn.CrossEntropyLoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), mode="plain")
    whole = Federation(TinyCNN, sites, test=test, rounds=3, **parts)
    whole.fit(tmp_path / "whole", progress=False)
    first = Federation(TinyCNN, sites, test=test, rounds=2, **parts)
    first.fit(tmp_path / "split", progress=False)
    rest = Federation(TinyCNN, sites, test=test, rounds=3, **parts)
    history = rest.fit(tmp_path / "split", resume=True, progress=False)
    assert [r["round"] for r in history] == [3]
    assert torch.equal(_weights(rest), _weights(whole))
    assert (tmp_path / "split" / "metrics.csv").read_text() == (tmp_path / "whole" / "metrics.csv").read_text()
    with pytest.raises(ConfigError, match="conflicts with the run being resumed"):
        Federation(TinyCNN, sites, test=test, rounds=3, **{**parts, "mode": "he"}, **SMALL_KEYS).fit(
            tmp_path / "split", resume=True, progress=False)
    with pytest.raises(ConfigError, match="resume=True needs the run_dir"):
        rest.fit(resume=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": TinyCNN}, "a TinyCNN model cannot train with --key-holder server"),
        ({"loss": nn.BCEWithLogitsLoss()}, "the loss BCEWithLogitsLoss cannot train with --key-holder server"),
        ({"optimizer": lambda p: torch.optim.SGD(p, lr=0.1)}, "an optimizer cannot be given with --key-holder server"),
    ],
)
def test_the_server_key_mode_refuses_parts_it_cannot_train_on_ciphertexts(kwargs, message):
    config = TrainConfig(mode="he", key_holder="server", clip_norm=None, rounds=1, **SMALL_KEYS)
    sites, test = _wdbc_parts(config)
    parts = {"model": lambda: LogisticRegression(30, dtype=torch.float64), **kwargs}
    with pytest.raises(ConfigError, match=message):
        Federation(parts.pop("model"), sites, test=test, config=config, **parts)
    # and the loss and model it can train are accepted
    Federation(lambda: LogisticRegression(30, dtype=torch.float64), sites, test=test, config=config, loss=TaylorLoss())


def test_bad_parts_and_data_are_refused_in_one_line():
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    model = lambda: LogisticRegression(3)  # noqa: E731
    plain = {"mode": "plain"}
    cases = [
        (lambda: Federation(model, [], test=(X, y), **plain), ConfigError, "at least one site"),
        (lambda: Federation(model, [(X, y)], test=(X, y), **plain, rounds=1, colour="red"), ConfigError, "unknown setting"),
        (lambda: Federation(model, [(X, y)], test=(X, y), **plain, clients=2), ConfigError, "clients=2 but 1 sites"),
        (lambda: Federation(model, [(X, y)], test=(X, y), **plain, loss=lambda a, b: 0), ConfigError, "'reduction' attribute"),
        (lambda: Federation(model, [(X, y)], test=(X, y), **plain, lr=-1.0), ConfigError, "lr"),
        (lambda: Federation(lambda: "no", [(X, y)], test=(X, y), **plain), ConfigError, "must be an nn.Module"),
        (lambda: Federation(model, [(X[:, :2], y)], test=(X, y), **plain), DataError, "differ in shape"),
        (lambda: Federation(model, [(X, y + 0.5)], test=(X, y), **plain), DataError, "class indices"),
        (lambda: Federation(model, [(X, -y)], test=(X, y), **plain), DataError, "class indices"),
        (lambda: Federation(model, [(np.where(X > 1, np.nan, X), y)], test=(X, y), **plain), DataError, "NaN"),
        (lambda: Federation(model, [(X, y[:5])], test=(X, y), **plain), DataError, "20 inputs but labels"),
        (lambda: Federation(model, [TensorDataset(torch.zeros(0, 3), torch.zeros(0))], test=(X, y), **plain), DataError, "no rows"),
        (lambda: Federation(model, [[1, 2, 3]], test=(X, y), **plain), DataError, "expected a torch Dataset"),
        (lambda: Federation(model, [(X, y)], test=(X, y), **plain, num_classes=1), DataError, "num_classes=1"),
        (lambda: Federation(model, [(X, y)], test=(X, y), **plain).state_dict(), ConfigError, "call fit"),
    ]
    for make, error, message in cases:
        with pytest.raises(error, match=message) as info:
            make()
        assert "\n" not in str(info.value)


def _top3_hits(logits, targets):
    return (logits.topk(3, dim=1).indices == targets.reshape(-1, 1)).any(dim=1).sum()


def _brier(logits, targets):
    p = torch.softmax(logits, dim=1)
    return ((p - nn.functional.one_hot(targets.long(), p.shape[1])) ** 2).sum()


@pytest.mark.parametrize("mode", ["plain", "he"])
def test_your_own_metrics_sum_over_the_holders_of_test_rows(mode, tmp_path):
    """A metric is the sum of a per-row score; the holders (the server in plain mode, the three
    sites under their key) send their sums and the run reports the mean over the held-out rows,
    which equals the metric computed on the whole held-out set with the final model."""
    sites, test = _digits()
    fed = Federation(TinyCNN, sites, test=test, loss=nn.CrossEntropyLoss(), mode=mode, rounds=2,
                     metrics={"top3": _top3_hits, "brier": _brier}, **SMALL_KEYS)
    history = fed.fit(tmp_path / "run", progress=False)
    X, y = test.tensors
    with torch.no_grad():
        logits = fed.model()(fed.transform(X))
    assert history[-1]["test_top3"] == pytest.approx(float(_top3_hits(logits, y)) / len(y), abs=1e-12)
    # float32 sums over three sites against one sum: equal to float32 rounding
    assert history[-1]["test_brier"] == pytest.approx(float(_brier(logits, y)) / len(y), rel=1e-6)
    assert history[-1]["test_top3"] >= history[-1]["test_accuracy"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test_top3" in header and "test_brier" in header


def test_metric_names_and_values_are_checked():
    sites, test = _digits()
    with pytest.raises(ConfigError, match="metric name 'accuracy'"):
        Federation(TinyCNN, sites, test=test, loss=nn.CrossEntropyLoss(), metrics={"accuracy": _top3_hits})
    with pytest.raises(ConfigError, match="must be a function"):
        Federation(TinyCNN, sites, test=test, loss=nn.CrossEntropyLoss(), metrics={"top3": 3})


def test_a_holder_sends_exactly_the_runs_metrics():
    """Counts naming a metric the run did not ask for, or leaving one out, or not finite, are refused."""
    from torchhefl.federated.evaluation import counts_from_wire, counts_to_wire, evaluation_counts

    logits, y = torch.randn(6, 10), torch.arange(6)
    loss = nn.CrossEntropyLoss(reduction="sum")
    wire = counts_to_wire(evaluation_counts(logits, y, loss, {"top3": _top3_hits}))
    assert counts_from_wire(wire, num_classes=10, metrics=("top3",))["metric_top3"][0] == float(_top3_hits(logits, y))
    with pytest.raises(ValueError, match="evaluation counts hold"):
        counts_from_wire(wire, num_classes=10)
    with pytest.raises(ValueError, match="evaluation counts hold"):
        counts_from_wire(wire, num_classes=10, metrics=("top3", "brier"))
    with pytest.raises(ValueError, match="must be one finite number"):
        counts_from_wire({**wire, "metric_top3": np.array([np.inf])}, num_classes=10, metrics=("top3",))


@pytest.mark.parametrize("mode", ["plain", "he"])
def test_impute_fills_the_sites_gaps_as_the_pooled_mean_would(mode):
    """NaN in the sites' arrays with impute='mean': the model equals the one trained on the same
    rows filled in plaintext with the pooled mean of the training rows; predict fills new rows alike."""
    config = TrainConfig(mode=mode, rounds=3, **SMALL_KEYS)
    sites, test = _wdbc_parts(config)
    rng = np.random.default_rng(0)
    gappy = []
    for X, y in sites:
        X = X.copy()
        X[rng.integers(len(X), size=6), rng.integers(X.shape[1], size=6)] = np.nan
        gappy.append((X, y))
    pooled = np.concatenate([X for X, _ in gappy])
    mean = np.nanmean(pooled, axis=0)
    filled = [(np.where(np.isnan(X), mean, X), y) for X, y in gappy]
    model = lambda: LogisticRegression(30, dtype=torch.float64)  # noqa: E731
    with pytest.raises(DataError, match="inputs hold NaN or infinity"):
        Federation(model, gappy, test=test, config=config)
    fed = Federation(model, gappy, test=test, config=config, impute="mean")
    ref = Federation(model, filled, test=test, config=config)
    fed.fit(progress=False)
    ref.fit(progress=False)
    assert (_weights(fed) - _weights(ref)).abs().max() < 1e-9
    new = test[0][:5].copy()
    new[0, 3] = np.nan
    expected = ref.transform(np.where(np.isnan(new), mean, new))
    assert torch.allclose(fed.transform(new), expected, atol=1e-9)
