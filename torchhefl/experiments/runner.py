"""Run the sweeps: plan the distinct training runs, run each once, read every setting off them.

A *job* is one federated training run (one mode, one seed, one configuration) for as many rounds
as its longest setting needs; it records the test metrics after every round. A *row* is one
setting of one sweep in one mode for one seed, read from its job after the setting's rounds.
Settings shared between sweeps (Table 2's 30 rounds is Table 3's batch 64 and Table 4's lr 0.01)
also share their job.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from torchhefl.exceptions import ConfigError
from torchhefl.experiments.sweeps import Sweep
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.modes import MODES, cli_modes, key_holders, mode_of

__all__ = ["ExperimentSettings", "Job", "estimate_seconds", "plan", "rows_of", "run_job", "run_jobs"]

#: the per-round metrics a job records
METRICS = ("accuracy", "auc", "f1", "loss")


@dataclass(frozen=True)
class ExperimentSettings:
    """How the sweeps are run.

    Attributes:
        modes: protection modes, of ``plain`` (the paper's DP) and ``he`` (the paper's HE).
        key_holder: who holds the Paillier key in ``he`` mode: ``server`` (the paper's HEM,
            clients train on encrypted weights) or ``clients`` (encrypted exchange, the server
            only adds ciphertexts).
        key_bits: Paillier modulus size.
        seeds: the seeds each setting is repeated over (split, partition, initial weights, batches).
        allow_insecure_keys: permit ``key_bits < 2048`` (tests and quick runs only).
    """

    modes: tuple[str, ...] = ("plain", "he")
    key_holder: str = "server"
    key_bits: int = 2048
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    allow_insecure_keys: bool = False

    def validate(self) -> "ExperimentSettings":
        choices = cli_modes()
        for m in self.modes:
            if m not in choices:
                raise ConfigError(f"--modes takes {' and '.join(choices)}; got {m!r}")
        if not self.modes:
            raise ConfigError(f"--modes needs at least one of {', '.join(choices)}")
        if self.key_holder not in key_holders():
            raise ConfigError(f"--key-holder must be {' or '.join(sorted(key_holders(), reverse=True))}; got {self.key_holder!r}")
        if not self.seeds:
            raise ConfigError("--seeds must be at least 1")
        if self.key_bits < 2048 and not self.allow_insecure_keys:
            raise ConfigError(f"--key-bits {self.key_bits} is insecure; use 2048 or more (or --quick)")
        return self


@dataclass
class Job:
    """One training run: its configuration, and after running, the metrics after every round."""

    config: dict
    #: filled by :func:`run_job`: one dict per round (round, accuracy, auc, f1, loss, seconds)
    curve: list[dict] = field(default_factory=list)
    setup_seconds: float = 0.0

    @property
    def key(self) -> tuple:
        return _key(self.config)


def _key(config: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k != "rounds"))


def _train_config(fields: dict, mode: str, seed: int, settings: ExperimentSettings) -> dict:
    cfg = TrainConfig(**fields)
    cfg.mode = mode
    cfg.seed = seed
    if any(m.key_holder is not None for m in MODES.values() if m.cli_mode == mode):
        cfg.key_holder = settings.key_holder
    chosen = mode_of(cfg)
    if chosen.uses_key:
        cfg.key_bits = settings.key_bits
    if not chosen.clips_gradients:
        cfg.clip_norm = None  # its sites train on ciphertexts: no plaintext gradient to clip
    if settings.allow_insecure_keys:
        cfg.extra = {"allow_insecure_keys": True}
    cfg.validate()
    return cfg.to_dict()


def plan(sweeps: Sequence[Sweep], settings: ExperimentSettings) -> list[Job]:
    """The distinct runs the sweeps need, each for the most rounds any of its settings reads."""
    jobs: dict[tuple, Job] = {}
    for sweep in sweeps:
        for mode in settings.modes:
            for seed in settings.seeds:
                for setting in sweep.settings:
                    cfg = _train_config(sweep.config_fields(setting), mode, seed, settings)
                    job = jobs.setdefault(_key(cfg), Job(cfg))
                    job.config["rounds"] = max(job.config["rounds"], cfg["rounds"])
    # the costly mode last, so the progress bar's rate settles early on the cheap runs
    return sorted(jobs.values(), key=lambda j: (j.config["mode"] != "plain", j.config["seed"]))


def run_job(config: dict, key_dir: str | None = None) -> tuple[list[dict], float]:
    """Train ``config`` in process; the test metrics after each round, and the set-up seconds.

    ``key_dir``: a folder with the Paillier key pair for a mode that uses one (else each such run
    generates its own)."""
    from torchhefl.federated.simulation import build

    cfg = TrainConfig.from_dict(dict(config))
    if key_dir is not None and mode_of(cfg).uses_key:
        cfg.extra = {**cfg.extra, "key_dir": key_dir}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # insecure-key warnings of quick runs, once per job
        start = time.perf_counter()
        sim = build(cfg)
        sim.server.setup()
        setup = time.perf_counter() - start
        curve = []
        for rnd in range(1, cfg.rounds + 1):
            res = sim.server.run_round(rnd)
            curve.append({"round": rnd, **{m: float(res[f"test_{m}"]) for m in METRICS}, "seconds": float(res["time"])})
    return curve, setup


def _run_job_item(item: tuple[int, dict, str | None]) -> tuple[int, list[dict], float]:
    i, config, key_dir = item
    curve, setup = run_job(config, key_dir)
    return i, curve, setup


def run_jobs(
    jobs: list[Job], *, workers: int = 1, progress: Callable[[Job], None] | None = None, key_dir: str | None = None
) -> None:
    """Run every job (``workers`` processes at a time), filling ``job.curve``; ``progress`` after each.
    ``key_dir``: one key pair for every run whose mode uses one (see :func:`run_job`)."""
    items = [(i, j.config, key_dir) for i, j in enumerate(jobs)]
    if workers <= 1 or len(jobs) <= 1 or "fork" not in mp.get_all_start_methods():
        results: Iterator = map(_run_job_item, items)
        _collect(jobs, results, progress)
        return
    # worker processes are daemonic, so the Paillier layer inside them stays single-process
    with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
        _collect(jobs, pool.imap_unordered(_run_job_item, items), progress)


def _collect(jobs: list[Job], results: Iterator, progress: Callable[[Job], None] | None) -> None:
    for i, curve, setup in results:
        jobs[i].curve, jobs[i].setup_seconds = curve, setup
        if progress is not None:
            progress(jobs[i])


def estimate_seconds(jobs: list[Job], *, workers: int = 1, rounds_probe: int = 3, key_dir: str | None = None) -> float:
    """Wall-clock estimate for ``jobs``: one short probe run per mode (median round time, so the
    first round's warm-up does not count), scaled by rounds and local epochs."""
    per_mode: dict[str, tuple[float, float]] = {}
    for job in jobs:
        mode = job.config["mode"]
        if mode in per_mode:
            continue
        probe = {**job.config, "rounds": rounds_probe, "local_epochs": 1}
        if workers > 1 and "fork" in mp.get_all_start_methods():
            # probe where the jobs will run (a pool worker), and keep this process free of the
            # helper processes the Paillier layer forks on first use, which forked workers would share
            with mp.get_context("fork").Pool(1) as pool:
                curve, setup = pool.apply(run_job, (probe, key_dir))
        else:
            curve, setup = run_job(probe, key_dir)
        per_mode[mode] = (setup, float(np.median([r["seconds"] for r in curve])) / _local_steps(probe))
    total = 0.0
    for job in jobs:
        setup, per_step = per_mode[job.config["mode"]]
        total += setup + per_step * _local_steps(job.config) * job.config["rounds"]
    return total / max(1, min(workers, len(jobs)))


def _local_steps(config: dict) -> int:
    """SGD steps a site takes per round, for WDBC's 569 rows (a cost proxy: HEM pays per step)."""
    rows = 569 * (1.0 - config["test_size"]) / config["clients"]
    return math.ceil(rows / config["batch_size"]) * config["local_epochs"]


def rows_of(sweeps: Sequence[Sweep], jobs: list[Job], settings: ExperimentSettings) -> list[dict]:
    """One row per sweep, mode, setting and seed: the metrics after the setting's rounds and the curve."""
    by_key = {j.key: j for j in jobs}
    rows = []
    for sweep in sweeps:
        for mode in settings.modes:
            for setting in sweep.settings:
                for seed in settings.seeds:
                    cfg = _train_config(sweep.config_fields(setting), mode, seed, settings)
                    job = by_key[_key(cfg)]
                    curve = job.curve[: setting.rounds]
                    if len(curve) < setting.rounds:
                        raise RuntimeError(f"job for {sweep.name}/{setting.label} has {len(curve)} rounds")
                    last = curve[-1]
                    keyed = mode_of(TrainConfig.from_dict(cfg)).uses_key
                    rows.append(
                        {
                            "sweep": sweep.name,
                            "figure": sweep.figure if sweep.figure is not None else "",
                            "mode": mode,
                            "scheme": "HE" if keyed else "DP",
                            "key_holder": cfg["key_holder"] if keyed else "",
                            "key_bits": cfg["key_bits"] if keyed else "",
                            "setting": setting.label,
                            "seed": seed,
                            "rounds": setting.rounds,
                            "lr": cfg["lr"],
                            "batch_size": cfg["batch_size"],
                            "local_epochs": cfg["local_epochs"],
                            "aggregator": cfg["aggregator"],
                            "mu": cfg["mu"] if cfg["aggregator"] == "fedprox" else "",
                            "partition": cfg["partition"],
                            "clients": cfg["clients"],
                            **{m: last[m] for m in METRICS},
                            "seconds": job.setup_seconds + sum(r["seconds"] for r in curve),
                            "curve": [r["accuracy"] for r in curve],
                        }
                    )
    return rows
