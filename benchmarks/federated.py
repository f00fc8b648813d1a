"""Whole-run benchmarks of ``python -m train.federated`` (registered in :mod:`benchmarks.he`)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from torchhefl.federated import TrainConfig, run

__all__ = ["bench_federated_round_overhead"]


def _timed_run(config: TrainConfig, folder: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = run(config, folder, progress=False, echo=None)
    return time.perf_counter() - start, summary


def _timed_command(mode: str, folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "train.federated", "--mode", mode, "--no-progress", "--quiet", "--logdir", str(folder)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def bench_federated_round_overhead(ctx=None, *, repeats: int = 2, seed: int = 0) -> dict:
    """The default run (WDBC, 3 sites, 30 rounds) in plain mode and in ``he --key-holder clients``.

    Both runs are complete, key generation (2048 bits) included, back to back in one process;
    ``he_over_plain`` is the ratio of the best wall times over ``repeats`` alternating pairs.
    ``he_over_plain_command`` is the same ratio for the whole ``python -m train.federated``
    command (interpreter start and imports included, which dilute the difference).
    """
    plain_cfg = TrainConfig(mode="plain", seed=seed)
    he_cfg = TrainConfig(mode="he", key_holder="clients", seed=seed)
    plain_times, he_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            t, plain = _timed_run(plain_cfg, Path(tmp) / f"plain{i}")
            plain_times.append(t)
            t, he = _timed_run(he_cfg, Path(tmp) / f"he{i}")
            he_times.append(t)
            a = torch.load(Path(tmp) / f"plain{i}" / "model.pt")
            b = torch.load(Path(tmp) / f"he{i}" / "model.pt")
        plain_cmd = min(_timed_command("plain", Path(tmp) / "cmd") for _ in range(repeats))
        he_cmd = min(_timed_command("he", Path(tmp) / "cmd") for _ in range(repeats))
    return {
        "bench": "federated_round_overhead",
        "rounds": plain_cfg.rounds,
        "clients": plain_cfg.clients,
        "key_bits": he_cfg.key_bits,
        "seconds_plain": round(min(plain_times), 3),
        "seconds_he": round(min(he_times), 3),
        "he_over_plain": round(min(he_times) / min(plain_times), 3),
        "seconds_plain_command": round(plain_cmd, 3),
        "seconds_he_command": round(he_cmd, 3),
        "he_over_plain_command": round(he_cmd / plain_cmd, 3),
        "bytes_up_plain": plain["bytes_up"],
        "bytes_up_he": he["bytes_up"],
        "bytes_down_plain": plain["bytes_down"],
        "bytes_down_he": he["bytes_down"],
        "test_accuracy_plain": plain["test_accuracy"],
        "test_accuracy_he": he["test_accuracy"],
        "max_abs_weight_diff": max(float((a[k] - b[k]).abs().max()) for k in a),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_federated_round_overhead()))
