import pytest
import torch

from torchhefl.exceptions import ConfigError
from torchhefl.privacy import poisson_batches


def test_batches_have_the_right_mean_size_and_valid_indices():
    n, q, steps = 150, 0.3, 400
    batches = list(poisson_batches(n, sample_rate=q, steps=steps, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == steps
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    # mean of 400 Binomial(150, 0.3) sizes: std of the mean is sqrt(150 * 0.3 * 0.7 / 400) ~ 0.28
    assert sizes.mean().item() == pytest.approx(n * q, abs=1.2)
    assert sizes.var().item() == pytest.approx(n * q * (1 - q), rel=0.25)  # sizes vary as Poisson sampling does
    for b in batches:
        assert b.dtype == torch.int64
        assert torch.all(b[1:] > b[:-1])  # increasing, no repeats
        assert b.numel() == 0 or (b.min() >= 0 and b.max() < n)
    # every row is picked about q * steps times
    counts = torch.bincount(torch.cat(batches), minlength=n).to(torch.float64)
    assert counts.mean().item() == pytest.approx(q * steps, rel=0.02)


def test_small_rates_give_empty_batches_and_rate_one_gives_all_rows():
    batches = list(poisson_batches(10, sample_rate=0.01, steps=100, generator=torch.Generator().manual_seed(1)))
    assert any(b.numel() == 0 for b in batches)
    for b in poisson_batches(7, sample_rate=1.0, steps=3):
        assert torch.equal(b, torch.arange(7))


def test_seeded_generator_is_deterministic():
    def draw(seed):
        return list(poisson_batches(50, sample_rate=0.2, steps=20, generator=torch.Generator().manual_seed(seed)))

    a, b, c = draw(3), draw(3), draw(4)
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
