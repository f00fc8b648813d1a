"""DPConfig: the privacy settings of a federated run and the guarantee they buy."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from torchhefl.exceptions import ConfigError
from torchhefl.privacy._checks import (
    check_clip_norm,
    check_delta,
    check_epsilon,
    check_noise_multiplier,
    check_sample_rate,
    check_steps,
)
from torchhefl.privacy.accountant import ACCOUNTANT_TITLES, PrivacyAccountant, check_accountant, calibrate_noise
from torchhefl.privacy.generator import SecureGenerator

__all__ = ["DPConfig"]

# Opacus' accountants take from milliseconds to seconds per call (PRV, and RDP's fractional orders at
# sampling rates near 1/2): a run asks the same questions once per site and round, so remember them.
_calibrate = functools.lru_cache(maxsize=64)(calibrate_noise)


@functools.lru_cache(maxsize=1024)
def _epsilon_after(accountant: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    spent = PrivacyAccountant(noise_multiplier=noise_multiplier, sample_rate=sample_rate, accountant=accountant)
    spent.step(steps)
    return spent.epsilon(delta)


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

    The guarantee holds against whoever cannot regenerate the noise: each site draws its noise
    and its Poisson batches from a fresh :class:`~torchhefl.privacy.SecureGenerator` keyed from
    the OS (see :meth:`generator`), so not even a party that knows the seed and every setting
    (the server) can. ``insecure_seeded_noise=True`` derives them from the public seed instead,
    for tests that compare runs draw for draw, and voids the guarantee against anyone who knows
    the seed: it warns with :class:`~torchhefl.privacy.InsecureNoiseWarning` and says so in
    :meth:`describe`.

    Args:
        epsilon: target epsilon, > 0.
        delta: target delta, in (0, 1). Default: ``1e-5``.
        clip_norm: per-sample gradient L2 bound, > 0. Default: ``1.0``.
        sample_rate: Poisson sampling rate of each local step, in (0, 1].
        rounds: number of federated rounds, >= 1.
        local_steps: DP-SGD steps per site per round, >= 1.
        accountant: ``"prv"`` or ``"rdp"``. Default: ``"prv"`` (see
            :func:`~torchhefl.privacy.calibrate_noise`).
        noise_multiplier: noise std / clip_norm. Default: ``None`` (calibrated).
        insecure_seeded_noise: draw noise and batches from the run's seed (tests only; INSECURE).
            Default: ``False``.
    """

    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0
    sample_rate: float
    rounds: int
    local_steps: int
    accountant: str = "prv"
    noise_multiplier: float | None = None
    insecure_seeded_noise: bool = False

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        check_delta(self.delta)
        check_clip_norm(self.clip_norm)
        check_sample_rate(self.sample_rate)
        check_steps(self.rounds, "rounds")
        check_steps(self.local_steps, "local_steps")
        check_accountant(self.accountant)
        if not isinstance(self.insecure_seeded_noise, bool):
            raise ConfigError(f"insecure_seeded_noise must be True or False, got {self.insecure_seeded_noise!r}")
        if self.rounds == 0 or self.local_steps == 0:
            raise ConfigError(f"rounds and local_steps must be >= 1, got {self.rounds} and {self.local_steps}")
        if self.noise_multiplier is None:
            sigma = _calibrate(
                target_epsilon=self.epsilon,
                target_delta=self.delta,
                sample_rate=self.sample_rate,
                steps=self.steps,
                accountant=self.accountant,
            )
            object.__setattr__(self, "noise_multiplier", sigma)
        else:
            check_noise_multiplier(self.noise_multiplier)
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

    def generator(self, seed: int, site: int, server_round: int) -> SecureGenerator:
        """The random source of one site's noise and batches in one round.

        A fresh :class:`~torchhefl.privacy.SecureGenerator` keyed from the OS, unless
        ``insecure_seeded_noise``: then one keyed from ``(seed, site, server_round)``, which warns.
        """
        if self.insecure_seeded_noise:
            return SecureGenerator.insecure_from_seed(seed, site, server_round)
        return SecureGenerator()

    def epsilon_after(self, steps: int) -> float:
        """Epsilon at ``delta`` after ``steps`` steps of one site, as the accountant reports it."""
        check_steps(steps)
        return _epsilon_after(self.accountant, float(self.noise_multiplier), float(self.sample_rate), steps, float(self.delta))

    def planned_epsilon(self) -> float:
        """Epsilon at ``delta`` after all planned steps, as the accountant reports it."""
        return self.epsilon_after(self.steps)

    def describe(self) -> str:
        """The guarantee in one sentence."""
        if self.insecure_seeded_noise:
            return (
                "NO differential privacy against anyone who knows the seed: noise and batches were derived "
                f"from it (insecure_seeded_noise, tests only); otherwise {self._guarantee()}"
            )
        return self._guarantee()

    def _guarantee(self) -> str:
        return (
            f"({self.epsilon:.2f}, {self.delta:.0e})-DP for each record of each site's data, over all "
            f"{self.rounds} rounds of {self.local_steps} local steps ({ACCOUNTANT_TITLES[self.accountant]} "
            f"accountant, noise multiplier {self.noise_multiplier:.2f}, sampling rate {self.sample_rate:.2f}, "
            f"clip norm {self.clip_norm:g})"
        )
