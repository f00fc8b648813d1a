import pytest

from torchhefl.federated import TrainConfig


@pytest.fixture
def small_config():
    """A fast configuration: few rounds, small insecure keys (tests only)."""

    def make(**overrides) -> TrainConfig:
        base = dict(rounds=3, key_bits=512, extra={"allow_insecure_keys": True})
        base.update(overrides)
        return TrainConfig(**base)

    return make
