"""Figures 3-7 redrawn: test accuracy against global round, mean over seeds with the min-max band.

Needs matplotlib (``pip install 'torchhefl[experiments]'``); it draws with the Agg backend, so no
display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from torchhefl.experiments.sweeps import PAPER_FEDPROX_10, PAPER_TABLE6_RANGE, Sweep

__all__ = ["figure_name", "plot_sweep"]

_SCHEME = {"plain": "DP (plain)", "he": "HE"}
_FILE = {
    "table2": "fig3_global_rounds.png",
    "table3": "fig4_batch_size.png",
    "table4": "fig5_learning_rate.png",
    "table5": "fig6_convergence.png",
    "table6": "fig7_comparison.png",
    "ours": "fig_ours_defaults.png",
}


def figure_name(sweep: Sweep) -> str:
    """The PNG file name of ``sweep``'s figure (``fig3_...`` for Table 2, and so on)."""
    return _FILE.get(sweep.name, f"fig_{sweep.name}.png")


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the experiment figures need matplotlib: pip install 'torchhefl[experiments]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(rows: Sequence[dict], mode: str, setting: str) -> np.ndarray:
    """Accuracy curves (percent) of one mode and setting, shape (seeds, rounds)."""
    curves = [r["curve"] for r in rows if r["mode"] == mode and r["setting"] == setting]
    return 100.0 * np.asarray(curves, dtype=float)


_STYLES = ("-", "--", ":", "-.")


def _band(ax, curves: np.ndarray, label: str, index: int = 0, marker_rounds: Sequence[int] = ()) -> None:
    """Mean curve (line style by ``index``, so overlapping curves stay visible) and its min-max band."""
    x = np.arange(1, curves.shape[1] + 1)
    mean = curves.mean(axis=0)
    (line,) = ax.plot(x, mean, label=label, color=f"C{index}", ls=_STYLES[index % len(_STYLES)], lw=1.8)
    ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.18, lw=0)
    for r in marker_rounds:
        ax.plot([r], [mean[r - 1]], "o", color=line.get_color(), ms=5)
        ax.annotate(f"{mean[r - 1]:.1f}", (r, mean[r - 1]), textcoords="offset points", xytext=(0, -13),
                    ha="center", fontsize=7, color=line.get_color())


def _style(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("global round")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def plot_sweep(sweep: Sweep, rows: Sequence[dict], out_dir: str | Path) -> Path:
    """Draw ``sweep``'s figure from its rows (see :func:`~torchhefl.experiments.runner.rows_of`); returns the path."""
    plt = _pyplot()
    rows = [r for r in rows if r["sweep"] == sweep.name]
    modes = [m for m in ("plain", "he") if any(r["mode"] == m for r in rows)]
    n_seeds = len({r["seed"] for r in rows})
    key_holder = next((r["key_holder"] for r in rows if r["mode"] == "he"), "")
    he_label = f"HE (key at {key_holder})" if key_holder else "HE"
    scheme = {"plain": _SCHEME["plain"], "he": he_label}
    longest = max(sweep.settings, key=lambda s: s.rounds)
    path = Path(out_dir) / figure_name(sweep)
    fig_title = f"Fig {sweep.figure}: {sweep.title}" if sweep.figure else sweep.title
    fig_title += f"  (mean, band = min-max over {n_seeds} seed{'s' if n_seeds != 1 else ''})"

    if sweep.name == "table6":
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for i, mode in enumerate(modes):
            curves = _curves(rows, mode, longest.label)
            _band(ax, curves, scheme[mode], i, marker_rounds=[s.rounds for s in sweep.settings])
            lo, hi = PAPER_TABLE6_RANGE[mode]
            x = longest.rounds + 0.6 + 0.6 * i
            ax.errorbar([x], [(lo + hi) / 2], yerr=[[(hi - lo) / 2]], fmt="_", color=f"C{i}", capsize=4,
                        lw=2.5, alpha=0.6, label=f"paper {'FedQAS/DP' if mode == 'plain' else 'HE'} @30: {lo}-{hi}")
        _style(ax, "Comparison of the two schemes")
        axes = [ax]
    elif sweep.name == "table5":
        parts = [p for p in ("IID", "non-IID") if any(r["setting"].endswith(p) for r in rows)]
        fig, grid = plt.subplots(len(parts), len(modes), figsize=(5.2 * len(modes), 3.8 * len(parts)), squeeze=False)
        axes = list(grid.flat)
        for pi, part in enumerate(parts):
            for mi, mode in enumerate(modes):
                ax = grid[pi][mi]
                for si, setting in enumerate(s for s in sweep.settings if s.label.endswith(", " + part)):
                    _band(ax, _curves(rows, mode, setting.label), setting.label.split(",")[0], si)
                ax.plot([10], [PAPER_FEDPROX_10], "*", color="C1", ms=10, label=f"paper FedProx @10: {PAPER_FEDPROX_10}")
                _style(ax, f"{scheme[mode]}, {part}")
    else:
        fig, grid = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.0), squeeze=False)
        axes = list(grid.flat)
        for mi, mode in enumerate(modes):
            ax = grid[0][mi]
            if sweep.varies == "rounds":
                _band(ax, _curves(rows, mode, longest.label), f"{longest.rounds} rounds", 0,
                      marker_rounds=[s.rounds for s in sweep.settings])
            else:
                for si, setting in enumerate(sweep.settings):
                    _band(ax, _curves(rows, mode, setting.label), setting.label, si)
            letter = "ab"[mi] if len(modes) == 2 else ""
            _style(ax, f"({letter}) {scheme[mode]}" if letter else scheme[mode])
    top = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(max(40.0, min(ax.get_ylim()[0], 85.0)), min(100.5, top))
    fig.suptitle(fig_title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
