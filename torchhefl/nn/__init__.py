"""Models and losses for torchhefl (no cryptography here): :class:`LogisticRegression`,
:class:`TaylorLoss` and their functional forms in :mod:`torchhefl.nn.functional`."""

from torchhefl.nn import functional
from torchhefl.nn.modules import LogisticRegression, TaylorLoss

__all__ = ["LogisticRegression", "TaylorLoss", "functional"]
