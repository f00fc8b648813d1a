import pytest
import torch

from torchhefl.exceptions import ConfigError
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.simulation import dp_config
from torchhefl.privacy import DPConfig, InsecureNoiseWarning, SecureGenerator, calibrate_noise


def test_calibrated_config_stays_within_budget_and_describes_it():
    config = DPConfig(epsilon=0.5, delta=1e-5, clip_norm=1.0, sample_rate=0.4, rounds=30, local_steps=2)
    assert config.steps == 60
    assert config.noise_multiplier == calibrate_noise(
        target_epsilon=0.5, target_delta=1e-5, sample_rate=0.4, steps=60
    )
    assert config.planned_epsilon() <= 0.5
    accountant = config.make_accountant()
    for _ in range(config.rounds):
        accountant.step(config.local_steps)
        assert accountant.epsilon(config.delta) <= config.epsilon
    assert accountant.steps == 60
    assert config.describe() == (
        "(0.50, 1e-05)-DP for each record of each site's data, over all 30 rounds of 2 local steps "
        f"(PRV accountant, noise multiplier {config.noise_multiplier:.2f}, sampling rate 0.40, clip norm 1)"
    )


def test_explicit_noise_multiplier_is_checked_against_the_budget():
    ok = DPConfig(epsilon=1.0, sample_rate=0.1, rounds=10, local_steps=10, noise_multiplier=5.0)
    assert ok.planned_epsilon() <= 1.0
    with pytest.raises(ConfigError, match=r"noise_multiplier 0.5 spends epsilon .* over 100 steps, more than the target 1.0"):
        DPConfig(epsilon=1.0, sample_rate=0.1, rounds=10, local_steps=10, noise_multiplier=0.5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"epsilon": 0.0}, r"epsilon must be a finite number > 0, got 0.0"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\), got 1.0"),
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\], got 0.0"),
        ({"clip_norm": -1.0}, r"clip_norm must be a finite number > 0, got -1.0"),
        ({"rounds": 0}, r"rounds and local_steps must be >= 1, got 0 and 2"),
        ({"local_steps": 1.5}, r"local_steps must be an integer >= 0, got 1.5"),
        ({"accountant": "gdp"}, r"unknown accountant 'gdp'"),
        ({"insecure_seeded_noise": 1}, r"insecure_seeded_noise must be True or False, got 1"),
    ],
)
def test_errors(kwargs, message):
    settings = {"epsilon": 0.5, "sample_rate": 0.4, "rounds": 30, "local_steps": 2, **kwargs}
    with pytest.raises(ConfigError, match=message):
        DPConfig(**settings)


def _draws(generator: SecureGenerator) -> torch.Tensor:
    return generator.normal((8,), std=1.0)


def test_each_round_draws_from_a_fresh_secret_key_by_default():
    config = DPConfig(epsilon=1.0, sample_rate=0.5, rounds=3, local_steps=1)
    assert config.insecure_seeded_noise is False
    a, b = config.generator(0, 1, 2), config.generator(0, 1, 2)  # the same seed, site and round
    assert not a.seeded and not b.seeded
    assert not torch.equal(_draws(a), _draws(b))


def test_insecure_seeded_noise_replays_the_draws_warns_and_says_so():
    config = DPConfig(epsilon=1.0, sample_rate=0.5, rounds=3, local_steps=1, insecure_seeded_noise=True)
    with pytest.warns(InsecureNoiseWarning, match="whoever knows the seed can remove the noise"):
        a = config.generator(0, 1, 2)
    with pytest.warns(InsecureNoiseWarning):
        b, other = config.generator(0, 1, 2), config.generator(0, 1, 3)
    assert a.seeded and torch.equal(_draws(a), _draws(b))
    assert not torch.equal(_draws(b), _draws(other))
    assert config.describe().startswith("NO differential privacy against anyone who knows the seed")


def test_a_run_gets_seeded_noise_only_from_python():
    """The CLI's settings leave it off; only ``extra["insecure_seeded_dp_noise"] = True`` turns it on."""
    assert dp_config(TrainConfig(mode="plain", epsilon=1.0, clip_norm=0.3)).insecure_seeded_noise is False
    assert dp_config(TrainConfig(mode="plain", epsilon=1.0, clip_norm=0.3, extra={"insecure_seeded_dp_noise": "yes"})).insecure_seeded_noise is False
    on = TrainConfig(mode="plain", epsilon=1.0, clip_norm=0.3, extra={"insecure_seeded_dp_noise": True})
    assert dp_config(on).insecure_seeded_noise is True
