"""Plain-mode federated training: determinism, FedAvg/FedProx, dropout, real byte counts."""

import numpy as np
import pytest
import torch

from torchhefl.exceptions import ConfigError, ProtocolError
from torchhefl.federated import FedAvg, FedProx, build, get_strategy, run
from torchhefl.federated.messages import decode_state, encode_state
from torchhefl.federated.strategies import weighted_mean


def _train(cfg, rounds=None):
    sim = build(cfg)
    sim.server.setup()
    results = [sim.server.run_round(r) for r in range(1, (rounds or cfg.rounds) + 1)]
    return sim, results


def test_weighted_mean_is_sample_weighted():
    a = {"w": np.array([1.0, 2.0])}
    b = {"w": np.array([3.0, 6.0])}
    out = weighted_mean([(a, 1), (b, 3)])
    np.testing.assert_allclose(out["w"], [2.5, 5.0])


def test_get_strategy_by_name():
    assert isinstance(get_strategy("fedavg"), FedAvg)
    prox = get_strategy("fedprox", mu=0.5)
    assert isinstance(prox, FedProx) and prox.configure_fit(1)["proximal_mu"] == 0.5
    with pytest.raises(ConfigError, match="unknown aggregator 'fedsgd'"):
        get_strategy("fedsgd")


def test_same_seed_same_metrics(tmp_path, small_config):
    cfg = small_config(mode="plain")
    run(cfg, tmp_path / "a", progress=False, echo=None)
    run(cfg, tmp_path / "b", progress=False, echo=None)
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()
    a = torch.load(tmp_path / "a" / "model.pt")
    b = torch.load(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = small_config(mode="plain", seed=1)
    run(other, tmp_path / "c", progress=False, echo=None)
    assert (tmp_path / "a" / "metrics.csv").read_bytes() != (tmp_path / "c" / "metrics.csv").read_bytes()


def test_run_folder_contents(tmp_path, small_config):
    cfg = small_config(mode="plain")
    summary = run(cfg, tmp_path / "r", progress=False, echo=None)
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"metrics.csv", "timings.csv", "config.json", "model.pt"} <= files
    assert any(name.startswith("events.out.tfevents") for name in files)
    lines = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("round,test_accuracy,")
    assert len(lines) == 1 + cfg.rounds
    state = torch.load(tmp_path / "r" / "model.pt")
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (1, 30)
    assert 0.8 < summary["test_accuracy"] <= 1.0


def test_fedavg_round_equals_mean_of_client_models(small_config):
    """One round of the server == the sample-weighted mean of what each client trains alone."""
    cfg = small_config(mode="plain", rounds=1)
    sim, _ = _train(cfg)
    fresh = build(cfg)
    fresh.server.setup()
    start = fresh.server.global_state()
    updates = []
    for c in fresh.clients:
        c.model.load_state_dict(start)
        c.fit(1)
        updates.append(({k: v.numpy() for k, v in c.model.state_dict().items()}, c.num_examples))
    expected = weighted_mean(updates)
    got = sim.server.global_state()
    for k in expected:
        np.testing.assert_allclose(got[k].numpy(), expected[k], rtol=0, atol=1e-12)


def test_fedprox_pulls_towards_global_model(small_config):
    """With a large mu the local models stay closer to the global model than without it."""
    def drift(mu):
        cfg = small_config(mode="plain", aggregator="fedprox", mu=mu, lr=0.1, local_epochs=3)
        sim = build(cfg)
        sim.server.setup()
        start = sim.server.global_state()
        c = sim.clients[0]
        c.model.load_state_dict(start)
        c.fit(1, proximal_mu=mu)
        return float(sum((c.model.state_dict()[k] - start[k]).norm() for k in start))

    assert drift(5.0) < 0.5 * drift(0.0)


def test_dropped_client_is_left_out_and_logged(small_config, caplog):
    cfg = small_config(mode="plain", rounds=1, min_clients=2)
    sim = build(cfg)
    sim.server.setup()
    sim.transport.fail.add("site1")
    result = sim.server.run_round(1)
    assert result["dropped"] == ["site1"] and result["clients"] == ["site0", "site2"]
    assert "site1 left out" in caplog.text
    sim.transport.fail.update({"site0", "site2"})
    with pytest.raises(ProtocolError, match="only 0 of 3 clients answered"):
        sim.server.run_round(2)


def test_byte_counts_are_the_bytes_sent(small_config):
    cfg = small_config(mode="plain", rounds=1)
    sim = build(cfg)
    sent = []
    original = sim.transport.send

    def spy(cid, request):
        reply = original(cid, request)
        sent.append((len(request), len(reply)))
        return reply

    sim.transport.send = spy
    sim.server.setup()
    sim.transport.bytes_up = sim.transport.bytes_down = 0
    sent.clear()
    result = sim.server.run_round(1)
    assert result["bytes_down"] == sum(d for d, _ in sent) > 0
    assert result["bytes_up"] == sum(u for _, u in sent) > 0


def test_plain_state_roundtrip_keeps_dtypes_and_rejects_nan():
    state = {"w": torch.randn(2, 3), "n": torch.tensor(7), "h": torch.randn(4, dtype=torch.float64)}
    back, meta = decode_state(encode_state(state, {"num_examples": 5}))
    assert meta == {"num_examples": 5}
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k])
    from torchhefl.exceptions import MalformedMessageError

    with pytest.raises(MalformedMessageError, match="NaN or infinite"):
        decode_state(encode_state({"w": torch.tensor([float("nan")])}))
    with pytest.raises(MalformedMessageError, match="shape"):
        decode_state(encode_state({"w": torch.zeros(2)}), expected={"w": torch.zeros(3)})


def test_evaluation_counts_travel_sparse_and_add_up():
    from torchhefl.federated.evaluation import (
        add_counts,
        counts_from_wire,
        counts_to_wire,
        evaluation_counts,
        metrics_from_counts,
    )
    from torchhefl.nn import TaylorLoss

    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(40, generator=gen, dtype=torch.float64), (torch.rand(40, generator=gen) > 0.5).double()
    loss = TaylorLoss(reduction="sum")
    whole = evaluation_counts(logits, y, loss)
    halves = [counts_from_wire(counts_to_wire(evaluation_counts(logits[s], y[s], loss))) for s in (slice(0, 17), slice(17, 40))]
    total = add_counts(add_counts(None, halves[0]), halves[1])
    assert metrics_from_counts(total) == pytest.approx(metrics_from_counts(whole), abs=1e-12)
    wire = counts_to_wire(whole)
    assert len(wire["pos_hist_bins"]) <= 40  # only the non-empty bins are sent
    bad = dict(wire, pos_hist_bins=wire["pos_hist_bins"] + 5000)
    with pytest.raises(ValueError, match="outside"):
        counts_from_wire(bad)
