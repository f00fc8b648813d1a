"""Writes a run's folder: TensorBoard events, ``metrics.csv``, ``config.json`` and ``model.pt``."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["METRIC_COLUMNS", "TIMING_COLUMNS", "RunRecorder"]

#: the fixed columns of ``metrics.csv``; per-client training losses follow as ``train_loss_<cid>``, and
#: for more than 2 classes ``test_count_<k>`` and ``test_predicted_<k>`` (test rows of class ``k``,
#: predictions of class ``k``); ``test_f1`` and ``test_auc`` are then the macro F1 and one-vs-rest AUC.
#: Wall-clock figures go to ``timings.csv`` instead, so that ``metrics.csv`` is reproducible.
METRIC_COLUMNS = [
    "round",
    "test_accuracy",
    "test_loss",
    "test_auc",
    "test_f1",
    "train_loss",
    "clients",
    "dropped",
    "bytes_up",
    "bytes_down",
    "refreshes",
    "epsilon",
]

TIMING_COLUMNS = ["round", "seconds_round", "seconds_encrypt", "seconds_aggregate", "seconds_decrypt", "seconds_train"]


class RunRecorder:
    """Records one run into ``run_dir``.

    ``metrics.csv`` holds only what the run computed (no wall-clock times), so the same seed gives
    the same file; times go to TensorBoard (``time/round``, ``time/encrypt``, ...).
    """

    def __init__(
        self, run_dir: str | Path, config: Mapping, client_ids: list[str], *, tensorboard: bool = True, num_classes: int = 2,
        metrics: list[str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.client_ids = list(client_ids)
        self.config = dict(config)
        (self.run_dir / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        self.columns = METRIC_COLUMNS + [f"train_loss_{cid}" for cid in self.client_ids]
        #: the per-class test counts (none for a binary model)
        self.class_metrics = [] if num_classes == 2 else [
            f"{what}_{k}" for what in ("count", "predicted") for k in range(num_classes)
        ]
        #: the run's own test metrics (``test_<name>``: the mean of a per-row score)
        self.own_metrics = list(metrics or [])
        self.columns += [f"test_{name}" for name in self.class_metrics + self.own_metrics]
        self._csv_path = self.run_dir / "metrics.csv"
        self._timings_path = self.run_dir / "timings.csv"
        self.kept_timings: list[dict] = []
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir))

    def start(self, *, resume_round: int = 0) -> list[dict]:
        """Create ``metrics.csv`` and ``timings.csv`` with headers (or keep their first ``resume_round`` rows).

        Returns the kept rows of ``metrics.csv`` (those of ``timings.csv`` are in ``kept_timings``).
        Rows past ``resume_round`` (written before a crash, after the last checkpoint) are dropped.
        """
        kept: dict = {}
        for path, columns in ((self._csv_path, self.columns), (self._timings_path, TIMING_COLUMNS)):
            rows = []
            if resume_round and path.exists():
                with path.open(newline="") as f:
                    rows = [r for r in csv.DictReader(f) if int(r["round"]) <= resume_round]
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
                w.writeheader()
                w.writerows(rows)
            kept[path] = rows
        self.kept_timings = kept[self._timings_path]
        return kept[self._csv_path]

    def record(self, result: Mapping) -> dict:
        """Append one round's result; returns the CSV row written."""
        rnd = int(result["round"])
        seconds = result.get("seconds", {})
        losses = result.get("train_loss", {})
        row = {
            "round": rnd,
            "test_accuracy": _fmt(result["test_accuracy"]),
            "test_loss": _fmt(result["test_loss"]),
            "test_auc": _fmt(result["test_auc"]),
            "test_f1": _fmt(result["test_f1"]),
            "train_loss": _fmt(sum(losses.values()) / len(losses)) if losses else "",
            "clients": len(result.get("clients", [])),
            "dropped": " ".join(result.get("dropped", [])),
            "bytes_up": result.get("bytes_up", 0),
            "bytes_down": result.get("bytes_down", 0),
            "refreshes": result.get("refreshes", ""),
            "epsilon": _fmt(result["epsilon"]) if "epsilon" in result else "",
        }
        for cid in self.client_ids:
            row[f"train_loss_{cid}"] = _fmt(losses[cid]) if cid in losses else ""
        for name in self.class_metrics + self.own_metrics:
            row[f"test_{name}"] = _fmt(result[f"test_{name}"]) if f"test_{name}" in result else ""
        with self._csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(row)
        timing = {"round": rnd, "seconds_round": f"{result.get('time', 0.0):.6f}"}
        timing.update({f"seconds_{p}": f"{seconds.get(p, 0.0):.6f}" for p in ("encrypt", "aggregate", "decrypt", "train")})
        with self._timings_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=TIMING_COLUMNS, lineterminator="\n").writerow(timing)
        if self.writer is not None:
            w = self.writer
            for key in ("accuracy", "loss", "auc", "f1"):
                w.add_scalar(f"test/{key}", result[f"test_{key}"], rnd)
            for name in self.class_metrics:  # test/count/3, test/predicted/3
                if f"test_{name}" in result:
                    w.add_scalar("test/" + name.replace("_", "/"), result[f"test_{name}"], rnd)
            for name in self.own_metrics:
                if f"test_{name}" in result:
                    w.add_scalar(f"test/{name}", result[f"test_{name}"], rnd)
            for cid, v in losses.items():
                if not math.isnan(v):  # sites training on ciphertexts cannot see their loss
                    w.add_scalar(f"train/loss/{cid}", v, rnd)
            w.add_scalar("time/round", result.get("time", 0.0), rnd)
            for phase, s in seconds.items():
                w.add_scalar(f"time/{phase}", s, rnd)
            w.add_scalar("comm/bytes_up", result.get("bytes_up", 0), rnd)
            w.add_scalar("comm/bytes_down", result.get("bytes_down", 0), rnd)
            if "refreshes" in result:
                w.add_scalar("he/refreshes", result["refreshes"], rnd)
            if "epsilon" in result:
                w.add_scalar("privacy/epsilon", result["epsilon"], rnd)
            w.flush()
        return row

    def finish(self, final_state: Mapping[str, torch.Tensor] | None, final: Mapping) -> None:
        """Save ``model.pt`` and the hyper-parameters with the final metrics."""
        if final_state is not None:
            torch.save(dict(final_state), self.run_dir / "model.pt")
        if self.writer is not None:
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.config.items() if k != "extra"}
            metrics = {f"hparam/{k}": float(v) for k, v in final.items() if isinstance(v, (int, float))}
            self.writer.add_hparams(hparams, metrics, run_name=".")
            self.writer.close()


def _fmt(v: float) -> str:
    v = float(v)
    return "nan" if math.isnan(v) else repr(v)
