"""Test metrics from counts, so that a held-out set split across sites gives the same numbers.

Whoever holds test rows (the server, or each client for its share) reduces them to
:func:`evaluation_counts`; counts add up across holders, and :func:`metrics_from_counts` turns the
total into accuracy, loss, F1 and ROC AUC. AUC is computed from score histograms with
:data:`AUC_BINS` bins over the predicted probability, ties within a bin counted as half.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

__all__ = ["AUC_BINS", "add_counts", "counts_from_wire", "counts_to_wire", "evaluation_counts", "metrics_from_counts"]

AUC_BINS = 1024


@torch.no_grad()
def evaluation_counts(
    logits: torch.Tensor, targets: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> dict[str, np.ndarray]:
    """Reduce one holder's test rows to additive counts.

    Args:
        logits: model outputs, shape ``(N,)``.
        targets: labels in {0, 1}, shape ``(N,)``.
        loss_fn: a loss with ``reduction="sum"``, called as ``loss_fn(logits, targets)``.
    """
    logits = logits.reshape(-1).to(torch.float64)
    y = targets.reshape(-1).to(torch.float64)
    pred = (logits >= 0).to(torch.float64)
    prob = torch.sigmoid(logits).numpy()
    # a NaN score (a model broken beyond the float range) counts in the lowest bin
    bins = np.clip(np.nan_to_num(prob * AUC_BINS, nan=0.0), 0, AUC_BINS - 1).astype(np.int64)
    yb = y.numpy().astype(bool)
    return {
        "n": np.array([len(y)], dtype=np.float64),
        "tp": np.array([float(((pred == 1) & (y == 1)).sum())]),
        "fp": np.array([float(((pred == 1) & (y == 0)).sum())]),
        "fn": np.array([float(((pred == 0) & (y == 1)).sum())]),
        "loss_sum": np.array([float(loss_fn(logits, y))]),
        "pos_hist": np.bincount(bins[yb], minlength=AUC_BINS).astype(np.int32),
        "neg_hist": np.bincount(bins[~yb], minlength=AUC_BINS).astype(np.int32),
    }


_SCALARS = ("n", "tp", "fp", "fn", "loss_sum")
_HISTS = ("pos_hist", "neg_hist")


def counts_to_wire(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays a holder sends: the scalars, and each histogram as its non-empty bins and their counts."""
    out = {k: np.asarray(counts[k], dtype=np.float64).reshape(1) for k in _SCALARS}
    for k in _HISTS:
        hist = np.asarray(counts[k])
        bins = np.flatnonzero(hist)
        out[f"{k}_bins"] = bins.astype(np.int32)
        out[f"{k}_counts"] = hist[bins].astype(np.int32)
    return out


def counts_from_wire(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`counts_to_wire`; raises ``ValueError`` on anything a holder could not have sent."""
    expected = set(_SCALARS) | {f"{k}_{part}" for k in _HISTS for part in ("bins", "counts")}
    if set(arrays) != expected:
        raise ValueError(f"evaluation counts hold {sorted(arrays)}, expected {sorted(expected)}")
    out = {}
    for k in _SCALARS:
        v = np.asarray(arrays[k], dtype=np.float64)
        if v.shape != (1,) or not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"evaluation count {k!r} must be one finite non-negative number")
        out[k] = v
    for k in _HISTS:
        bins, values = np.asarray(arrays[f"{k}_bins"]), np.asarray(arrays[f"{k}_counts"])
        if bins.ndim != 1 or bins.shape != values.shape or not np.issubdtype(bins.dtype, np.integer) \
                or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"histogram {k!r} needs integer bins and counts of one length")
        if len(bins) and (bins.min() < 0 or bins.max() >= AUC_BINS or len(np.unique(bins)) != len(bins) or values.min() < 0):
            raise ValueError(f"histogram {k!r} has bins outside [0, {AUC_BINS}), repeated bins or negative counts")
        hist = np.zeros(AUC_BINS, dtype=np.float64)
        hist[bins.astype(np.int64)] = values
        out[k] = hist
    return out


def add_counts(a: Mapping[str, np.ndarray] | None, b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Element-wise sum of two count dicts (``a`` may be ``None``)."""
    if a is None:
        return {k: np.asarray(v, dtype=np.float64).copy() for k, v in b.items()}
    return {k: np.asarray(a[k], dtype=np.float64) + np.asarray(b[k], dtype=np.float64) for k in a}


def metrics_from_counts(counts: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Accuracy, mean loss, F1 and ROC AUC from summed counts."""
    n = float(counts["n"][0])
    tp, fp, fn = (float(counts[k][0]) for k in ("tp", "fp", "fn"))
    tn = n - tp - fp - fn
    pos, neg = np.asarray(counts["pos_hist"]), np.asarray(counts["neg_hist"])
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos > 0 and n_neg > 0:
        below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
        auc = float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))
    else:
        auc = float("nan")
    denom = 2 * tp + fp + fn
    return {
        "accuracy": (tp + tn) / n if n else float("nan"),
        "loss": float(counts["loss_sum"][0]) / n if n else float("nan"),
        "f1": 2 * tp / denom if denom else 0.0,
        "auc": auc,
    }
