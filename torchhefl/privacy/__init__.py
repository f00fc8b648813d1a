"""Differential privacy for local training: per-sample clipping, Gaussian noise, accounting.

A site trains with :func:`private_step` on batches from :func:`poisson_batches`, with the noise
multiplier from :func:`calibrate_noise` (or a :class:`DPConfig`), and tracks what it has spent
with a :class:`PrivacyAccountant`. Accounting is Opacus'; nothing here bounds epsilon by hand.
Noise and batches come from a :class:`SecureGenerator` keyed from the OS, which nobody who knows
the run's seed can replay.
"""

from torchhefl.privacy.accountant import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    RDP_ORDERS,
    PrivacyAccountant,
    calibrate_noise,
)
from torchhefl.privacy.config import DPConfig
from torchhefl.privacy.dp_sgd import private_step
from torchhefl.privacy.generator import InsecureNoiseWarning, SecureGenerator
from torchhefl.privacy.sampling import poisson_batches

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ACCOUNTANT",
    "DPConfig",
    "InsecureNoiseWarning",
    "PrivacyAccountant",
    "RDP_ORDERS",
    "SecureGenerator",
    "calibrate_noise",
    "poisson_batches",
    "private_step",
]
