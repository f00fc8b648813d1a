"""python -m train.experiments: the paper's experiments (Tables 2-6, Figures 3-7) in plain and HE modes.

Writes OUT/results.csv (one row per sweep, mode, setting and seed, with the per-round accuracy
curve), OUT/fig3_*.png ... fig7_*.png, OUT/report.md (our numbers beside the paper's) and
OUT/run.json (the command and its wall clock).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

from torchhefl.exceptions import ConfigError, DataError, ProtocolError
from torchhefl.experiments.runner import ExperimentSettings, estimate_seconds, plan, rows_of, run_jobs
from torchhefl.experiments.sweeps import SWEEPS, get_sweeps

__all__ = ["build_parser", "main"]

_FULL_SEEDS = 5
_QUICK_SEEDS = 1
_QUICK_KEY_BITS = 512


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m train.experiments", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"{_QUICK_SEEDS} seed and {_QUICK_KEY_BITS}-bit (insecure) keys: a smoke run for CI")
    p.add_argument("--out", default="runs/experiments", help="output folder")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per setting, 0..N-1 (default {_FULL_SEEDS}, {_QUICK_SEEDS} with --quick)")
    p.add_argument("--sweeps", default="all", help=f"comma-separated, of: {', '.join(SWEEPS)}")
    p.add_argument("--modes", default="plain,he", help="plain (the paper's DP) and/or he")
    p.add_argument("--key-holder", "--he-mode", dest="key_holder", choices=("server", "clients"), default="server",
                   help="who holds the Paillier key in HE mode, as in train.federated: server (the paper's HEM) "
                        "or clients (--he-mode is an older name for it)")
    p.add_argument("--key-bits", type=int, default=None,
                   help=f"Paillier modulus size (default 2048, {_QUICK_KEY_BITS} with --quick)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="runs trained in parallel")
    p.add_argument("--no-estimate", action="store_true", help="skip the timing probe before the full run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--replot", action="store_true",
                   help="no training: redraw the figures and report.md from OUT/results.csv (and OUT/run.json)")
    return p


def _replot(out: Path) -> int:
    """Figures and report from an earlier run's results.csv; the command and wall clock from run.json."""
    from torchhefl.experiments.figures import plot_sweep
    from torchhefl.experiments.report import read_results_csv, write_report

    csv_path = out / "results.csv"
    if not csv_path.is_file():
        raise DataError(f"--replot needs {csv_path}; run the experiments into {out} first")
    rows = read_results_csv(csv_path)
    meta = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    sweeps = get_sweeps(sorted({r["sweep"] for r in rows}))
    for sweep in sweeps:
        plot_sweep(sweep, rows, out)
    write_report(out / "report.md", sweeps, rows, command=meta.get("command", "?"), seconds=meta.get("seconds", float("nan")),
                 runs=meta.get("runs", 0), notes=meta.get("notes", []))
    print(f"redrew {len(sweeps)} figures and report.md in {out} from {len(rows)} rows")
    return 0


def _sweep_key(jobs, settings: ExperimentSettings):
    """A temporary 0700 folder with one key pair for the runs whose mode uses a key (``None`` if none does)."""
    from torchhefl.federated import TrainConfig
    from torchhefl.federated.keyring import PRIVATE_KEY_FILE
    from torchhefl.federated.modes import mode_of
    from torchhefl.secure import InsecureKeyWarning, generate_keypair

    if not any(mode_of(TrainConfig.from_dict(j.config)).uses_key for j in jobs):
        return None
    folder = tempfile.TemporaryDirectory(prefix="torchhefl-sweep-key-")  # mkdtemp: mode 0700
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        _, private_key = generate_keypair(settings.key_bits, allow_insecure=settings.allow_insecure_keys)
        private_key.save(Path(folder.name) / PRIVATE_KEY_FILE)
    return folder


def _settings(args: argparse.Namespace) -> ExperimentSettings:
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    seeds = args.seeds if args.seeds is not None else (_QUICK_SEEDS if args.quick else _FULL_SEEDS)
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    key_bits = args.key_bits if args.key_bits is not None else (_QUICK_KEY_BITS if args.quick else 2048)
    return ExperimentSettings(modes=modes, key_holder=args.key_holder, key_bits=key_bits, seeds=tuple(range(seeds)),
                              allow_insecure_keys=args.quick).validate()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m train.experiments" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        from torchhefl.experiments.figures import _pyplot

        _pyplot()  # fail before training, not after, when matplotlib is missing
        if args.replot:
            return _replot(Path(args.out))
        settings = _settings(args)
        sweeps = get_sweeps(args.sweeps)
        jobs = plan(sweeps, settings)
        rounds = sum(j.config["rounds"] * j.config["local_epochs"] for j in jobs)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        print(f"{len(jobs)} training runs ({rounds} local-epoch rounds) for {', '.join(s.name for s in sweeps)}; "
              f"modes {', '.join(settings.modes)}"
              + (f" (HE key at {settings.key_holder}, {settings.key_bits}-bit)" if "he" in settings.modes else "")
              + f"; {len(settings.seeds)} seeds; {args.workers} worker(s)")
        key_folder = _sweep_key(jobs, settings)  # one key pair for the sweep, in a private temporary folder
        key_dir = None if key_folder is None else key_folder.name
        if not (args.quick or args.no_estimate):
            est = estimate_seconds(jobs, workers=args.workers, key_dir=key_dir)
            print(f"estimated time: {est / 60:.1f} min")
        start = time.perf_counter()
        bar = None
        if not args.no_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="runs", unit="run")
        try:
            run_jobs(jobs, workers=args.workers, progress=(lambda job: bar.update(1)) if bar is not None else None, key_dir=key_dir)
        finally:
            if key_folder is not None:
                key_folder.cleanup()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        from torchhefl.experiments.figures import plot_sweep
        from torchhefl.experiments.report import write_report, write_results_csv

        rows = rows_of(sweeps, jobs, settings)
        write_results_csv(out / "results.csv", rows)
        for sweep in sweeps:
            plot_sweep(sweep, rows, out)
        notes = []
        if key_folder is not None:
            notes.append(f"One {settings.key_bits}-bit Paillier key pair serves every HE run of the sweep (generated once, "
                         "kept in a private temporary folder, deleted after); a deployment has its own per run.")
        if args.quick:
            notes.append(f"A --quick run: {settings.key_bits}-bit keys (insecure, for tests only), {len(settings.seeds)} seed(s).")
        (out / "run.json").write_text(json.dumps({"command": command, "seconds": round(seconds, 1), "runs": len(jobs),
                                                  "notes": notes}, indent=2) + "\n")
        write_report(out / "report.md", sweeps, rows, command=command, seconds=seconds, runs=len(jobs), notes=notes)
    except (ConfigError, DataError, ProtocolError, ImportError) as e:
        print(f"python -m train.experiments: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(rows)} rows, {len(sweeps)} figures and report.md in {out} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
