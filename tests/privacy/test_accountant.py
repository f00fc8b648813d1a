import json
import math
import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from torchhefl.exceptions import ConfigError
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.simulation import dp_config
from torchhefl.privacy import ACCOUNTANTS, DEFAULT_ACCOUNTANT, RDP_ORDERS, PrivacyAccountant, calibrate_noise

DELTA = 1e-5


def _gaussian_delta(eps: float, sigma: float) -> float:
    """Exact delta(eps) of the Gaussian mechanism with sensitivity 1 and std sigma (Balle & Wang 2018)."""
    phi = lambda t: 0.5 * math.erfc(-t / math.sqrt(2.0))  # noqa: E731
    return phi(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * phi(-eps * sigma - 1 / (2 * sigma))


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
@pytest.mark.parametrize(
    "epsilon,sample_rate,steps",
    [(0.5, 0.4, 60), (0.5, 1.0, 10), (1.0, 0.1, 300), (2.0, 0.05, 1000), (4.0, 0.1, 100)],
)
def test_epsilon_after_planned_steps_is_within_target(accountant, epsilon, sample_rate, steps):
    sigma = calibrate_noise(
        target_epsilon=epsilon, target_delta=DELTA, sample_rate=sample_rate, steps=steps, accountant=accountant
    )
    acc = PrivacyAccountant(noise_multiplier=sigma, sample_rate=sample_rate, accountant=accountant)
    acc.step(num_steps=steps)
    spent = acc.epsilon(DELTA)
    assert spent <= epsilon
    assert spent >= epsilon - 0.05  # calibrated, not wildly over-noised
    # one more step goes over budget or stays close to it: the budget is really spent
    acc.step()
    assert acc.epsilon(DELTA) > spent


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_reported_epsilon_is_a_true_bound_for_the_gaussian_mechanism(accountant):
    # Without subsampling, k steps at noise sigma compose to one Gaussian mechanism at sigma / sqrt(k),
    # whose exact privacy curve is known: at the reported epsilon, the true delta must not exceed ours.
    for sigma, k in [(2.0, 1), (5.0, 4), (20.0, 10), (30.0, 1)]:  # the last needs RDP orders above 63
        acc = PrivacyAccountant(noise_multiplier=sigma, sample_rate=1.0, accountant=accountant)
        acc.step(num_steps=k)
        eps = acc.epsilon(DELTA)
        assert _gaussian_delta(eps, sigma / math.sqrt(k)) <= DELTA
        # and the exact mechanism at a much smaller epsilon is over delta: the check has teeth
        assert _gaussian_delta(eps * 0.5, sigma / math.sqrt(k)) > DELTA


def test_calibrate_noise_is_monotone():
    eps_grid = [0.25, 0.5, 1.0, 2.0, 4.0]
    sigmas = [calibrate_noise(target_epsilon=e, target_delta=DELTA, sample_rate=0.4, steps=60) for e in eps_grid]
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    more_steps = [calibrate_noise(target_epsilon=0.5, target_delta=DELTA, sample_rate=0.4, steps=s) for s in (10, 60, 300)]
    assert all(a < b for a, b in zip(more_steps, more_steps[1:]))


def test_epsilon_grows_with_steps_and_starts_at_zero():
    acc = PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.1)
    assert acc.steps == 0 and acc.epsilon(DELTA) == 0.0
    spent = []
    for _ in range(3):
        acc.step(num_steps=10)
        spent.append(acc.epsilon(DELTA))
    assert acc.steps == 30
    assert spent[0] < spent[1] < spent[2]


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_step_matches_opacus_accountant(accountant):
    acc = PrivacyAccountant(noise_multiplier=1.3, sample_rate=0.2, accountant=accountant)
    acc.step(num_steps=25)
    acc.step()
    ref = {"prv": PRVAccountant, "rdp": RDPAccountant}[accountant]()
    for _ in range(26):
        ref.step(noise_multiplier=1.3, sample_rate=0.2)
    expected = ref.get_epsilon(DELTA, alphas=list(RDP_ORDERS)) if accountant == "rdp" else ref.get_epsilon(DELTA)
    assert acc.epsilon(DELTA) == pytest.approx(expected, rel=1e-12)


def test_prv_is_the_default_and_tighter_than_rdp_at_the_cli_defaults():
    """At --epsilon 0.5's defaults (rate 1.0, 30 steps) the same noise costs less epsilon under PRV."""
    assert DEFAULT_ACCOUNTANT == "prv" and PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.5).mechanism == "prv"
    spent = {}
    for accountant in ACCOUNTANTS:
        acc = PrivacyAccountant(noise_multiplier=42.5, sample_rate=1.0, accountant=accountant)
        acc.step(num_steps=30)
        spent[accountant] = acc.epsilon(DELTA)
    assert spent["rdp"] == pytest.approx(0.4936, abs=5e-4)
    assert spent["prv"] == pytest.approx(0.4592, abs=5e-4)
    # so the same budget needs less noise
    sigma = {a: calibrate_noise(target_epsilon=0.5, target_delta=DELTA, sample_rate=1.0, steps=30, accountant=a) for a in ACCOUNTANTS}
    assert sigma["prv"] < 0.95 * sigma["rdp"]


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0, 4.0, 8.0])
def test_no_warning_at_the_cli_defaults(accountant, epsilon):
    """Calibrating, and reporting epsilon after each of the 30 rounds, warns of nothing (no "optimal
    order is the largest alpha": the best RDP order is inside RDP_ORDERS; no NumPy divide by zero)."""
    dp = dp_config(TrainConfig(mode="plain", epsilon=epsilon, clip_norm=0.3))  # the CLI's --epsilon settings
    assert (dp.sample_rate, dp.rounds, dp.local_steps, dp.accountant) == (1.0, 30, 1, "prv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sigma = calibrate_noise(
            target_epsilon=epsilon, target_delta=dp.delta, sample_rate=1.0, steps=30, accountant=accountant
        )
        spent = []
        for rounds in range(1, 31):
            acc = PrivacyAccountant(noise_multiplier=sigma, sample_rate=1.0, accountant=accountant)
            acc.step(num_steps=rounds)
            spent.append(acc.epsilon(dp.delta))
    assert [str(w.message) for w in caught] == []
    assert spent[-1] <= epsilon and all(a < b for a, b in zip(spent, spent[1:]))


def test_rdp_warns_when_its_best_order_is_the_largest_tried():
    # one step at a noise far beyond any budget here: the best order is past 4096, and Opacus says so
    acc = PrivacyAccountant(noise_multiplier=2000.0, sample_rate=1.0, accountant="rdp")
    acc.step()
    with pytest.warns(UserWarning, match="Optimal order is the largest alpha"):
        acc.epsilon(DELTA)


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_state_dict_round_trips_through_json(accountant):
    acc = PrivacyAccountant(noise_multiplier=2.0, sample_rate=0.3, accountant=accountant)
    acc.step(num_steps=17)
    state = json.loads(json.dumps(acc.state_dict()))
    assert state == {"accountant": accountant, "history": [[2.0, 0.3, 17]]}
    restored = PrivacyAccountant(noise_multiplier=2.0, sample_rate=0.3, accountant=accountant)
    restored.load_state_dict(state)
    assert restored.steps == 17
    assert restored.epsilon(DELTA) == acc.epsilon(DELTA)
    restored.step()
    assert restored.steps == 18


def test_load_state_dict_rejects_other_accountant_and_bad_history():
    acc = PrivacyAccountant(noise_multiplier=2.0, sample_rate=0.3, accountant="rdp")
    with pytest.raises(ConfigError, match="accountant state is for 'prv', this accountant is 'rdp'"):
        acc.load_state_dict({"accountant": "prv", "history": []})
    with pytest.raises(ConfigError, match=r"must be \[sigma, q, steps\]"):
        acc.load_state_dict({"accountant": "rdp", "history": [[2.0, 0.3]]})
    with pytest.raises(ConfigError, match="sample_rate must be in"):
        acc.load_state_dict({"accountant": "rdp", "history": [[2.0, 1.5, 3]]})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"target_epsilon": 0.0}, r"epsilon must be a finite number > 0, got 0.0"),
        ({"target_epsilon": -1.0}, r"epsilon must be a finite number > 0, got -1.0"),
        ({"target_delta": 0.0}, r"delta must be in \(0, 1\), got 0.0"),
        ({"target_delta": 1.0}, r"delta must be in \(0, 1\), got 1.0"),
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\], got 0.0"),
        ({"sample_rate": 1.2}, r"sample_rate must be in \(0, 1\], got 1.2"),
        ({"steps": 0}, r"steps must be >= 1 to calibrate noise, got 0"),
        ({"accountant": "gdp"}, r"unknown accountant 'gdp'; choose one of 'prv', 'rdp'"),
        ({"target_epsilon": 1e-9}, r"no noise multiplier reaches epsilon 1e-09"),
    ],
)
def test_calibrate_noise_errors(kwargs, message):
    settings = {"target_epsilon": 0.5, "target_delta": DELTA, "sample_rate": 0.4, "steps": 60, **kwargs}
    with pytest.raises(ConfigError, match=message):
        calibrate_noise(**settings)


def test_accountant_errors():
    with pytest.raises(ConfigError, match="sample_rate must be in"):
        PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.0)
    with pytest.raises(ConfigError, match="noise_multiplier must be a finite number >= 0"):
        PrivacyAccountant(noise_multiplier=-1.0, sample_rate=0.5)
    acc = PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.5)
    with pytest.raises(ConfigError, match="delta must be in"):
        acc.epsilon(0.0)
    with pytest.raises(ConfigError, match="num_steps must be an integer >= 0"):
        acc.step(num_steps=-1)
