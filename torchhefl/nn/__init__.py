"""Models and losses for torchhefl (no cryptography here): :class:`LogisticRegression`, :class:`MLP`,
:class:`TaylorLoss` and their functional forms in :mod:`torchhefl.nn.functional`."""

from torchhefl.nn import functional
from torchhefl.nn.modules import MLP, LogisticRegression, TaylorLoss

__all__ = ["MLP", "LogisticRegression", "TaylorLoss", "functional"]
