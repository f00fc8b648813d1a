"""Functional forms of torchhefl's losses and their closed-form gradients.

Nothing here imports torchhefl.secure: :func:`taylor_grad` is written with ``@``, ``*``, ``+`` and
``-`` only, with ``weight`` as the right operand of the one product that touches it, so that it runs
unchanged on a ``torch.Tensor`` and on anything that supports those operations with plaintext
tensors (such as ``torchhefl.secure.EncryptedTensor``). :func:`sgd_step` is one local SGD step on
the Taylor loss written the same way, and :func:`step_map` reads the plaintext coefficients of
that affine step off it (the server-key mode applies them to encrypted weights). The Taylor loss is
quadratic, so a step is stable exactly when ``lr * lambda_max`` of its Hessian is below 2;
:func:`safe_lr` reads that curvature off :func:`step_map` and caps the step at :data:`SAFE_STEP`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "SAFE_STEP",
    "add_bias_column",
    "compose_prefixes",
    "compose_steps",
    "safe_lr",
    "sgd_step",
    "step_curvature",
    "step_map",
    "taylor_grad",
    "taylor_loss",
]

_LOG2 = math.log(2.0)

SAFE_STEP = 1.9
"""The largest ``lr * lambda_max`` a safe step takes (:func:`safe_lr`), ``lambda_max`` being the
largest eigenvalue of the step's Hessian ``X^T X / 4n + mu I``. A step on the quadratic Taylor loss
is ``theta' = M theta + b`` with ``M = I - lr * Hessian``; its spectral radius is at most 1 iff
``lr * lambda_max <= 2``. At 1.9 the stiffest direction still shrinks by ``|1 - 1.9| = 0.9`` a step,
a margin of 5% below the edge for the eigenvalue's float64 estimate and the map's fixed-point
quantisation, and high enough that a step already this safe is left alone (the WDBC default run's
largest ``lr * lambda_max``, over every batch of its 30 rounds, is 1.78: its short last batches)."""


def taylor_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Second-order Taylor approximation of the logistic loss (the paper's Eq 12).

    ``loss = log 2 - z / 2 + z^2 / 8`` with ``z = y * input`` and ``y = 2 * target - 1``.
    See :class:`torchhefl.nn.TaylorLoss`.

    Args:
        input: logits, any shape.
        target: labels in {0, 1} (any dtype; soft labels in [0, 1] are accepted), same shape.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
    """
    _check_reduction(reduction)
    if input.shape != target.shape:
        raise ValueError(
            f"Using a target size ({tuple(target.shape)}) that is different to the input size "
            f"({tuple(input.shape)}) is not allowed"
        )
    if not input.is_floating_point():
        raise TypeError(f"taylor_loss expects floating-point logits, got {input.dtype}")
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
    ``(X^T X / 4n) @ w - X^T y_pm / 2n`` so that only one product touches ``weight``, with
    ``weight`` as its right operand.

    The plaintext parts are computed in ``weight``'s dtype and on its device when ``weight`` is a
    floating-point ``torch.Tensor``; otherwise (an integer tensor, which is converted, or an encrypted
    tensor) in float64.

    Args:
        weight: parameters, shape ``(d,)``; a tensor or an encrypted tensor.
        X: inputs, shape ``(n, d)``. To fit a bias, append a column of ones with
            :func:`add_bias_column` and put the bias last in ``weight``
            (see :meth:`torchhefl.nn.LogisticRegression.get_flat`).
        y: targets in {0, 1}, shape ``(n,)``.

    Returns:
        The gradient, shape ``(d,)``, of the same kind as ``weight``.
    """
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"taylor_grad expects X (n, d) and y (n,), got {tuple(X.shape)} and {tuple(y.shape)}")
    if X.shape[0] == 0:
        raise ValueError("taylor_grad needs at least one row, got X of shape (0, d)")
    if isinstance(weight, Tensor):
        if weight.shape != (X.shape[1],):
            raise ValueError(f"taylor_grad expects weight of shape ({X.shape[1]},), got {tuple(weight.shape)}")
        if not weight.is_floating_point():
            weight = weight.to(torch.float64)
        dtype, device = weight.dtype, weight.device
    else:
        dtype, device = torch.float64, X.device
    n = X.shape[0]
    X = X.to(dtype=dtype, device=device)
    y_pm = 2.0 * y.to(dtype=dtype, device=device) - 1.0
    gram = (X.T @ X) * (0.25 / n)
    offset = (X.T @ y_pm) * (0.5 / n)
    return gram @ weight - offset


def sgd_step(theta, X: torch.Tensor, y: torch.Tensor, *, lr: float, proximal_mu: float = 0.0, anchor=None):
    """One local SGD step on the Taylor loss: ``theta - lr * (taylor_grad + mu * (theta - anchor))``.

    Runs on a ``torch.Tensor``, an :class:`~torchhefl.secure.EncryptedTensor` or a symbolic
    operand (see :func:`step_map`).

    Args:
        theta: flat parameters ``[weight..., bias]``, shape ``(d,)``.
        X: the batch with a bias column, shape ``(n, d)``; y: its labels in {0, 1}, shape ``(n,)``.
        lr: learning rate. proximal_mu: the FedProx coefficient (0 for FedAvg). anchor: the
            round's global parameters (needed when ``proximal_mu > 0``).
    """
    grad = taylor_grad(theta, X, y)
    if proximal_mu:
        grad = grad + (theta - anchor) * proximal_mu
    return theta - grad * lr


class _Affine:
    """A symbolic vector ``A @ theta + B @ anchor + c`` (for reading the step's coefficients)."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor, c: torch.Tensor) -> None:
        self.A, self.B, self.c = A, B, c

    def __rmatmul__(self, P):
        return _Affine(P @ self.A, P @ self.B, P @ self.c)

    def __mul__(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        col = t.reshape(-1, 1) if t.dim() else t
        return _Affine(self.A * col, self.B * col, self.c * t)

    __rmul__ = __mul__

    def __add__(self, other):
        if isinstance(other, _Affine):
            return _Affine(self.A + other.A, self.B + other.B, self.c + other.c)
        return _Affine(self.A, self.B, self.c + torch.as_tensor(other, dtype=torch.float64))

    __radd__ = __add__

    def __neg__(self):
        return _Affine(-self.A, -self.B, -self.c)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other


def step_map(X: torch.Tensor, y: torch.Tensor, *, lr: float, proximal_mu: float = 0.0):
    """The coefficients of :func:`sgd_step` on one batch: ``theta' = M @ theta + b + c * anchor``.

    Obtained by running :func:`sgd_step` itself on a symbolic ``theta`` (exact: the Taylor gradient
    is affine). Returns ``(M, b, c)`` with ``M`` of shape ``(d, d)``, ``b`` of shape ``(d,)`` and the
    anchor coefficient ``c = lr * proximal_mu`` (a float), all float64.
    """
    d = X.shape[1]
    eye, zero = torch.eye(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    theta = _Affine(eye, zero, torch.zeros(d, dtype=torch.float64))
    anchor = _Affine(zero, eye, torch.zeros(d, dtype=torch.float64))
    out = sgd_step(theta, X, y, lr=lr, proximal_mu=proximal_mu, anchor=anchor)
    c = float(out.B[0, 0]) if d else 0.0
    if not torch.equal(out.B, c * eye):
        raise AssertionError("the proximal term is not a multiple of the anchor")  # sgd_step changed shape
    return out.A, out.c, c


def _largest_eigenvalue(H: torch.Tensor) -> float:
    """``lambda_max`` of a (numerically) symmetric matrix; ``OverflowError`` when it is not finite."""
    if not bool(torch.isfinite(H).all()):
        raise OverflowError("the step's Hessian is not finite (an input or proximal_mu too large)")
    try:
        return float(torch.linalg.eigvalsh((H + H.T) * 0.5)[-1])
    except torch.linalg.LinAlgError:  # too extreme to converge: Gershgorin's bound, an upper bound
        return float(H.abs().sum(dim=1).max())


def step_curvature(X: torch.Tensor, y: torch.Tensor, *, proximal_mu: float = 0.0) -> float:
    """``lambda_max`` of the Hessian of :func:`sgd_step`'s objective on one batch,
    ``X^T X / 4n + mu I`` (``X`` with a bias column, shape ``(n, d)``).

    Read off the step itself: at ``lr = 1``, :func:`step_map`'s ``M`` is ``I - Hessian``. Raises
    ``OverflowError`` when the Hessian is not finite.
    """
    M, _, _ = step_map(X.to(torch.float64), y.to(torch.float64), lr=1.0, proximal_mu=proximal_mu)
    return _largest_eigenvalue(torch.eye(M.shape[0], dtype=torch.float64) - M)


def _check_limit(limit: float) -> None:
    if not 0.0 < limit <= 2.0:
        raise ValueError(f"a safe step needs limit in (0, 2], got {limit}")


def safe_lr(
    X: torch.Tensor, y: torch.Tensor, *, lr: float, proximal_mu: float = 0.0, limit: float = SAFE_STEP
) -> float:
    """The learning rate of a curvature-safe :func:`sgd_step` on one batch:
    ``min(lr, limit / lambda_max)`` with ``lambda_max`` from :func:`step_curvature`.

    With ``limit <= 2`` the step's map ``M = I - lr' * Hessian`` (symmetric) has spectral norm at
    most ``max(|1 - limit|, 1 - lr' * lambda_min) <= 1`` at the returned ``lr'``, so no batch can make
    the step diverge, however ill-conditioned; where ``lr * lambda_max <= limit`` already, ``lr`` is
    returned unchanged.

    Args:
        X: the batch with a bias column, shape ``(n, d)``; y: its labels in {0, 1}, shape ``(n,)``.
        lr: the learning rate asked for. proximal_mu: the FedProx coefficient. limit: the largest
            ``lr * lambda_max`` taken, in ``(0, 2]``. Default: :data:`SAFE_STEP`.
    """
    _check_limit(limit)
    curvature = step_curvature(X, y, proximal_mu=proximal_mu)
    return lr if lr * curvature <= limit else limit / curvature


def _safe_step_map(X: torch.Tensor, y: torch.Tensor, *, lr: float, proximal_mu: float, limit: float | None):
    """:func:`step_map` at the batch's :func:`safe_lr` (at ``lr`` without a ``limit``).

    The map at ``lr`` is read first: ``I - M`` is ``lr * Hessian``, whose largest eigenvalue is what
    :func:`safe_lr` compares with ``limit``. The Hessian is positive semi-definite (``mu >= 0``), so
    ``lambda_max <= trace``: where ``lr * trace <= limit`` the step is safe as it is and no
    eigenvalue is computed; only a step that needs the cap is read again, at ``limit / lambda_max``.
    """
    M, b, c = step_map(X, y, lr=lr, proximal_mu=proximal_mu)
    if limit is None:
        return M, b, c
    scaled_hessian = torch.eye(M.shape[0], dtype=torch.float64) - M
    if proximal_mu >= 0 and bool(torch.isfinite(scaled_hessian).all()) and float(scaled_hessian.diagonal().sum()) <= limit:
        return M, b, c
    stiffest = _largest_eigenvalue(scaled_hessian)  # lr * lambda_max
    if stiffest <= limit:
        return M, b, c
    return step_map(X, y, lr=lr * limit / stiffest, proximal_mu=proximal_mu)


def compose_prefixes(batches, *, lr: float, proximal_mu: float = 0.0, limit: float | None = None):
    """:func:`compose_steps` of the first 1, 2, ... of ``batches``, in turn (a generator): each
    ``(A, B, c)`` is the run so far, so a caller can stop at the longest run that suits it.

    Each batch's step is read off :func:`sgd_step` (:func:`step_map`, at the batch's
    :func:`safe_lr` with a ``limit``) and composed onto the run: a step ``M @ theta + b + s * anchor``
    after ``A @ theta + B @ anchor + c`` is ``(M A) @ theta + (M B + s I) @ anchor + (M c + b)``.
    """
    if limit is not None:
        _check_limit(limit)
    A = B = c = None
    anchored = False  # whether B is nonzero yet (it stays zero without a proximal term)
    for X, y in batches:
        X, y = X.to(torch.float64), y.to(torch.float64)
        M, b, s = _safe_step_map(X, y, lr=lr, proximal_mu=proximal_mu, limit=limit)
        if A is None:
            d = M.shape[0]
            A, B, c = torch.eye(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
        A, c = M @ A, M @ c + b
        if s or anchored:
            B = M @ B + s * torch.eye(M.shape[0], dtype=torch.float64)
            anchored = True
        yield A, B, c


def compose_steps(batches, *, lr: float, proximal_mu: float = 0.0, limit: float | None = None):
    """The coefficients of a run of :func:`sgd_step` over ``batches`` (pairs ``(X, y)`` with a bias
    column), from ``theta`` to the end: ``theta_T = A @ theta + B @ anchor + c``.

    Each step's map is read off :func:`sgd_step` itself (:func:`step_map`: exact up to float64
    rounding, the Taylor gradient is affine) and the maps are multiplied together
    (:func:`compose_prefixes`), so it is the same SGD as the steps one by one. With ``theta`` the
    anchor itself (the start of a round), the run is ``(A + B) @ theta + c``. With a ``limit``,
    each step runs at its batch's :func:`safe_lr` (so every step's map, and the composition, has
    spectral radius at most 1); without, at ``lr``. Returns ``(A, B, c)``, float64, of shapes
    ``(d, d)``, ``(d, d)`` and ``(d,)``.
    """
    maps = None
    for maps in compose_prefixes(batches, lr=lr, proximal_mu=proximal_mu, limit=limit):
        pass
    if maps is None:
        raise ValueError("compose_steps needs at least one batch")
    return maps


def add_bias_column(X: Tensor) -> Tensor:
    """Append a column of ones to ``X`` so that a bias becomes the last weight.

    ``add_bias_column(X) @ model.get_flat()`` equals ``model(X)`` for a
    :class:`torchhefl.nn.LogisticRegression` with a bias.

    Args:
        X: inputs, shape ``(n, d)``.

    Returns:
        Shape ``(n, d + 1)``, same dtype and device as ``X``.
    """
    if X.dim() != 2:
        raise ValueError(f"add_bias_column expects X of shape (n, d), got {tuple(X.shape)}")
    return torch.cat([X, X.new_ones((X.shape[0], 1))], dim=1)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction (expected 'none', 'mean' or 'sum')")
