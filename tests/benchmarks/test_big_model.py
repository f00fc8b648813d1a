"""benchmarks.big_model's chunked round on a tiny state_dict with a 512-bit key (no timings asserted)."""

import json
import sys

import pytest
import torch
from torch import nn

from benchmarks import big_model
from benchmarks.big_model import ResNet18, chunk_workload, plan_chunks, run
from benchmarks.peers import INSTALL_HINT, PeerContext, make_workload, prepare_keys

CHUNK_VALUES = 100  # the first Linear's weight (240 values, rows of 30) is split into rows


def _tiny() -> nn.Module:
    # 273 parameters + 17 batch-norm buffer values (one a 0-dim int64)
    return nn.Sequential(nn.Linear(30, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


@pytest.fixture(scope="module")
def ctx():
    workload = make_workload(_tiny, sites=3, seed=0)
    chunks = plan_chunks(workload.states[0], CHUNK_VALUES)
    public_key, private_key = prepare_keys(512, chunk_workload(workload, chunks[0]))  # bits < 2048: insecure opt-in
    return PeerContext(workload, public_key, private_key)


@pytest.fixture(scope="module")
def chunks(ctx):
    return plan_chunks(ctx.workload.states[0], CHUNK_VALUES)


def _by_peer(rows):
    return {r["peer"]: r for r in rows}


def test_resnet18_has_the_torchvision_parameter_count():
    model = ResNet18()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert model.state_dict()["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert model.state_dict()["fc.weight"].shape == (1000, 512)


def test_the_chunks_cover_every_value_once_within_the_bound(ctx, chunks):
    state = ctx.workload.states[0]
    assert len(chunks) > 1
    assert all(sum(p.numel for p in c) <= CHUNK_VALUES for c in chunks)
    covered = {name: torch.zeros(t.shape, dtype=torch.int64) for name, t in state.items()}
    for chunk in chunks:
        for p in chunk:
            covered[p.name][p.index] += 1
    assert all(bool((c == 1).all()) for c in covered.values())
    keys = [p.key for c in chunks for p in c]
    assert len(keys) == len(set(keys)) and "0.weight[0:3]" in keys  # 3 rows of 30 values fit in 100


def test_the_torchhefl_row_is_the_plaintext_weighted_average(ctx, chunks):
    row = _by_peer(run(ctx, chunks, tenseal=False, progress=False))["torchhefl_coins"]
    assert row["params"] == ctx.workload.num_params == 290 and row["sites"] == 3
    assert row["max_abs_error"] <= 1e-6
    assert row["chunks"] == len(chunks) and row["chunk_values"] <= CHUNK_VALUES
    assert row["ciphertexts_per_site"] >= len(chunks)
    assert row["seconds"] == pytest.approx(
        row["seconds_encrypt"] + row["seconds_aggregate"] + row["seconds_decrypt"], abs=1e-3
    )
    assert row["bytes_per_param"] > 0 and row["bytes_per_param_aggregate"] > 0
    assert row["peak_rss_mib_self"] > 0 and row["peak_rss_mib_children"] >= 0
    assert row["seconds_vs_torchhefl"] == 1.0 and row["bytes_vs_torchhefl"] == 1.0


def test_a_chunk_left_out_shows_in_the_error(ctx, chunks):
    # control: the error is measured on the reassembled state dict, so a chunk never run is caught
    row = _by_peer(run(ctx, chunks[:-1], tenseal=False, progress=False))["torchhefl_coins"]
    assert not row["max_abs_error"] <= 1e-6


def test_missing_tenseal_is_reported_as_skipped(ctx, chunks, monkeypatch):
    monkeypatch.setitem(sys.modules, "tenseal", None)  # as on a machine without the extra
    rows = _by_peer(run(ctx, chunks, progress=False))
    assert rows["tenseal_ckks_chunked"] == {"peer": "tenseal_ckks_chunked", "skipped": f"not installed: {INSTALL_HINT}"}
    assert "torchhefl_coins" in rows


def test_tenseal_is_close_to_the_plaintext_average(ctx, chunks):
    pytest.importorskip("tenseal")
    row = _by_peer(run(ctx, chunks, progress=False))["tenseal_ckks_chunked"]
    assert row["max_abs_error"] <= 1e-5
    assert row["ciphertexts_per_site"] == len(chunks)  # one CKKSVector of at most 4096 values per chunk
    assert row["seconds_vs_torchhefl"] > 0 and row["bytes_vs_torchhefl"] > 0


def test_main_prints_json_lines(monkeypatch, capsys):
    monkeypatch.setitem(big_model.MODELS, "lenet5", _tiny)
    assert big_model.main(["--model", "lenet5", "--bits", "512", "--chunk-values", "100", "--no-tenseal",
                           "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["peer"] for r in rows] == ["setup", "torchhefl_coins", "end"]
    assert rows[0]["params"] == 290 and rows[0]["parameters"] == 273 and rows[0]["key_bits"] == 512
    assert rows[1]["max_abs_error"] <= 1e-6
