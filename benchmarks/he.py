"""Homomorphic-encryption benchmarks: ``python -m benchmarks.he [--only NAME] [--bits N]``.

Prints one JSON object per line, one per bench, each with its baseline measured in the same run.
Benches live in the ``BENCHES`` registry (name -> function taking a :class:`BenchContext`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from torchhefl.nn.functional import taylor_grad
from torchhefl.secure import EncryptedTensor, PrivateKey, PublicKey, SecureStateDict, generate_keypair

__all__ = ["BENCHES", "BenchContext", "lenet5", "main"]


@dataclass
class BenchContext:
    """What every bench shares: one key pair (generated once per run) and a seed."""

    public_key: PublicKey
    private_key: PrivateKey
    seed: int = 0


def lenet5() -> nn.Module:
    """LeNet-5 for 32x32 greyscale inputs: 61,706 parameters (the state_dict the benches encrypt)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def _timed(fn: Callable, repeats: int = 1):
    """``(result, best wall-clock seconds over repeats)``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def bench_state_dict_roundtrip(ctx: BenchContext, *, clients: int = 3, phe_sample: int = 24) -> dict:
    """LeNet-5 state dict: clients encrypt + serialise, server averages, clients decrypt."""
    pk, sk = ctx.public_key, ctx.private_key
    torch.manual_seed(ctx.seed)
    states = []
    for _ in range(clients):
        states.append(OrderedDict((k, v.clone()) for k, v in lenet5().state_dict().items()))
    weights = [100 + 37 * i for i in range(clients)]
    n_params = sum(v.numel() for v in states[0].values())

    encs, t_enc = _timed(lambda: [SecureStateDict.encrypt(s, pk) for s in states])
    blobs, t_ser = _timed(lambda: [e.to_bytes() for e in encs])
    parsed, t_parse = _timed(lambda: [SecureStateDict.from_bytes(b, public_key=pk) for b in blobs])
    avg, t_agg = _timed(lambda: SecureStateDict.weighted_average(parsed, weights=weights))
    out, t_dec = _timed(lambda: avg.decrypt(sk))
    total = t_enc + t_ser + t_parse + t_agg + t_dec

    total_w = sum(weights)
    err = 0.0
    for k in states[0]:
        ref = sum(w * s[k].to(torch.float64) for w, s in zip(weights, states)) / total_w
        err = max(err, float((out[k].to(torch.float64) - ref).abs().max()))

    # baseline: phe EncryptedNumber per value, on a random sample of values, scaled to all values
    flat = [torch.cat([s[k].reshape(-1).to(torch.float64) for k in s]) for s in states]
    rng = random.Random(ctx.seed)
    idx = rng.sample(range(n_params), phe_sample)
    ppk, psk = pk.phe, sk.phe
    phe_err = 0.0
    t0 = time.perf_counter()
    for i in idx:
        enc = [ppk.encrypt(float(f[i])) for f in flat]
        agg = enc[0] * weights[0]
        for e, w in zip(enc[1:], weights[1:]):
            agg = agg + e * w
        v = psk.decrypt(agg) / total_w
        phe_err = max(phe_err, abs(v - sum(w * float(f[i]) for w, f in zip(weights, flat)) / total_w))
    t_phe = (time.perf_counter() - t0) / phe_sample * n_params

    # the same round with coins derived from the private key (the sites hold it in he-clients mode)
    coins = sk.coins()
    c_encs, tc_enc = _timed(lambda: [SecureStateDict.encrypt(s, pk, coins=coins) for s in states])
    c_avg = SecureStateDict.weighted_average(c_encs, weights=weights)
    c_out, tc_dec = _timed(lambda: c_avg.decrypt(sk))
    for k in states[0]:
        ref = sum(w * s[k].to(torch.float64) for w, s in zip(weights, states)) / total_w
        err = max(err, float((c_out[k].to(torch.float64) - ref).abs().max()))
    total_coins = tc_enc + t_ser + t_parse + t_agg + tc_dec
    bytes_up = len(blobs[0])
    return {
        "bench": "state_dict_roundtrip",
        "key_bits": pk.bits,
        "clients": clients,
        "params": n_params,
        "ciphertexts_per_client": encs[0].num_ciphertexts,
        "seconds_encrypt": round(t_enc, 4),
        "seconds_serialize": round(t_ser + t_parse, 4),
        "seconds_aggregate": round(t_agg, 4),
        "seconds_decrypt": round(t_dec, 4),
        "seconds_total": round(total, 4),
        "phe_seconds_estimated": round(t_phe, 2),
        "phe_sample_values": phe_sample,
        "speedup_vs_phe": round(t_phe / total, 1),
        "seconds_encrypt_with_coins": round(tc_enc, 4),
        "seconds_decrypt_with_coins": round(tc_dec, 4),
        "speedup_vs_phe_with_coins": round(t_phe / total_coins, 1),
        "bytes_per_client": bytes_up,
        "bytes_per_param": round(bytes_up / n_params, 3),
        "phe_bytes_per_param": pk.ciphertext_bytes,
        "max_abs_error": err,
        "phe_max_abs_error": phe_err,
    }


def _phe_taylor(enc_w: list, X: torch.Tensor, y_pm: torch.Tensor) -> list:
    """``X^T (X w / 4 - y / 2) / n`` with phe EncryptedNumbers, as a naive implementation would."""
    n, d = X.shape
    Xl, yl = X.tolist(), y_pm.tolist()
    z = []
    for i in range(n):
        acc = enc_w[0] * Xl[i][0]
        for j in range(1, d):
            acc = acc + enc_w[j] * Xl[i][j]
        z.append(acc * 0.25 - yl[i] * 0.5)
    grad = []
    for j in range(d):
        acc = z[0] * Xl[0][j]
        for i in range(1, n):
            acc = acc + z[i] * Xl[i][j]
        grad.append(acc * (1.0 / n))
    return grad


def _phe_gram(enc_w: list, gram: torch.Tensor, offset: torch.Tensor) -> list:
    """``gram @ w - offset`` with phe EncryptedNumbers (the same algorithm torchhefl uses)."""
    G, o = gram.tolist(), offset.tolist()
    out = []
    for i, row in enumerate(G):
        acc = enc_w[0] * row[0]
        for j in range(1, len(row)):
            acc = acc + enc_w[j] * row[j]
        out.append(acc - o[i])
    return out


def bench_encrypted_taylor_batch(ctx: BenchContext, *, n: int = 64, d: int = 31) -> dict:
    """The Taylor-loss gradient of a 64 x 31 batch on an encrypted 31-vector of weights."""
    pk, sk = ctx.public_key, ctx.private_key
    g = torch.Generator().manual_seed(ctx.seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[:, -1] = 1.0  # bias column
    y = (torch.rand(n, generator=g) < 0.5).to(torch.float64)
    w = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    ref = taylor_grad(w, X, y)

    enc_w, t_enc = _timed(lambda: EncryptedTensor.encrypt(w, pk))
    grad, t_grad = _timed(lambda: taylor_grad(enc_w, X, y), repeats=3)
    out, t_dec = _timed(lambda: grad.decrypt(sk))
    err = float((out - ref).abs().max())

    ppk, psk = pk.phe, sk.phe
    pw, tp_enc = _timed(lambda: [ppk.encrypt(float(v)) for v in w])
    y_pm = 2.0 * y - 1.0
    pg, tp_grad = _timed(lambda: _phe_taylor(pw, X, y_pm), repeats=3)
    pout, tp_dec = _timed(lambda: torch.tensor([psk.decrypt(v) for v in pg], dtype=torch.float64))
    phe_err = float((pout - ref).abs().max())
    gram = (X.T @ X) * (0.25 / n)
    offset = (X.T @ y_pm) * (0.5 / n)
    _, tp_gram = _timed(lambda: _phe_gram(pw, gram, offset), repeats=3)
    return {
        "bench": "encrypted_taylor_batch",
        "key_bits": pk.bits,
        "timing": "best of 3 for the gradient, both sides",
        "batch": [n, d],
        "seconds_encrypt": round(t_enc, 4),
        "seconds_grad": round(t_grad, 4),
        "seconds_decrypt": round(t_dec, 4),
        "phe_seconds_encrypt": round(tp_enc, 4),
        "phe_seconds_grad": round(tp_grad, 4),
        "phe_seconds_decrypt": round(tp_dec, 4),
        "speedup_vs_phe": round(tp_grad / t_grad, 1),
        "speedup_vs_phe_end_to_end": round((tp_enc + tp_grad + tp_dec) / (t_enc + t_grad + t_dec), 1),
        "phe_seconds_grad_same_algorithm": round(tp_gram, 4),
        "speedup_vs_phe_same_algorithm": round(tp_gram / t_grad, 1),
        "max_abs_error": err,
        "phe_max_abs_error": phe_err,
        "scale_after": grad.scale,
        "headroom_bits_after": grad.headroom_bits,
    }


def _helper_cpu_seconds() -> float:
    """CPU seconds used so far by the helper processes: HEM's split products and the random factors
    drawn ahead (Linux /proc; 0 where unavailable)."""
    import os

    from torchhefl.secure.randomness import HELPER as FACTORS
    from torchhefl.secure.split_product import HELPER

    total = 0.0
    for helper in (HELPER, FACTORS):
        process = helper.process
        if process is None or not process.is_alive():
            continue
        try:
            with open(f"/proc/{process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


def bench_encrypted_training_run(ctx: BenchContext, *, rounds: int = 30, clients: int = 3) -> dict:
    """The default WDBC run with the server holding the key (HEM): clients train on ciphertexts.

    Wall time of the whole run (build, key agreement, standardisation, every round, evaluation),
    against ONE naive phe ``EncryptedNumber`` Taylor-gradient batch (64 x 31), timed three times
    before and three times after the run (the median, so both see the same machine load). The
    CPU-time ratio (this process plus its helper processes) is less sensitive to other load. The run
    reuses this bench's key pair (loaded from a 0600 file), so key generation is not counted; it runs
    in a warm process like the baseline (scikit-learn imported first, its import timed apart as
    ``seconds_import_data_libraries``). Also reports how far the result is from plain mode with the
    same seed and ``--clip-norm none``.
    """
    import os
    import statistics
    import tempfile
    import warnings
    from pathlib import Path

    from torchhefl.federated import TrainConfig, build
    from torchhefl.federated.keyring import PRIVATE_KEY_FILE
    from torchhefl.secure import InsecureKeyWarning

    pk, sk = ctx.public_key, ctx.private_key
    common = dict(rounds=rounds, clients=clients, seed=ctx.seed, clip_norm=None, key_bits=pk.bits)

    def train(cfg):
        sim = build(cfg)
        sim.server.setup()
        return sim, [sim.run_round(r) for r in range(1, cfg.rounds + 1)]

    g = torch.Generator().manual_seed(ctx.seed)
    X = torch.randn(64, 31, generator=g, dtype=torch.float64)
    X[:, -1] = 1.0
    y_pm = 2.0 * (torch.rand(64, generator=g) < 0.5).to(torch.float64) - 1.0
    pw = [pk.phe.encrypt(float(v)) for v in 0.5 * torch.randn(31, generator=g, dtype=torch.float64)]
    naive_wall: list[float] = []
    naive_cpu: list[float] = []

    def naive(times: int = 3) -> None:
        for _ in range(times):
            w0, c0 = time.perf_counter(), time.process_time()
            _phe_taylor(pw, X, y_pm)
            naive_wall.append(time.perf_counter() - w0)
            naive_cpu.append(time.process_time() - c0)

    # the run is timed in a warm process, like the baseline: the data libraries imported first (as
    # they are when another bench ran before this one), their import timed apart
    w0 = time.perf_counter()
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    t_import = time.perf_counter() - w0
    load_before = os.getloadavg()[0]
    naive()
    with tempfile.TemporaryDirectory() as key_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sk.save(Path(key_dir) / PRIVATE_KEY_FILE)
        extra = {"key_dir": key_dir, **({"allow_insecure_keys": True} if pk.bits < 2048 else {})}
        cfg = TrainConfig(mode="he", key_holder="server", extra=extra, **common)
        w0, c0, h0 = time.perf_counter(), time.process_time(), _helper_cpu_seconds()
        sim, results = train(cfg)
        t_run = time.perf_counter() - w0
        cpu_run = time.process_time() - c0 + _helper_cpu_seconds() - h0
    naive()
    load_after = os.getloadavg()[0]
    psim, presults = train(TrainConfig(mode="plain", **common))

    t_naive, cpu_naive = statistics.median(naive_wall), statistics.median(naive_cpu)
    final, plain = sim.final_state(), psim.final_state()
    seconds: dict[str, float] = {}
    for r in results:
        for phase, v in r["seconds"].items():
            seconds[phase] = seconds.get(phase, 0.0) + v
    return {
        "bench": "encrypted_training_run",
        "key_bits": pk.bits,
        "rounds": rounds,
        "clients": clients,
        "steps_per_client_round": cfg.local_epochs * -(-sim.clients[0].num_examples // cfg.batch_size),
        "seconds_run": round(t_run, 3),
        "cpu_seconds_run": round(cpu_run, 3),
        "seconds_import_data_libraries": round(t_import, 3),
        "seconds_by_phase": {k: round(v, 3) for k, v in sorted(seconds.items())},
        "naive_batch_seconds": round(t_naive, 4),
        "naive_batch_cpu_seconds": round(cpu_naive, 4),
        "run_over_naive_batch": round(t_run / t_naive, 2),
        "cpu_run_over_naive_batch": round(cpu_run / cpu_naive, 2),
        "target_run_over_naive_batch": 3,
        "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
        "refreshes": sum(r.get("refreshes", 0) for r in results),
        "bytes_up": sum(r["bytes_up"] for r in results),
        "bytes_down": sum(r["bytes_down"] for r in results),
        "test_accuracy": results[-1]["test_accuracy"],
        "plain_test_accuracy": presults[-1]["test_accuracy"],
        "max_abs_weight_diff_vs_plain": max(float((final[k] - plain[k]).abs().max()) for k in final),
    }


from benchmarks.federated import bench_federated_round_overhead  # noqa: E402
from benchmarks.secagg import bench_secure_aggregation  # noqa: E402

BENCHES: dict[str, Callable[[BenchContext], dict]] = {
    "state_dict_roundtrip": bench_state_dict_roundtrip,
    "encrypted_taylor_batch": bench_encrypted_taylor_batch,
    "federated_round_overhead": bench_federated_round_overhead,
    "encrypted_training_run": bench_encrypted_training_run,
    "secure_aggregation": bench_secure_aggregation,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.he", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only this bench (repeatable)")
    parser.add_argument("--bits", type=int, default=2048, help="key size in bits (default 2048)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # the HE work runs in this process (plus forked workers); BLAS threads on these tiny matrices
    # only contend with them for the cores
    torch.set_num_threads(1)
    names = args.only or list(BENCHES)
    t0 = time.perf_counter()
    pk, sk = generate_keypair(args.bits, allow_insecure=args.bits < 2048)
    pk.precompute()  # build the randomness table once, outside the timed phases
    ctx = BenchContext(pk, sk, args.seed)
    print(json.dumps({"bench": "setup", "key_bits": args.bits, "seconds_keygen_and_tables": round(time.perf_counter() - t0, 3)}), flush=True)
    for name in names:
        print(json.dumps(BENCHES[name](ctx)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
