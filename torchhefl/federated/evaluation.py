"""Test metrics from counts, so that a held-out set split across sites gives the same numbers.

Whoever holds test rows (the server, or each client for its share) reduces them to
:func:`evaluation_counts`; counts add up across holders, and :func:`metrics_from_counts` turns the
total into accuracy, loss, F1 and ROC AUC. AUC is computed from score histograms with
:data:`AUC_BINS` bins over the predicted probability, ties within a bin counted as half.

Binary models (one logit per row) give ``accuracy``, ``loss``, ``f1`` and ``auc``. Models with
``K > 2`` outputs (softmax over ``K`` logits) give the same names, with ``f1`` the macro F1 over
the classes that occur in the labels or the predictions and ``auc`` the one-vs-rest macro AUC
(as scikit-learn's ``roc_auc_score(..., multi_class="ovr")`` on the softmax probabilities, from
one histogram per class), plus ``count_<k>`` and ``predicted_<k>``: the rows of class ``k`` in
the test set and among the predictions. Their counts carry a ``K x K`` confusion matrix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np
import torch

__all__ = ["AUC_BINS", "RESERVED_METRICS", "add_counts", "check_metrics", "counts_from_wire", "counts_to_wire", "evaluation_counts", "metrics_from_counts"]

AUC_BINS = 1024


@torch.no_grad()
def evaluation_counts(
    logits: torch.Tensor, targets: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metrics: Mapping[str, Callable] | None = None,
) -> dict[str, np.ndarray]:
    """Reduce one holder's test rows to additive counts.

    Args:
        logits: model outputs, shape ``(N,)`` (binary) or ``(N, K)`` with ``K > 2``.
        targets: labels in {0, 1} (binary) or {0, ..., K-1}, shape ``(N,)``.
        loss_fn: a loss with ``reduction="sum"``, called as ``loss_fn(logits, targets)``.
        metrics: your own metrics (:func:`check_metrics`): each ``fn(logits, targets)`` returns the
            *sum* over these rows of a per-row score, counted as ``metric_<name>``; the run reports
            the mean over all held-out rows, ``test_<name>``.
    """
    counts = _binary_counts(logits, targets, loss_fn) if not (logits.dim() == 2 and logits.shape[1] > 2) \
        else _multiclass_counts(logits, targets, loss_fn)
    for name, fn in (metrics or {}).items():
        value = fn(logits, targets)
        value = float(value.detach().reshape(()) if isinstance(value, torch.Tensor) else value)
        if not np.isfinite(value):
            raise ValueError(f"metric {name!r} is not finite on these rows")
        counts[f"metric_{name}"] = np.array([value])
    return counts


#: the built-in names a metric of yours may not take
RESERVED_METRICS = ("accuracy", "loss", "auc", "f1")
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_metrics(metrics: Mapping[str, Callable] | None) -> dict[str, Callable]:
    """Your own test metrics, checked: ``{name: fn(logits, targets) -> sum over the rows}``, names
    lower-case identifiers other than the built-in ones (accuracy, loss, auc, f1, count_*, predicted_*)."""
    out = {}
    for name, fn in (metrics or {}).items():
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name) or name in RESERVED_METRICS \
                or name.startswith(("count_", "predicted_")):
            raise ValueError(
                f"metric name {name!r}: a lower-case identifier (letters, digits, _) other than "
                f"{', '.join(RESERVED_METRICS)}, count_* and predicted_*"
            )
        if not callable(fn):
            raise ValueError(f"metric {name!r} must be a function of (logits, targets)")
        out[name] = fn
    return out


def _binary_counts(logits: torch.Tensor, targets: torch.Tensor, loss_fn) -> dict[str, np.ndarray]:
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


def _multiclass_counts(logits: torch.Tensor, targets: torch.Tensor, loss_fn) -> dict[str, np.ndarray]:
    """:func:`evaluation_counts` of ``K > 2`` logits: confusion matrix, loss, and per class ``k``
    the histograms of ``softmax(logits)[:, k]`` over the rows of class ``k`` and over the others,
    flattened class after class (``K * AUC_BINS`` bins)."""
    logits = logits.to(torch.float64)
    num_classes = logits.shape[1]
    y = targets.reshape(-1).to(torch.int64)
    pred = logits.argmax(dim=1)
    confusion = torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    prob = torch.softmax(logits, dim=1).numpy()
    bins = np.clip(np.nan_to_num(prob * AUC_BINS, nan=0.0), 0, AUC_BINS - 1).astype(np.int64)
    flat = bins + AUC_BINS * np.arange(num_classes)  # class k's bins at k * AUC_BINS + bin
    own = y.numpy()[:, None] == np.arange(num_classes)
    size = num_classes * AUC_BINS
    return {
        "n": np.array([len(y)], dtype=np.float64),
        "loss_sum": np.array([float(loss_fn(logits, y))]),
        "confusion": confusion.numpy().astype(np.float64),
        "pos_hist": np.bincount(flat[own], minlength=size).astype(np.int32),
        "neg_hist": np.bincount(flat[~own], minlength=size).astype(np.int32),
    }


_SCALARS = ("n", "tp", "fp", "fn", "loss_sum")
_MULTICLASS_SCALARS = ("n", "loss_sum")
_HISTS = ("pos_hist", "neg_hist")


def counts_to_wire(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays a holder sends: the scalars (and a multi-class holder's flattened confusion matrix),
    and each histogram as its non-empty bins and their counts."""
    if "confusion" in counts:
        out = {k: np.asarray(counts[k], dtype=np.float64).reshape(1) for k in _MULTICLASS_SCALARS}
        out["confusion"] = np.asarray(counts["confusion"], dtype=np.float64).reshape(-1)
    else:
        out = {k: np.asarray(counts[k], dtype=np.float64).reshape(1) for k in _SCALARS}
    out.update({k: np.asarray(v, dtype=np.float64).reshape(1) for k, v in counts.items() if k.startswith("metric_")})
    for k in _HISTS:
        hist = np.asarray(counts[k])
        bins = np.flatnonzero(hist)
        out[f"{k}_bins"] = bins.astype(np.int32)
        out[f"{k}_counts"] = hist[bins].astype(np.int32)
    return out


def counts_from_wire(
    arrays: Mapping[str, np.ndarray], *, num_classes: int = 2, metrics: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Inverse of :func:`counts_to_wire` for a model of ``num_classes`` classes (default 2, binary)
    and the run's own ``metrics`` (names); raises ``ValueError`` on anything a holder could not have sent."""
    scalars = _SCALARS if num_classes == 2 else _MULTICLASS_SCALARS
    own = [f"metric_{name}" for name in metrics]
    expected = set(scalars) | set(own) | {f"{k}_{part}" for k in _HISTS for part in ("bins", "counts")}
    if num_classes > 2:
        expected.add("confusion")
    if set(arrays) != expected:
        raise ValueError(f"evaluation counts hold {sorted(arrays)}, expected {sorted(expected)}")
    out = {}
    for k in scalars:
        v = np.asarray(arrays[k], dtype=np.float64)
        if v.shape != (1,) or not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"evaluation count {k!r} must be one finite non-negative number")
        out[k] = v
    for k in own:  # a sum of per-row scores: any finite number
        v = np.asarray(arrays[k], dtype=np.float64)
        if v.shape != (1,) or not np.isfinite(v).all():
            raise ValueError(f"evaluation count {k!r} must be one finite number")
        out[k] = v
    size = AUC_BINS * (1 if num_classes == 2 else num_classes)
    if num_classes > 2:
        v = np.asarray(arrays["confusion"], dtype=np.float64)
        if v.shape != (num_classes * num_classes,) or not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"evaluation count 'confusion' must be {num_classes}x{num_classes} finite non-negative numbers")
        out["confusion"] = v
    for k in _HISTS:
        bins, values = np.asarray(arrays[f"{k}_bins"]), np.asarray(arrays[f"{k}_counts"])
        if bins.ndim != 1 or bins.shape != values.shape or not np.issubdtype(bins.dtype, np.integer) \
                or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"histogram {k!r} needs integer bins and counts of one length")
        if len(bins) and (bins.min() < 0 or bins.max() >= size or len(np.unique(bins)) != len(bins) or values.min() < 0):
            raise ValueError(f"histogram {k!r} has bins outside [0, {size}), repeated bins or negative counts")
        hist = np.zeros(size, dtype=np.float64)
        hist[bins.astype(np.int64)] = values
        out[k] = hist
    return out


def add_counts(a: Mapping[str, np.ndarray] | None, b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Element-wise sum of two count dicts (``a`` may be ``None``)."""
    if a is None:
        return {k: np.asarray(v, dtype=np.float64).copy() for k, v in b.items()}
    return {k: np.asarray(a[k], dtype=np.float64) + np.asarray(b[k], dtype=np.float64) for k in a}


def _histogram_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC from the score histograms of the positive and the negative rows (NaN without both)."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if not (n_pos > 0 and n_neg > 0):
        return float("nan")
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def metrics_from_counts(counts: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Accuracy, mean loss, F1 and ROC AUC from summed counts (macro F1, one-vs-rest AUC and the
    per-class ``count_<k>`` / ``predicted_<k>`` for more than 2 classes)."""
    out = _multiclass_metrics(counts) if "confusion" in counts else _binary_metrics(counts)
    n = float(counts["n"][0])
    for k, v in counts.items():
        if k.startswith("metric_"):
            out[k.removeprefix("metric_")] = float(v[0]) / n if n else float("nan")
    return out


def _binary_metrics(counts: Mapping[str, np.ndarray]) -> dict[str, float]:
    n = float(counts["n"][0])
    tp, fp, fn = (float(counts[k][0]) for k in ("tp", "fp", "fn"))
    tn = n - tp - fp - fn
    auc = _histogram_auc(np.asarray(counts["pos_hist"]), np.asarray(counts["neg_hist"]))
    denom = 2 * tp + fp + fn
    return {
        "accuracy": (tp + tn) / n if n else float("nan"),
        "loss": float(counts["loss_sum"][0]) / n if n else float("nan"),
        "f1": 2 * tp / denom if denom else 0.0,
        "auc": auc,
    }


def _multiclass_metrics(counts: Mapping[str, np.ndarray]) -> dict[str, float]:
    n = float(counts["n"][0])
    confusion = np.asarray(counts["confusion"], dtype=np.float64)
    num_classes = int(round(np.sqrt(confusion.size)))
    confusion = confusion.reshape(num_classes, num_classes)  # rows: true class, columns: predicted
    tp = np.diag(confusion)
    true, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    denom = true + predicted  # 2 tp + fp + fn
    present = denom > 0
    f1 = float(np.mean(2 * tp[present] / denom[present])) if present.any() else 0.0
    pos = np.asarray(counts["pos_hist"]).reshape(num_classes, AUC_BINS)
    neg = np.asarray(counts["neg_hist"]).reshape(num_classes, AUC_BINS)
    aucs = [_histogram_auc(pos[k], neg[k]) for k in range(num_classes)]
    aucs = [a for a in aucs if not np.isnan(a)]
    out = {
        "accuracy": float(tp.sum()) / n if n else float("nan"),
        "loss": float(counts["loss_sum"][0]) / n if n else float("nan"),
        "f1": f1,
        "auc": float(np.mean(aucs)) if len(aucs) == num_classes else float("nan"),
    }
    out.update({f"count_{k}": float(true[k]) for k in range(num_classes)})
    out.update({f"predicted_{k}": float(predicted[k]) for k in range(num_classes)})
    return out
