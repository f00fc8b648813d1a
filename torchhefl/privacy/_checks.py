"""Validation of privacy settings, shared by the public functions of torchhefl.privacy."""

from __future__ import annotations

import math

from torchhefl.exceptions import ConfigError


def check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be a finite number > 0, got {epsilon!r}")


def check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")


def check_sample_rate(sample_rate: float) -> None:
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")


def check_clip_norm(clip_norm: float) -> None:
    if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")


def check_noise_multiplier(noise_multiplier: float) -> None:
    if not (isinstance(noise_multiplier, (int, float)) and math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")


def check_steps(steps: int, name: str = "steps") -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {steps!r}")
