import math

import pytest
import torch

from torchhefl.exceptions import ConfigError
from torchhefl.privacy import InsecureNoiseWarning, SecureGenerator, poisson_batches


def test_batches_have_the_right_mean_size_and_valid_indices():
    # fresh draws every run: each bound is 6 standard errors wide
    n, q, steps = 150, 0.3, 4000
    batches = list(poisson_batches(n, sample_rate=q, steps=steps, generator=SecureGenerator()))
    assert len(batches) == steps
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    var = n * q * (1 - q)  # Binomial(150, 0.3)
    assert abs(sizes.mean().item() - n * q) < 6 * math.sqrt(var / steps)
    assert sizes.var().item() == pytest.approx(var, rel=6 * math.sqrt(2 / steps))  # sizes vary as Poisson sampling does
    for b in batches:
        assert b.dtype == torch.int64
        assert torch.all(b[1:] > b[:-1])  # increasing, no repeats
        assert b.numel() == 0 or (b.min() >= 0 and b.max() < n)
    # every row is picked about q * steps times: Binomial(4000, 0.3) each
    counts = torch.bincount(torch.cat(batches), minlength=n).to(torch.float64)
    assert (counts - q * steps).abs().max().item() < 6 * math.sqrt(steps * q * (1 - q))


def test_small_rates_give_empty_batches_and_rate_one_gives_all_rows():
    batches = list(poisson_batches(10, sample_rate=0.01, steps=100))  # P(no empty batch) = (1 - 0.99^10)^100 ~ 1e-100
    assert any(b.numel() == 0 for b in batches)
    for b in poisson_batches(7, sample_rate=1.0, steps=3):
        assert torch.equal(b, torch.arange(7))


def test_batches_are_fresh_by_default_and_replayed_only_from_a_seeded_generator():
    def draw(generator=None):
        return list(poisson_batches(50, sample_rate=0.2, steps=20, generator=generator))

    a, b = draw(), draw()
    assert not all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.warns(InsecureNoiseWarning):
        a, b, c = (draw(SecureGenerator.insecure_from_seed(s)) for s in (3, 3, 4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\], got 0.0"),
        ({"sample_rate": 1.5}, r"sample_rate must be in \(0, 1\], got 1.5"),
        ({"steps": -1}, r"steps must be an integer >= 0, got -1"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        list(poisson_batches(10, **{"sample_rate": 0.5, "steps": 2, **kwargs}))


def test_a_seeded_torch_generator_is_refused():
    with pytest.raises(TypeError, match="generator must be a torchhefl.privacy.SecureGenerator, got Generator"):
        list(poisson_batches(10, sample_rate=0.5, steps=2, generator=torch.Generator().manual_seed(0)))
