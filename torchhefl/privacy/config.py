"""DPConfig: the privacy settings of a federated run and the guarantee they buy."""

from __future__ import annotations

from dataclasses import dataclass

from torchhefl.exceptions import ConfigError
from torchhefl.privacy._checks import (
    _check_clip_norm,
    _check_delta,
    _check_epsilon,
    _check_noise_multiplier,
    _check_sample_rate,
    _check_steps,
)
from torchhefl.privacy.accountant import _ACCOUNTANT_TITLES, PrivacyAccountant, _check_accountant, calibrate_noise

__all__ = ["DPConfig"]


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """Record-level (epsilon, delta)-DP settings for local DP-SGD at every site, over a whole run.

    Each site clips per-sample gradients to ``clip_norm``, adds Gaussian noise of std
    ``noise_multiplier * clip_norm`` and takes ``local_steps`` Poisson-sampled steps (each row in a
    batch with probability ``sample_rate``, expected batch size ``sample_rate * n_site``) in each of
    ``rounds`` rounds. One record of one site then enjoys (epsilon, delta)-DP with respect to
    everything the site releases (its updates, hence the global models), since it touches that
    record in ``rounds * local_steps`` steps only; averaging is post-processing.

    If ``noise_multiplier`` is ``None`` it is calibrated with :func:`calibrate_noise`; if it is
    given, it is checked to stay within ``epsilon``.

    Args:
        epsilon: target epsilon, > 0.
        delta: target delta, in (0, 1). Default: ``1e-5``.
        clip_norm: per-sample gradient L2 bound, > 0. Default: ``1.0``.
        sample_rate: Poisson sampling rate of each local step, in (0, 1].
        rounds: number of federated rounds, >= 1.
        local_steps: DP-SGD steps per site per round, >= 1.
        accountant: ``"rdp"`` or ``"prv"``. Default: ``"rdp"``.
        noise_multiplier: noise std / clip_norm. Default: ``None`` (calibrated).
    """

    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0
    sample_rate: float
    rounds: int
    local_steps: int
    accountant: str = "rdp"
    noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        _check_epsilon(self.epsilon)
        _check_delta(self.delta)
        _check_clip_norm(self.clip_norm)
        _check_sample_rate(self.sample_rate)
        _check_steps(self.rounds, "rounds")
        _check_steps(self.local_steps, "local_steps")
        _check_accountant(self.accountant)
        if self.rounds == 0 or self.local_steps == 0:
            raise ConfigError(f"rounds and local_steps must be >= 1, got {self.rounds} and {self.local_steps}")
        if self.noise_multiplier is None:
            sigma = calibrate_noise(
                target_epsilon=self.epsilon,
                target_delta=self.delta,
                sample_rate=self.sample_rate,
                steps=self.steps,
                accountant=self.accountant,
            )
            object.__setattr__(self, "noise_multiplier", sigma)
        else:
            _check_noise_multiplier(self.noise_multiplier)
            spent = self.planned_epsilon()
            if spent > self.epsilon:
                raise ConfigError(
                    f"noise_multiplier {self.noise_multiplier} spends epsilon {spent:.3f} over "
                    f"{self.steps} steps, more than the target {self.epsilon}"
                )

    @property
    def steps(self) -> int:
        """DP-SGD steps per site over the whole run: ``rounds * local_steps``."""
        return self.rounds * self.local_steps

    def make_accountant(self) -> PrivacyAccountant:
        """A fresh accountant for one site, with this config's noise multiplier and sample rate."""
        return PrivacyAccountant(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, accountant=self.accountant
        )

    def planned_epsilon(self) -> float:
        """Epsilon at ``delta`` after all planned steps, as the accountant reports it."""
        accountant = self.make_accountant()
        accountant.step(self.steps)
        return accountant.epsilon(self.delta)

    def describe(self) -> str:
        """The guarantee in one sentence."""
        return (
            f"({self.epsilon:.2f}, {self.delta:.0e})-DP for each record of each site's data, over all "
            f"{self.rounds} rounds of {self.local_steps} local steps ({_ACCOUNTANT_TITLES[self.accountant]} "
            f"accountant, noise multiplier {self.noise_multiplier:.2f}, sampling rate {self.sample_rate:.2f}, "
            f"clip norm {self.clip_norm:g})"
        )
