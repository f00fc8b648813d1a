"""Functional forms of torchhefl's losses and their closed-form gradients.

Nothing here imports torchhefl.secure: :func:`taylor_grad` is written with ``@``, ``*``, ``+`` and
``-`` only, with ``weight`` as the right operand of every product, so that it runs unchanged on a
``torch.Tensor`` and on anything that supports those operations with plaintext tensors (such as
``torchhefl.secure.EncryptedTensor``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["taylor_grad", "taylor_loss"]

_LOG2 = math.log(2.0)


def taylor_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Second-order Taylor approximation of the logistic loss (the paper's Eq 12).

    ``loss = log 2 - z / 2 + z^2 / 8`` with ``z = y * input`` and ``y = 2 * target - 1``.
    See :class:`torchhefl.nn.TaylorLoss`.
    """
    _check_reduction(reduction)
    if input.shape != target.shape:
        raise ValueError(
            f"Using a target size ({tuple(target.shape)}) that is different to the input size "
            f"({tuple(input.shape)}) is not allowed"
        )
    z = (2.0 * target.to(input.dtype) - 1.0) * input
    loss = _LOG2 - 0.5 * z + 0.125 * z * z
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def taylor_grad(weight, X: Tensor, y: Tensor):
    """Gradient of the mean Taylor loss with respect to ``weight`` (the paper's Eq 13).

    ``grad = (1/n) X^T (X w / 4 - y_pm / 2)`` with ``y_pm = 2 * y - 1``, evaluated as
    ``(X^T X / 4n) @ w - X^T y_pm / 2n`` so that only one product touches ``weight``.

    Args:
        weight: parameters, shape ``(d,)``; a tensor or an encrypted tensor.
        X: inputs, shape ``(n, d)`` (append a column of ones to fit a bias).
        y: targets in {0, 1}, shape ``(n,)``.

    Returns:
        The gradient, shape ``(d,)``, of the same kind as ``weight``.
    """
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"taylor_grad expects X (n, d) and y (n,), got {tuple(X.shape)} and {tuple(y.shape)}")
    n = X.shape[0]
    X = X.to(torch.float64)
    y_pm = 2.0 * y.to(torch.float64) - 1.0
    gram = (X.T @ X) * (0.25 / n)
    offset = (X.T @ y_pm) * (0.5 / n)
    return gram @ weight - offset


def _check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction (expected 'none', 'mean' or 'sum')")
