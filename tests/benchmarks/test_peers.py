"""benchmarks.peers' plumbing on a tiny state_dict with a 512-bit key (no timings asserted)."""

import os
import sys

import pytest
from torch import nn

from benchmarks.peers import INSTALL_HINT, PEERS, Peer, PeerContext, make_workload, prepare_keys, run


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 1))  # 257 parameters


@pytest.fixture(scope="module")
def ctx():
    workload = make_workload(_tiny, sites=3, seed=0)
    public_key, private_key = prepare_keys(512, workload)  # bits < 2048: the explicit insecure opt-in
    return PeerContext(workload, public_key, private_key, sample=6, seed=0)


@pytest.fixture
def no_optional_peers(monkeypatch):
    # as on a machine without the extra: importing either raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tenseal", None)
    monkeypatch.setitem(sys.modules, "rust_paillier", None)


def _by_peer(rows):
    return {r["peer"]: r for r in rows}


def test_the_torchhefl_rows_are_the_plaintext_weighted_average(ctx, no_optional_peers):
    torchhefl_rows = ["torchhefl", "torchhefl_coins", "torchhefl_precomputed", "torchhefl_precomputed_1e-6"]
    rows = _by_peer(run(ctx, [*torchhefl_rows, "phe"]))
    assert list(rows) == [*torchhefl_rows, "phe", "floor"]
    for name in torchhefl_rows:
        row = rows[name]
        assert row["params"] == 257 and row["sites"] == 3
        assert row["max_abs_error"] <= 1e-6
        assert row["seconds"] == pytest.approx(
            row["seconds_encrypt"] + row["seconds_aggregate"] + row["seconds_decrypt"], abs=1e-3
        )
        assert row["bytes_per_param"] > 0
    pre = rows["torchhefl_precomputed"]
    assert pre["seconds_total"] == pytest.approx(pre["seconds"] + pre["seconds_precompute"], abs=1e-3)
    assert pre["seconds_precompute"] > 0 and pre["cpu_seconds_total"] >= pre["cpu_seconds"]
    narrow = rows["torchhefl_precomputed_1e-6"]
    assert narrow["resolution_bits"] == 20 and narrow["bytes_per_param"] < 0.75 * pre["bytes_per_param"]
    assert narrow["max_abs_error"] > pre["max_abs_error"]  # coarser, still within 1e-6
    assert rows["torchhefl"]["seconds_vs_torchhefl"] == 1.0
    assert rows["torchhefl"]["bytes_vs_torchhefl"] == 1.0
    # phe on its sample: exact up to float64 rounding, and it says it is an estimate
    assert rows["phe"]["max_abs_error"] <= 1e-9
    assert rows["phe"]["estimated_from_sample_values"] == 6
    # the floor counts the packed ciphertexts of every site's upload
    assert rows["floor"]["packed_ciphertexts"] == 3 * rows["torchhefl"]["ciphertexts_per_site"]


def test_the_error_is_measured_against_the_weighted_average(ctx):
    # control: one site's own state dict is not the average, and max_error says so
    wl = ctx.workload
    assert wl.max_error(wl.average) == 0.0
    assert wl.max_error(wl.states[0]) > 1e-3


def test_a_missing_peer_is_reported_as_skipped(ctx, no_optional_peers):
    rows = _by_peer(run(ctx, ["tenseal_ckks", "tenseal_ckks_flat", "rust_paillier"]))
    skipped = f"not installed: {INSTALL_HINT}"
    assert rows["tenseal_ckks"] == {"peer": "tenseal_ckks", "skipped": skipped}
    assert rows["tenseal_ckks_flat"] == {"peer": "tenseal_ckks_flat", "skipped": skipped}
    assert rows["rust_paillier"] == {"peer": "rust_paillier", "skipped": skipped}
    assert "torchhefl" in rows and "floor" in rows  # the baseline runs anyway


def test_what_a_peer_prints_to_stdout_goes_to_stderr(ctx, monkeypatch, capfd):
    # stdout is JSON lines: native libraries' chatter (TenSEAL's warnings) is sent to stderr
    def noisy(c):
        os.write(1, b"WARNING: from native code\n")
        return {"peer": "noisy", "seconds": 1.0, "bytes_per_param": 1.0}

    monkeypatch.setitem(PEERS, "noisy", Peer(noisy))
    rows = _by_peer(run(ctx, ["noisy"]))
    assert rows["noisy"]["seconds_vs_torchhefl"] > 0
    out, err = capfd.readouterr()
    assert "WARNING" not in out
    assert "WARNING: from native code" in err


def test_tenseal_ckks_is_close_to_the_plaintext_average(ctx):
    pytest.importorskip("tenseal")
    rows = _by_peer(run(ctx, ["tenseal_ckks", "tenseal_ckks_flat"]))
    assert rows["tenseal_ckks"]["max_abs_error"] <= 1e-5
    assert rows["tenseal_ckks_flat"]["max_abs_error"] <= 1e-5
    # one ciphertext per entry (4 entries of at most 4096 values) against one for all 257 values
    assert rows["tenseal_ckks"]["ciphertexts_per_site"] == 4
    assert rows["tenseal_ckks_flat"]["ciphertexts_per_site"] == 1


def test_rust_paillier_is_the_plaintext_average_on_its_sample(ctx):
    pytest.importorskip("rust_paillier")
    row = _by_peer(run(ctx, ["rust_paillier"]))["rust_paillier"]
    assert row["max_abs_error"] <= 1e-9
    assert row["estimated_from_sample_values"] == 6
