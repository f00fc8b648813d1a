"""``report.md``: our numbers beside the paper's, with the spread over seeds, and the figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from torchhefl.experiments.figures import figure_name
from torchhefl.experiments.sweeps import (
    PAPER_CLAIMS,
    PAPER_FEDPROX_10,
    PAPER_LR003_PEAK,
    PAPER_TABLE6_RANGE,
    Sweep,
)

__all__ = ["read_results_csv", "spread", "write_report", "write_results_csv"]

_SCHEME = {"plain": "DP (plain)", "he": "HE"}


def spread(values: Sequence[float], *, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std [min-max]`` of ``values`` times ``scale`` (std with ddof=0; one value: just it)."""
    v = scale * np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f} [{v.min():.{digits}f}-{v.max():.{digits}f}]"


def _rows(rows: Sequence[dict], **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def _table(sweep: Sweep, rows: Sequence[dict], modes: Sequence[str], scheme: dict) -> list[str]:
    head = ["setting"] + [f"{scheme[m]} accuracy %" for m in modes] + [f"{scheme[m]} AUC %" for m in modes]
    paper_col = sweep.name in ("table5", "table6")
    if paper_col:
        head.append("paper accuracy %")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sweep.settings:
        cells = [s.label]
        for metric in ("accuracy", "auc"):
            for m in modes:
                rs = _rows(rows, sweep=sweep.name, mode=m, setting=s.label)
                cells.append(spread([r[metric] for r in rs]) if rs else "-")
        if paper_col:
            if sweep.name == "table6" and s.rounds == 30:
                cells.append("; ".join(f"{'HE' if m == 'he' else 'DP/FedQAS'} {PAPER_TABLE6_RANGE[m][0]}-"
                                       f"{PAPER_TABLE6_RANGE[m][1]}" for m in ("he", "plain")))
            elif sweep.name == "table5" and s.label.startswith("FedProx"):
                cells.append(f"{PAPER_FEDPROX_10} (split not stated)")
            else:
                cells.append("not reported")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _mean_curve(rows: Sequence[dict]) -> np.ndarray:
    return 100.0 * np.mean([r["curve"] for r in rows], axis=0)


def _fedprox_mu(rows: Sequence[dict]) -> str:
    return next((str(r["mu"]) for r in rows if r["aggregator"] == "fedprox" and r["mu"] != ""), "?")


def _observations(sweep: Sweep, rows: Sequence[dict], modes: Sequence[str], scheme: dict) -> list[str]:
    """Measured statements that answer the paper's claims for ``sweep``."""
    out: list[str] = []
    longest = max(sweep.settings, key=lambda s: s.rounds)
    if sweep.varies == "rounds":
        for m in modes:
            pts = []
            for s in sweep.settings:
                rs = _rows(rows, sweep=sweep.name, mode=m, setting=s.label)
                pts.append(f"{np.mean([r['accuracy'] for r in rs]) * 100:.1f} % after {s.rounds}")
            out.append(f"{scheme[m]}: mean accuracy " + ", ".join(pts) + ".")
    if sweep.name in ("table3", "table4"):
        for m in modes:
            parts = []
            for s in sweep.settings:
                mc = _mean_curve(_rows(rows, sweep=sweep.name, mode=m, setting=s.label))
                peak = int(np.argmax(mc)) + 1
                parts.append(f"{s.label}: {mc[9]:.1f} % at round 10, peak {mc.max():.1f} % at round {peak}, "
                             f"{mc[-1]:.1f} % at round {len(mc)}")
            out.append(f"{scheme[m]} (mean curve): " + "; ".join(parts) + ".")
        if sweep.name == "table4":
            out.append("The paper sees lr 0.03 fall after round "
                       + " and ".join(f"{PAPER_LR003_PEAK[m]} ({scheme[m]})" for m in modes) + "; compare the peaks above.")
    if sweep.name == "table5":
        for m in modes:
            parts = []
            for s in sweep.settings:
                rs = _rows(rows, sweep=sweep.name, mode=m, setting=s.label)
                mc = _mean_curve(rs)
                reach = next((i + 1 for i, a in enumerate(mc) if a >= 90.0), None)
                parts.append(f"{s.label}: {mc[-1]:.1f} % after 10 rounds, 90 % first reached "
                             + (f"at round {reach}" if reach else "not within 10 rounds"))
            out.append(f"{scheme[m]} (mean curve): " + "; ".join(parts) + ".")
    if sweep.name == "table5":
        for m in modes:
            gaps = []
            for part in ("IID", "non-IID"):
                for avg in _rows(rows, sweep=sweep.name, mode=m, setting=f"FedAvg, {part}"):
                    prox = _rows(rows, sweep=sweep.name, mode=m, setting=f"FedProx, {part}", seed=avg["seed"])
                    if prox:
                        gaps.append(np.max(np.abs(np.asarray(avg["curve"]) - np.asarray(prox[0]["curve"]))))
            if gaps:
                out.append(f"{scheme[m]}: largest per-round gap between FedAvg and FedProx for the same seed "
                           f"and split: {100 * max(gaps):.2f} points (mu {_fedprox_mu(rows)} with "
                           "a few local steps per round leaves the proximal term almost no room).")
    if sweep.name == "table6":
        for m in modes:
            rs = _rows(rows, sweep=sweep.name, mode=m, setting=longest.label)
            acc = 100 * np.array([r["accuracy"] for r in rs])
            lo, hi = PAPER_TABLE6_RANGE[m]
            out.append(f"{scheme[m]} at 30 rounds: {acc.min():.3f}-{acc.max():.3f} % over {len(acc)} seeds "
                       f"(paper: {lo}-{hi} %).")
    if set(modes) == {"plain", "he"}:
        diffs = []
        for s in sweep.settings:
            for p in _rows(rows, sweep=sweep.name, mode="plain", setting=s.label):
                h = _rows(rows, sweep=sweep.name, mode="he", setting=s.label, seed=p["seed"])
                if h:
                    diffs.append(np.max(np.abs(np.asarray(p["curve"]) - np.asarray(h[0]["curve"]))))
        if diffs:
            out.append(f"Largest per-round accuracy gap between DP and HE for the same seed: {100 * max(diffs):.2f} points.")
    return out


def write_report(
    path: str | Path,
    sweeps: Sequence[Sweep],
    rows: Sequence[dict],
    *,
    command: str,
    seconds: float,
    runs: int,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.md`` for ``rows`` (see :func:`~torchhefl.experiments.runner.rows_of`); returns its path."""
    path = Path(path)
    modes = [m for m in ("plain", "he") if any(r["mode"] == m for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    he_rows = [r for r in rows if r["mode"] == "he"]
    key_holder = he_rows[0]["key_holder"] if he_rows else ""
    scheme = dict(_SCHEME)
    if key_holder:
        scheme["he"] = "HE (HEM, key at server)" if key_holder == "server" else "HE (key at clients)"
    lines = [
        "# The paper's experiments, re-run with torchhefl",
        "",
        "Guo et al., section 5: Tables 2-6 and Figures 3-7, on the Wisconsin Diagnostic Breast Cancer data "
        "(569 rows, 30 features; 20 % held out, stratified; 3 sites).",
        "",
        f"- Command: `{command}`",
        f"- {runs} training runs, {len(seeds)} seeds ({', '.join(map(str, seeds))}), wall clock {seconds / 60:.1f} min.",
        f"- Modes: {', '.join(scheme[m] for m in modes)}"
        + (f"; Paillier keys of {he_rows[0]['key_bits']} bits." if he_rows else "."),
        "- Numbers are test accuracy (and AUC) in percent: mean ± std [min-max] over seeds. Each seed changes "
        "the train/test split, the partition across sites, the initial weights and the batch order.",
        "",
        "## How to read this",
        "",
        "- The paper's **DP** (\"directly pass the parameters\") is our `--mode plain`. Its **HE/HEM** is "
        "`--mode he --key-holder server` (the server holds the Paillier key and the sites train on encrypted "
        "weights); `--key-holder clients` encrypts the exchange with a key shared by the sites instead.",
        "- Every paper table lists a \"privacy budget 0.5\". The paper does not say which mechanism it budgets; "
        "**our runs add no differential-privacy noise** (plain mode is the parameters in the clear, as the "
        "paper's DP scheme). `python -m train.federated --epsilon` is the record-level DP option.",
        "- Paper hyper-parameters as its tables give them, 1 local epoch per round and no gradient clipping "
        "(the paper's HEM cannot clip: its sites never see a plaintext gradient; DP trains alike so the two "
        "columns differ only in the protection). Where the paper is silent we keep torchhefl's defaults: "
        "3 sites, Taylor loss, FedProx mu 0.01, Dirichlet alpha 0.5 for non-IID. Table 5 gives no batch "
        "size; we use Table 2's 64.",
        "- The \"Ours\" group is torchhefl's defaults (lr 0.1, batch 16, 2 local epochs, clip norm 5); with "
        "the key at the server, clipping is off there too.",
        "- Runs that differ only in the number of rounds are one run: nothing depends on the total, so the "
        "10- and 20-round results are that 30-round run after round 10 and 20.",
        "- The paper's figures are images; the only numbers its text reports are Table 5's 67.5 % (FedProx "
        "after 10 rounds) and Table 6's ranges at 30 rounds. Its qualitative claims are quoted under each table.",
        *[f"- {n}" for n in notes],
        "",
    ]
    t6 = next((s for s in sweeps if s.name == "table6"), None)
    if t6 is not None:
        lines += ["## Key result: Table 6 / Figure 7 (lr 0.02, batch 128, FedProx)", ""]
        lines += _table(t6, rows, modes, scheme) + [""]
    for sweep in sweeps:
        fig = f"Figure {sweep.figure}" if sweep.figure else "no paper figure"
        table = sweep.name.replace("table", "Table ") if sweep.name.startswith("table") else "Ours"
        srows = [r for r in rows if r["sweep"] == sweep.name]
        if not srows:
            continue
        r0 = srows[0]
        lines += [
            f"## {table} / {fig}: {sweep.title}",
            "",
            f"Fixed: lr {r0['lr'] if sweep.varies != 'lr' else 'varied'}, batch "
            f"{r0['batch_size'] if sweep.varies != 'batch_size' else 'varied'}, {r0['local_epochs']} local "
            f"epoch(s), {'FedAvg/FedProx' if sweep.varies == 'aggregator' else r0['aggregator']}, "
            f"{'IID and non-IID' if sweep.name == 'table5' else r0['partition']}.",
            "",
        ]
        lines += _table(sweep, rows, modes, scheme) + [""]
        lines += [f"![{fig}]({figure_name(sweep)})", ""]
        lines += ["The paper: " + " ".join(PAPER_CLAIMS.get(sweep.name, [])), ""]
        obs = _observations(sweep, rows, modes, scheme)
        if obs:
            lines += ["Measured:", ""] + [f"- {o}" for o in obs] + [""]
    secs = {m: [r["seconds"] for r in rows if r["mode"] == m and r["rounds"] == 30] for m in modes}
    lines += ["## Cost", ""]
    for m in modes:
        if secs[m]:
            lines.append(f"- {scheme[m]}: {np.mean(secs[m]):.1f} s per 30-round run (mean, including key set-up).")
    lines += ["", "Every run's numbers and per-round accuracy curve are in `results.csv`.", ""]
    path.write_text("\n".join(lines))
    return path


def write_results_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    """``results.csv``: one row per run setting; ``curve`` holds the accuracy after each round, space-separated."""
    import csv

    path = Path(path)
    if not rows:
        raise ValueError("no rows to write")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "curve": " ".join(f"{a:.6f}" for a in r["curve"]),
                             **{k: f"{r[k]:.6f}" for k in ("accuracy", "auc", "f1", "loss", "seconds")}})
    return path


def read_results_csv(path: str | Path) -> list[dict]:
    """The rows :func:`write_results_csv` wrote, with numbers and curves parsed back."""
    import pandas as pd

    df = pd.read_csv(path, keep_default_na=False)
    rows = df.to_dict("records")
    for r in rows:
        r["curve"] = [float(a) for a in str(r["curve"]).split()]
    return rows
