"""Privacy accounting for DP-SGD with Poisson subsampling, delegated to Opacus' accountants.

Nothing here computes a privacy bound by hand: :func:`calibrate_noise` calls
``opacus.accountants.utils.get_noise_multiplier`` and :class:`PrivacyAccountant` keeps an Opacus
accountant (picked by name from Opacus' registry) and asks it for epsilon.

The default is ``"prv"``, as in Opacus' own ``PrivacyEngine``: the numerical composition of
privacy loss random variables (Gopi, Lee & Wutschitz, NeurIPS 2021), whose
``PRVAccountant.get_epsilon`` returns the upper end of its error bars (epsilon at
``delta - delta / 1000``, plus ``eps_error = 0.01``), so it is an upper bound like RDP's, and a
tighter one: at the CLI's defaults (sampling rate 1.0, 30 steps, noise multiplier 42.5) PRV
reports epsilon 0.459 where RDP reports 0.494, so the same budget needs about 7% less noise.
``"rdp"`` (Mironov 2017, with the conversion of Balle et al. 2020) converts at the orders
:data:`RDP_ORDERS`, which reach far enough that the best order is never the largest one tried
at the defaults.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from torchhefl.exceptions import ConfigError
from torchhefl.privacy._checks import (
    check_delta,
    check_epsilon,
    check_noise_multiplier,
    check_sample_rate,
    check_steps,
)

__all__ = ["ACCOUNTANTS", "ACCOUNTANT_TITLES", "DEFAULT_ACCOUNTANT", "RDP_ORDERS", "PrivacyAccountant", "calibrate_noise", "check_accountant"]

#: Accountants that give an upper bound on epsilon, by their Opacus name. Opacus' ``"gdp"``
#: (Gaussian DP via the central limit theorem) is an approximation, not a bound, and is left out.
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
#: The accountant used unless another is named (see the module docstring).
DEFAULT_ACCOUNTANT = "prv"

ACCOUNTANT_TITLES = {"prv": "PRV", "rdp": "RDP"}

#: RDP orders tried when converting to (epsilon, delta): Opacus' defaults stop at 63, below the best
#: order for small epsilons (few steps, much noise: about 200 for one step at noise multiplier
#: 42.5); any set of orders gives a valid bound, more orders only a tighter one.
RDP_ORDERS: tuple[float, ...] = (
    *RDPAccountant.DEFAULT_ALPHAS, 72, 80, 96, 112, 128, 160, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
)


def _epsilon_kwargs(accountant: str) -> dict[str, Any]:
    return {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}


@contextmanager
def _quiet_opacus(*, orders: bool = True) -> Iterator[None]:
    """Silence messages of Opacus that say nothing about the epsilon returned.

    NumPy's divide by zero in PRV's ``log(1 - q)`` at ``q = 1``, which is ``-inf`` on purpose
    there; and, with ``orders``, "Optimal order is the largest alpha" where it does not concern the
    result: PRV sizes its discretisation domain with an RDP bound at Opacus' default orders (a
    looser bound only widens the domain), and Opacus' binary search for a noise multiplier visits
    large sigmas whose RDP bounds are loose but valid. An RDP epsilon keeps that warning.
    """
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        if orders:
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"unknown accountant {accountant!r}; choose one of {', '.join(map(repr, ACCOUNTANTS))}"
        )


def calibrate_noise(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = DEFAULT_ACCOUNTANT,
    epsilon_tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (up to ``epsilon_tolerance``) that keeps DP-SGD within budget.

    After ``steps`` steps of the Poisson-subsampled Gaussian mechanism at ``sample_rate`` with the
    returned noise multiplier, the named Opacus accountant reports an epsilon of at most
    ``target_epsilon`` (and at least ``target_epsilon - epsilon_tolerance``) at ``target_delta``.

    Args:
        target_epsilon: the privacy budget's epsilon, > 0.
        target_delta: the privacy budget's delta, in (0, 1).
        sample_rate: probability that a record is in a step's batch, in (0, 1].
        steps: number of noisy steps that touch the data over the whole run, >= 1.
        accountant: ``"prv"`` or ``"rdp"`` (Opacus' names). Default: ``"prv"``.
        epsilon_tolerance: precision of Opacus' binary search, in epsilon units. Default: ``0.01``.

    Returns:
        The noise multiplier sigma: the noise std divided by the clipping norm.
    """
    check_epsilon(target_epsilon)
    check_delta(target_delta)
    check_sample_rate(sample_rate)
    check_steps(steps)
    check_accountant(accountant)
    if steps == 0:
        raise ConfigError("steps must be >= 1 to calibrate noise, got 0")
    try:
        with _quiet_opacus():
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
                **_epsilon_kwargs(accountant),
            )
        return float(sigma)
    except ValueError as e:  # opacus: "The privacy budget is too low."
        raise ConfigError(
            f"no noise multiplier reaches epsilon {target_epsilon} at delta {target_delta} "
            f"with sample_rate {sample_rate} over {steps} steps ({e})"
        ) from e


class PrivacyAccountant:
    """Tracks the (epsilon, delta) spent by DP-SGD steps of one party, with an Opacus accountant.

    One accountant per site: every step that used a Poisson-subsampled batch of the site's rows
    with Gaussian noise of multiplier ``noise_multiplier`` is recorded with :meth:`step`.

    Args:
        noise_multiplier: noise std divided by the clipping norm, >= 0.
        sample_rate: Poisson sampling rate of each step, in (0, 1].
        accountant: ``"prv"`` or ``"rdp"`` (Opacus' names). Default: ``"prv"``.

    Example::

        >>> acc = PrivacyAccountant(noise_multiplier=1.1, sample_rate=0.01)
        >>> acc.step(num_steps=1000)
        >>> acc.steps, round(acc.epsilon(1e-5), 2)
        (1000, 1.53)
    """

    def __init__(self, *, noise_multiplier: float, sample_rate: float, accountant: str = DEFAULT_ACCOUNTANT) -> None:
        check_noise_multiplier(noise_multiplier)
        check_sample_rate(sample_rate)
        check_accountant(accountant)
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.mechanism = accountant
        self._accountant = create_accountant(mechanism=accountant)

    def step(self, num_steps: int = 1) -> None:
        """Record ``num_steps`` DP-SGD steps at this accountant's noise multiplier and sample rate."""
        check_steps(num_steps, "num_steps")
        for _ in range(num_steps):
            self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    @property
    def steps(self) -> int:
        """Number of steps recorded so far."""
        return sum(int(n) for _, _, n in self._accountant.history)

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (an upper bound; 0.0 before any step)."""
        check_delta(delta)
        if not self._accountant.history:
            return 0.0
        with _quiet_opacus(orders=self.mechanism == "prv"):
            return float(self._accountant.get_epsilon(delta=delta, **_epsilon_kwargs(self.mechanism)))

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the accountant's name and its history of ``[sigma, q, steps]``."""
        return {
            "accountant": self.mechanism,
            "history": [[float(s), float(q), int(n)] for s, q, n in self._accountant.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history saved by :meth:`state_dict` (the accountant names must match)."""
        if not isinstance(state_dict, dict) or "history" not in state_dict or "accountant" not in state_dict:
            raise ConfigError("accountant state must be a dict with 'accountant' and 'history'")
        if state_dict["accountant"] != self.mechanism:
            raise ConfigError(
                f"accountant state is for {state_dict['accountant']!r}, this accountant is {self.mechanism!r}"
            )
        history = []
        for entry in state_dict["history"]:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
                raise ConfigError(f"accountant history entries must be [sigma, q, steps], got {entry!r}")
            sigma, q, n = entry
            check_noise_multiplier(sigma)
            check_sample_rate(q)
            check_steps(n, "history steps")
            history.append((float(sigma), float(q), int(n)))
        self._accountant.history = history

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(noise_multiplier={self.noise_multiplier}, sample_rate={self.sample_rate}, "
            f"accountant={self.mechanism!r}, steps={self.steps})"
        )
