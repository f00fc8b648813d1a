"""torchhefl's layers and losses: :class:`LogisticRegression`, :class:`MLP` and :class:`TaylorLoss`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.loss import _Loss

from torchhefl.nn import functional as HF

__all__ = ["MLP", "LogisticRegression", "TaylorLoss"]


class LogisticRegression(nn.Module):
    r"""Binary logistic regression: :math:`\text{logit} = x w^T + b`.

    Holds the same parameters as ``nn.Linear(in_features, 1)`` and is initialised the same way, but
    :meth:`forward` returns one logit per row with the last dimension squeezed, shape ``(*,)``, as
    ``BCEWithLogitsLoss`` and :class:`TaylorLoss` expect with targets of shape ``(*,)``.

    For training on encrypted parameters the model is also a flat vector
    ``theta = [weight[0, 0], ..., weight[0, d-1], bias]`` (:meth:`get_flat` / :meth:`set_flat`),
    matched by inputs with a trailing column of ones (:func:`torchhefl.nn.functional.add_bias_column`).

    Args:
        in_features: number of input features ``d``.
        bias: whether to learn an additive bias. Default: ``True``.
        device: device of the parameters. Default: ``None`` (the current default device).
        dtype: dtype of the parameters. Default: ``None`` (the current default dtype).

    Shape:
        - Input: :math:`(*, d)`.
        - Output: :math:`(*)`, logits.

    Attributes:
        weight: shape ``(1, d)``.
        bias: shape ``(1,)``, or ``None`` when ``bias=False``.

    Example::

        >>> model = LogisticRegression(30)
        >>> model(torch.randn(8, 30)).shape
        torch.Size([8])
    """

    __constants__ = ["in_features"]
    in_features: int
    weight: Tensor

    def __init__(self, in_features: int, *, bias: bool = True, device=None, dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features
        self.weight = nn.Parameter(torch.empty((1, in_features), **factory_kwargs))
        if bias:
            self.bias = nn.Parameter(torch.empty(1, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the parameters as ``nn.Linear(in_features, 1)`` does (uniform, fan-in bound)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        """Logits of shape ``(*,)`` for inputs of shape ``(*, in_features)``."""
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(
                f"LogisticRegression expects inputs with {self.in_features} features in the last "
                f"dimension, got shape {tuple(input.shape)}"
            )
        return F.linear(input, self.weight, self.bias).squeeze(-1)

    def predict_proba(self, input: Tensor) -> Tensor:
        """Probability of class 1, ``sigmoid(logit)``, shape ``(*,)``."""
        return torch.sigmoid(self(input))

    @torch.no_grad()
    def predict(self, input: Tensor) -> Tensor:
        """Predicted class in {0, 1} (``logit >= 0``), an int64 tensor of shape ``(*,)``."""
        return (self(input) >= 0).long()

    @property
    def flat_size(self) -> int:
        """Length of :meth:`get_flat`: ``in_features + 1`` with a bias, else ``in_features``."""
        return self.in_features + (1 if self.bias is not None else 0)

    def get_flat(self) -> Tensor:
        """The parameters as one detached vector ``[weight..., bias]`` of shape ``(flat_size,)``.

        A copy: changing it does not change the model.
        """
        parts = [self.weight.detach().reshape(-1)]
        if self.bias is not None:
            parts.append(self.bias.detach().reshape(-1))
        return torch.cat(parts).clone()

    @torch.no_grad()
    def set_flat(self, theta) -> None:
        """Load parameters from a vector laid out as :meth:`get_flat` returns them.

        Args:
            theta: shape ``(flat_size,)``; a tensor, array or sequence of numbers. It is converted to
                the parameters' dtype and device.
        """
        theta = torch.as_tensor(theta)
        if theta.shape != (self.flat_size,):
            raise ValueError(
                f"set_flat expects a vector of shape ({self.flat_size},), got {tuple(theta.shape)}"
            )
        theta = theta.to(dtype=self.weight.dtype, device=self.weight.device)
        self.weight.copy_(theta[: self.in_features].reshape(1, -1))
        if self.bias is not None:
            self.bias.copy_(theta[self.in_features :])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, bias={self.bias is not None}"


class MLP(nn.Module):
    r"""A multi-layer perceptron: ``Linear -> ReLU`` per hidden layer, then a ``Linear`` output layer.

    With ``num_classes=2`` the output layer has one unit and :meth:`forward` squeezes it, one logit
    per row of shape ``(*,)`` as :class:`LogisticRegression` gives (for ``BCEWithLogitsLoss`` or
    :class:`TaylorLoss`); with ``num_classes=K > 2`` it returns ``K`` logits per row, shape
    ``(*, K)``, for ``CrossEntropyLoss``. Layers are ``nn.Linear``, initialised as torch does.

    Args:
        in_features: number of input features ``d``.
        hidden: the sizes of the hidden layers, in order (at least one). Default: ``(32,)``.
        num_classes: number of classes ``K >= 2``. Default: ``2``.
        device: device of the parameters. Default: ``None`` (the current default device).
        dtype: dtype of the parameters. Default: ``None`` (the current default dtype).

    Shape:
        - Input: :math:`(*, d)`.
        - Output: :math:`(*)` for 2 classes, :math:`(*, K)` otherwise; logits.

    Example::

        >>> model = MLP(64, hidden=(32,), num_classes=10)
        >>> model(torch.randn(8, 64)).shape
        torch.Size([8, 10])
    """

    __constants__ = ["in_features", "num_classes"]
    in_features: int
    num_classes: int

    def __init__(self, in_features: int, hidden=(32,), num_classes: int = 2, *, device=None, dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
        hidden = tuple(hidden)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be one or more positive integers, got {hidden!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
        self.in_features, self.hidden, self.num_classes = in_features, hidden, num_classes
        sizes = (in_features, *hidden)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out, **factory_kwargs), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], 1 if num_classes == 2 else num_classes, **factory_kwargs))
        self.layers = nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """Initialise every ``Linear`` layer afresh as torch does."""
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(self, input: Tensor) -> Tensor:
        """Logits of shape ``(*,)`` (2 classes) or ``(*, K)`` for inputs of shape ``(*, in_features)``."""
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(
                f"MLP expects inputs with {self.in_features} features in the last dimension, got shape {tuple(input.shape)}"
            )
        out = self.layers(input)
        return out.squeeze(-1) if self.num_classes == 2 else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, hidden={self.hidden}, num_classes={self.num_classes}"


class TaylorLoss(_Loss):
    r"""Second-order Taylor approximation of the logistic loss (the paper's Eq 12).

    Used like ``BCEWithLogitsLoss``: logits and targets in {0, 1}. The unreduced loss is

    .. math::
        \ell_n = \log 2 - \frac{z_n}{2} + \frac{z_n^2}{8}, \qquad
        z_n = (2 t_n - 1)\, x_n,

    the expansion of :math:`\log(1 + e^{-z})` around :math:`z = 0`. It equals ``BCEWithLogitsLoss``
    up to :math:`O(z^4)` near 0, and its gradient is linear in the weights
    (:func:`torchhefl.nn.functional.taylor_grad`), so it can be computed on encrypted weights.
    Unlike the logistic loss it grows again for large margins, so keep inputs standardised.

    Args:
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``: no reduction, the mean over elements, or
            their sum. Default: ``"mean"``.

    Shape:
        - Input: :math:`(*)`, logits, any shape.
        - Target: :math:`(*)`, same shape as the input; {0, 1} (any dtype; soft labels in [0, 1]
          are accepted).
        - Output: a scalar; :math:`(*)` with ``reduction="none"``.

    Example::

        >>> loss = TaylorLoss()
        >>> logits = torch.randn(3, requires_grad=True)
        >>> target = torch.tensor([0.0, 1.0, 1.0])
        >>> loss(logits, target).backward()
    """

    __constants__ = ["reduction"]

    def __init__(self, reduction: str = "mean") -> None:
        HF._check_reduction(reduction)
        super().__init__(reduction=reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return HF.taylor_loss(input, target, reduction=self.reduction)
