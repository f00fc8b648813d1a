"""Accuracy vs bits: the default run (``python -m train.federated``) at several packing precisions.

    python -m benchmarks.precision [--seeds N] [--key-bits BITS] [--rounds R] [--only LABEL ...]

Runs ``--mode he --key-holder clients`` (WDBC, 3 sites, 30 rounds, 2048-bit keys: the defaults) at
each ``--he-resolution`` and ``--he-rounding`` of :data:`SETTINGS`, and ``--mode plain`` with the
same seed as the reference. Prints one JSON object per line:

- ``setup``: the machine's load average (``os.getloadavg``) and the settings, before anything runs;
- ``run``: one run: final test accuracy and AUC, the largest ``|weight - plain weight|`` over the
  final model, bytes up per round (every site's replies, as the server counts them), slots per
  ciphertext and ciphertexts per upload, seconds of the rounds and of the whole run (key included);
- ``summary``: per setting, the mean and range of each of those over the seeds;
- ``end``: the load average after the last run.

Stochastic rounding draws from the operating system's randomness, so those rows differ between
invocations even at one seed; the others are deterministic but for the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from torchhefl.federated import TrainConfig, build
from torchhefl.federated.clients_key import upload_encoding
from torchhefl.secure import SecureStateDict, packing

__all__ = ["SETTINGS", "main"]

#: (label, he_resolution, he_rounding); ``None``: the default encoding (2^-24)
SETTINGS = (
    ("default", None, "nearest"),
    ("1e-6", 1e-6, "nearest"),
    ("1e-4", 1e-4, "nearest"),
    ("1e-3", 1e-3, "nearest"),
    ("1e-2", 1e-2, "nearest"),
    ("1e-1", 1e-1, "nearest"),
    ("1e-3 stochastic", 1e-3, "stochastic"),
    ("1e-2 stochastic", 1e-2, "stochastic"),
    ("1e-1 stochastic", 1e-1, "stochastic"),
)
_FIELDS = ("test_accuracy", "test_auc", "max_abs_diff_vs_plain", "bytes_up_per_round", "seconds_rounds", "seconds_total")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _train(cfg: TrainConfig) -> tuple[object, list[dict], float]:
    start = time.perf_counter()
    sim = build(cfg)
    sim.server.setup()
    results = [sim.server.run_round(r) for r in range(1, cfg.rounds + 1)]
    return sim, results, time.perf_counter() - start


def _run(label: str, resolution: float | None, rounding: str, seed: int, plain: dict, base: dict) -> dict:
    cfg = TrainConfig(mode="he", key_holder="clients", seed=seed, he_resolution=resolution, he_rounding=rounding, **base)
    sim, results, total = _train(cfg)
    state = sim.final_state()
    fp = upload_encoding(cfg).precision
    bits = sim.public_key.bits
    last = results[-1]
    return {
        "bench": "run", "setting": label, "he_resolution": resolution, "he_rounding": rounding, "seed": seed,
        "scale_bits": fp.scale_bits, "slot_bits": fp.slot_bits, "slots_per_ciphertext": packing.slots_per_plaintext(bits, fp.slot_bits),
        "ciphertexts_per_upload": SecureStateDict.num_ciphertexts_for(state, sim.public_key, fp),
        "test_accuracy": round(float(last["test_accuracy"]), 4), "test_auc": round(float(last["test_auc"]), 4),
        "max_abs_diff_vs_plain": float(max((state[k].double() - plain[k].double()).abs().max() for k in plain)),
        "bytes_up_per_round": round(float(np.mean([r["bytes_up"] for r in results])), 1),
        "seconds_rounds": round(float(sum(r["time"] for r in results)), 2), "seconds_total": round(total, 2),
    }


def _summary(rows: list[dict]) -> dict:
    first = rows[0]
    out = {k: first[k] for k in ("setting", "he_resolution", "he_rounding", "scale_bits", "slot_bits", "slots_per_ciphertext", "ciphertexts_per_upload")}
    out = {"bench": "summary", **out, "seeds": [r["seed"] for r in rows]}
    for f in _FIELDS:
        values = [r[f] for r in rows]
        out[f] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--only", nargs="*", default=None, metavar="LABEL", help=f"settings to run, of: {', '.join(s[0] for s in SETTINGS)}")
    args = p.parse_args(argv)
    settings = [s for s in SETTINGS if args.only is None or s[0] in args.only]
    base = {"rounds": args.rounds, "key_bits": args.key_bits}
    if args.key_bits < 2048:
        base["extra"] = {"allow_insecure_keys": True}
    print(json.dumps({"bench": "setup", "load_average": _load(), "cpus": os.cpu_count(), "seeds": args.seeds, **base,
                      "settings": [s[0] for s in settings]}), flush=True)
    rows: dict[str, list[dict]] = {s[0]: [] for s in settings}
    for seed in range(args.seeds):
        plain_sim, plain_results, plain_total = _train(TrainConfig(mode="plain", seed=seed, **{**base, "extra": {}}))
        plain = plain_sim.final_state()
        print(json.dumps({
            "bench": "run", "setting": "plain", "seed": seed,
            "test_accuracy": round(float(plain_results[-1]["test_accuracy"]), 4), "test_auc": round(float(plain_results[-1]["test_auc"]), 4),
            "bytes_up_per_round": round(float(np.mean([r["bytes_up"] for r in plain_results])), 1),
            "seconds_rounds": round(float(sum(r["time"] for r in plain_results)), 2), "seconds_total": round(plain_total, 2),
        }), flush=True)
        for label, resolution, rounding in settings:
            row = _run(label, resolution, rounding, seed, plain, base)
            rows[label].append(row)
            print(json.dumps(row), flush=True)
    for label in rows:
        print(json.dumps(_summary(rows[label])), flush=True)
    print(json.dumps({"bench": "end", "load_average": _load()}), flush=True)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
