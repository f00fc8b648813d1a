"""More than 2 classes and models other than logistic regression: --model mlp, --data digits."""

import csv

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from torchhefl.data import load_digits
from torchhefl.exceptions import ConfigError
from torchhefl.federated import TrainConfig, build, run
from torchhefl.federated.config import DP_CLIP_NORM, DP_LR
from torchhefl.federated.evaluation import add_counts, counts_from_wire, counts_to_wire, evaluation_counts, metrics_from_counts
from torchhefl.federated.simulation import check_resume, make_loss, make_model
from torchhefl.nn import MLP, LogisticRegression


@pytest.fixture(scope="module")
def digits_600():
    """600 rows of the digits (all 10 classes), to keep the runs short."""
    data = load_digits()
    return data.subset(np.random.default_rng(0).permutation(len(data))[:600])


def _random_scores(n=300, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) + 1.5 * torch.nn.functional.one_hot(y, k)
    return logits, y


# ------------------------------------------------------------------------------------- evaluation


def test_multiclass_metrics_match_scikit_learn():
    logits, y = _random_scores()
    metrics = metrics_from_counts(evaluation_counts(logits, y.double(), make_loss("taylor", "sum", num_classes=5)))
    pred, prob = logits.argmax(1).numpy(), torch.softmax(logits, 1).numpy()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert metrics["f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    # histogram AUC (1024 bins, ties within a bin counted half) against the exact one
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr"), abs=2e-3)
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-12)
    assert [metrics[f"count_{k}"] for k in range(5)] == np.bincount(y, minlength=5).tolist()
    assert [metrics[f"predicted_{k}"] for k in range(5)] == np.bincount(pred, minlength=5).tolist()


def test_multiclass_counts_of_split_holders_add_up_to_the_whole():
    logits, y = _random_scores()
    loss = make_loss("bce", "sum", num_classes=5)
    whole = metrics_from_counts(evaluation_counts(logits, y, loss))
    total = None
    for part in (slice(0, 120), slice(120, 300)):
        wire = counts_to_wire(evaluation_counts(logits[part], y[part], loss))
        total = add_counts(total, counts_from_wire(wire, num_classes=5))
    split = metrics_from_counts(total)
    assert split.keys() == whole.keys()
    for k in whole:
        assert split[k] == pytest.approx(whole[k], rel=1e-12)


def test_counts_of_another_class_count_are_refused():
    logits, y = _random_scores(k=4)
    wire = counts_to_wire(evaluation_counts(logits, y, make_loss("taylor", "sum", num_classes=4)))
    with pytest.raises(ValueError, match="'confusion' must be 5x5 finite non-negative numbers"):
        counts_from_wire(wire, num_classes=5)
    with pytest.raises(ValueError, match="expected"):
        counts_from_wire(wire)  # a binary server expects the binary counts
    wire["pos_hist_bins"] = np.array([4 * 1024], dtype=np.int32)
    wire["pos_hist_counts"] = np.array([1], dtype=np.int32)
    with pytest.raises(ValueError, match=r"bins outside \[0, 4096\)"):
        counts_from_wire(wire, num_classes=4)


# ------------------------------------------------------------------------------------------ models


def test_default_model_is_unchanged_binary_logistic_regression():
    torch.manual_seed(0)
    expected = LogisticRegression(30, dtype=torch.float64).state_dict()
    model = make_model(TrainConfig(), 30)
    assert type(model) is LogisticRegression
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k])


def test_model_choice():
    assert isinstance(make_model(TrainConfig(), 64, 10), torch.nn.Linear)  # softmax regression
    mlp = make_model(TrainConfig(model="mlp", hidden=[16, 8]), 64, 10)
    assert isinstance(mlp, MLP) and mlp.hidden == (16, 8) and mlp(torch.zeros(2, 64, dtype=torch.float64)).shape == (2, 10)
    assert make_model(TrainConfig(model="mlp"), 30)(torch.zeros(2, 30, dtype=torch.float64)).shape == (2,)
    assert isinstance(make_loss("taylor", num_classes=10), torch.nn.CrossEntropyLoss)


# ---------------------------------------------------------------------------------------------- runs


def test_plain_mlp_on_digits_learns_and_records_per_class_counts(tmp_path, digits_600):
    cfg = TrainConfig(mode="plain", data="digits", model="mlp", hidden=[16], rounds=2)
    summary = run(cfg, tmp_path / "r", progress=False, echo=None, dataset=digits_600)
    assert summary["test_accuracy"] > 0.7  # chance is 0.1
    assert sum(summary[f"test_count_{k}"] for k in range(10)) == 120
    assert sum(summary[f"test_predicted_{k}"] for k in range(10)) == 120
    with (tmp_path / "r" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[-1]["test_accuracy"]) == summary["test_accuracy"]
    assert float(rows[-1]["test_count_3"]) == summary["test_count_3"]
    assert float(rows[-1]["test_predicted_9"]) == summary["test_predicted_9"]


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_he_clients_trains_the_same_model_as_plain(small_config, digits_600, model):
    """The sites' key encrypts any state_dict: softmax regression and an MLP aggregate as in plain."""
    states, accuracies = {}, {}
    for mode in ("plain", "he"):
        sim = build(small_config(mode=mode, data="digits", model=model, hidden=[8], rounds=1), dataset=digits_600)
        sim.server.setup()
        accuracies[mode] = sim.run_round(1)["test_accuracy"]  # he: the sites evaluate on their shares
        states[mode] = sim.final_state()
    for k, v in states["plain"].items():
        torch.testing.assert_close(states["he"][k], v, rtol=0, atol=1e-6)
    assert accuracies["he"] == pytest.approx(accuracies["plain"], abs=1 / 120 + 1e-9)


def test_dp_trains_an_mlp(tmp_path, small_config, digits_600):
    cfg = small_config(mode="plain", data="digits", model="mlp", hidden=[8], epsilon=2.0, lr=DP_LR,
                       clip_norm=DP_CLIP_NORM, rounds=2)
    summary = run(cfg, tmp_path / "r", progress=False, echo=None, dataset=digits_600)
    assert 0 < summary["epsilon"] <= 2.0
    assert np.isfinite(summary["test_loss"])  # (two noisy steps per site teach it little: this checks it runs)


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "mlp"}, "--model mlp cannot train with --key-holder server: sites there run SGD on ciphertexts"),
        ({"data": "digits"}, "softmax regression on 10 classes cannot train with --key-holder server"),
    ],
)
def test_server_key_refuses_what_has_no_affine_gradient(small_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        small_config(mode="he", key_holder="server", clip_norm=None, **overrides).validate()


def test_server_key_refuses_multiclass_data_it_learns_of_at_build(small_config, digits_600):
    cfg = small_config(mode="he", key_holder="server", clip_norm=None)  # WDBC by name, digits given
    with pytest.raises(ConfigError, match="^softmax regression on 10 classes cannot train with --key-holder server.*"
                                          "affine in the weights"):
        build(cfg, dataset=digits_600)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "cnn"}, "--model must be one of logreg, mlp; got 'cnn'"),
        ({"model": "mlp", "hidden": []}, "--hidden must be one or more positive integers"),
        ({"model": "mlp", "hidden": [32, 0]}, "--hidden must be one or more positive integers"),
        ({"model": "mlp", "hidden": (32,)}, "--hidden must be one or more positive integers"),
        ({"data": "digits", "label": "digit"}, "--data digits is bundled with scikit-learn and has its own label"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**overrides).validate()


def test_model_settings_survive_config_json_and_resume_checks():
    cfg = TrainConfig(mode="plain", data="digits", model="mlp", hidden=[64, 32])
    again = TrainConfig.from_dict(cfg.to_dict())
    assert (again.model, again.hidden) == ("mlp", [64, 32])
    check_resume(TrainConfig(**{**cfg.to_dict(), "rounds": 40}), cfg.to_dict(), 30)
    with pytest.raises(ConfigError, match=r"--hidden \[64\] conflicts with the run being resumed \(\[64, 32\]\)"):
        check_resume(TrainConfig(**{**cfg.to_dict(), "hidden": [64], "rounds": 40}), cfg.to_dict(), 30)
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("model", "hidden")}
    assert TrainConfig.from_dict(old).model == "logreg"  # a checkpoint from before --model
