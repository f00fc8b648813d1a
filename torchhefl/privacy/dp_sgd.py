"""One DP-SGD gradient: per-sample gradients (torch.func), clipped, summed, noised, averaged."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from torchhefl.privacy._checks import check_clip_norm, check_noise_multiplier
from torchhefl.privacy.generator import SecureGenerator, secure_generator

__all__ = ["private_step"]

# Added to the norm before dividing, as Opacus does, so that a zero gradient stays finite.
_NORM_EPS = 1e-6


def private_step(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: SecureGenerator | None = None,
) -> Tensor:
    """Set each trainable parameter's ``.grad`` to a DP-SGD gradient on the batch ``(x, y)``.

    ``grad = (sum_i clip(g_i) + N(0, (noise_multiplier * clip_norm)^2 I)) / expected_batch_size``
    where ``g_i`` is the gradient of sample ``i``'s loss with respect to all trainable parameters
    jointly and ``clip(g) = g * min(1, clip_norm / (||g||_2 + 1e-6))``, so every ``||clip(g_i)||_2``
    is at most ``clip_norm``. Each coordinate gets its own noise draw, from
    :meth:`SecureGenerator.normal <torchhefl.privacy.SecureGenerator.normal>` (cryptographically
    secure, and summed from 4 draws against floating-point attacks), and is added to the clipped
    sum in float64 before the result is cast to the parameter's dtype. Then call
    ``optimizer.step()``; a non-private term (e.g. a FedProx proximal gradient) may be added to
    ``.grad`` before that. Existing ``.grad`` values are replaced, not accumulated.

    The batch must come from Poisson sampling (:func:`~torchhefl.privacy.poisson_batches`) for the
    accountant's epsilon to hold; an empty batch is allowed and yields noise only. Models whose
    output for one sample depends on the other samples of the batch (``BatchNorm`` in training
    mode) have no per-sample gradient and are not supported.

    Args:
        model: any ``nn.Module``; its forward is called on a batch of one sample,
            ``model(x[i:i+1])``, once per sample (vectorised with ``torch.func.vmap``).
        loss_fn: ``loss_fn(output, target)`` with ``output = model(x[i:i+1])`` and
            ``target = y[i:i+1]``; it must return a scalar, the loss of that one sample (a torch
            loss with ``reduction="sum"``, or ``"mean"`` which is the same on one sample, e.g.
            ``nn.BCEWithLogitsLoss()``). The model's output and the target must have matching
            shapes as the loss requires (e.g. ``Linear(d, 1)`` output squeezed with ``squeeze(-1)``).
        x: inputs, shape ``(B, *)`` with ``B >= 0``.
        y: targets, shape ``(B, *)``.
        clip_norm: L2 bound on each per-sample gradient, > 0.
        noise_multiplier: noise std divided by ``clip_norm``, >= 0 (0 disables noise: not private).
        expected_batch_size: ``sample_rate * n``, the divisor; the realised batch size would leak
            whether a record is present and must not be used.
        generator: the random source of the noise, a :class:`~torchhefl.privacy.SecureGenerator`.
            Default: ``None`` (a fresh one keyed from the OS). A ``torch.Generator`` is refused:
            its draws follow from its seed, so whoever knows the seed removes the noise.

    Returns:
        The per-sample gradient norms before clipping, shape ``(B,)`` (for logging, e.g. the
        fraction of clipped samples); not private.
    """
    check_clip_norm(clip_norm)
    check_noise_multiplier(noise_multiplier)
    if not expected_batch_size > 0:
        raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size!r}")
    generator = secure_generator(generator)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")

    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError("private_step needs a model with at least one parameter that requires grad")
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    if x.shape[0] == 0:
        summed = {name: torch.zeros_like(p) for name, p in trainable.items()}
        norms = torch.zeros(0, dtype=next(iter(trainable.values())).dtype, device=x.device)
    else:
        def sample_loss(params: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            output = functional_call(model, ({**params, **frozen}, buffers), (xi.unsqueeze(0),))
            loss = loss_fn(output, yi.unsqueeze(0))
            if loss.dim() != 0:
                raise ValueError(
                    f"loss_fn must return a scalar for one sample, got shape {tuple(loss.shape)}; "
                    f"use reduction='sum' or 'mean'"
                )
            return loss

        params = {name: p.detach() for name, p in trainable.items()}
        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness="different")(params, x, y)
        norms = torch.linalg.vector_norm(
            torch.cat([g.reshape(g.shape[0], -1) for g in per_sample.values()], dim=1), dim=1
        )
        factor = (clip_norm / (norms + _NORM_EPS)).clamp(max=1.0)
        summed = {name: torch.einsum("b,b...->...", factor, g) for name, g in per_sample.items()}

    std = noise_multiplier * clip_norm
    for name, p in trainable.items():
        g = summed[name]
        if std > 0:
            g = g.to(torch.float64) + generator.normal(g.shape, std=std).to(g.device)
        p.grad = (g / expected_batch_size).to(p.dtype)
    return norms.detach()
