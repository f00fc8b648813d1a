import pytest
import torch
from torch import nn

from torchhefl.exceptions import ConfigError
from torchhefl.nn.functional import taylor_loss
from torchhefl.privacy import InsecureNoiseWarning, SecureGenerator, private_step

D = 30


class _Logistic(nn.Module):
    """Linear(30, 1) with the output squeezed to one logit per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, 1, dtype=torch.float64)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))


def _data(n: int, seed: int = 0, scale: float = 1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=dtype) * scale
    y = (torch.rand(n, generator=g) < 0.5).to(dtype)
    return x, y


def _bce(out, target):
    return nn.functional.binary_cross_entropy_with_logits(out, target, reduction="sum")


def _taylor(out, target):
    return taylor_loss(out, target, reduction="sum")


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _manual_per_sample_grads(model, loss_fn, x, y):
    """Per-sample gradients by ordinary autograd, one sample at a time, flattened: shape (B, P)."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(_flat_grad(model).clone())
    model.zero_grad()
    return torch.stack(rows)


@pytest.mark.parametrize("loss_fn", [_bce, _taylor], ids=["bce", "taylor"])
@pytest.mark.parametrize("make_model", [_Logistic, _mlp], ids=["logistic", "mlp"])
def test_no_noise_huge_clip_is_the_mean_gradient(make_model, loss_fn):
    torch.manual_seed(0)
    model = make_model()
    dtype = next(model.parameters()).dtype
    x, y = _data(16, dtype=dtype)
    model.zero_grad()
    (loss_fn(model(x), y) / 16).backward()
    expected = _flat_grad(model).clone()
    private_step(model, loss_fn, x, y, clip_norm=1e9, noise_multiplier=0.0, expected_batch_size=16)
    torch.testing.assert_close(_flat_grad(model), expected)


@pytest.mark.parametrize("loss_fn", [_bce, _taylor], ids=["bce", "taylor"])
def test_each_per_sample_gradient_is_clipped(loss_fn):
    torch.manual_seed(1)
    model = _Logistic()
    x, y = _data(12, seed=1)
    x[::3] *= 1000.0  # gradients of these samples are far above the bound...
    with torch.no_grad():
        y[::3] = (model(x[::3]) < 0).to(y.dtype)  # ...as they are misclassified (BCE does not saturate)
    x[1::3] *= 0.01  # and these are below it
    clip = 2.0
    manual = _manual_per_sample_grads(model, loss_fn, x, y)
    manual_norms = manual.norm(dim=1)
    assert (manual_norms > 100 * clip).sum() >= 4 and (manual_norms < clip).any()

    norms = private_step(model, loss_fn, x, y, clip_norm=clip, noise_multiplier=0.0, expected_batch_size=7.5)

    torch.testing.assert_close(norms, manual_norms)
    clipped = manual * torch.clamp(clip / (manual_norms + 1e-6), max=1.0).unsqueeze(1)
    assert (clipped.norm(dim=1) <= clip).all()
    torch.testing.assert_close(_flat_grad(model), clipped.sum(0) / 7.5)


def test_clipping_bounds_each_sample_alone():
    # One sample at a time, whatever its gradient, contributes at most clip_norm / expected_batch_size.
    model = _Logistic()
    x, _ = _data(8, seed=2, scale=1e4)
    with torch.no_grad():
        y = (model(x) < 0).to(x.dtype)  # misclassified, so BCE's gradient is about |x|, far above the bound
    for i in range(8):
        private_step(model, _bce, x[i : i + 1], y[i : i + 1], clip_norm=2.0, noise_multiplier=0.0, expected_batch_size=4.0)
        norm = _flat_grad(model).norm().item()
        assert norm <= 2.0 / 4.0
        assert norm == pytest.approx(2.0 / 4.0, rel=1e-6)  # it really is far above the bound


def test_clipped_gradients_sum_to_batch_times_bound_when_aligned():
    model = _Logistic()
    x = torch.ones(5, D, dtype=torch.float64) * 100.0
    y = torch.zeros(5, dtype=torch.float64)  # identical samples: identical large gradients
    private_step(model, _bce, x, y, clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=5)
    assert _flat_grad(model).norm().item() == pytest.approx(1.0, rel=1e-6)


def test_noise_has_the_expected_scale_on_empty_batches():
    model = _Logistic()
    g = SecureGenerator()
    x, y = torch.empty(0, D, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    draws = []
    for _ in range(200):
        norms = private_step(model, _bce, x, y, clip_norm=1.5, noise_multiplier=2.0, expected_batch_size=10.0, generator=g)
        assert norms.shape == (0,)
        draws.append(_flat_grad(model))
    noise = torch.cat(draws)  # 200 * 31 draws
    expected_std = 2.0 * 1.5 / 10.0
    assert noise.std().item() == pytest.approx(expected_std, rel=0.05)
    assert abs(noise.mean().item()) < 6 * expected_std / noise.numel() ** 0.5  # 6 standard errors: fresh noise each run


def test_noise_has_the_expected_scale_on_a_real_batch():
    torch.manual_seed(4)
    model = _Logistic()
    x, y = _data(20, seed=4, scale=10.0)
    private_step(model, _taylor, x, y, clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=8.0)
    clean = _flat_grad(model).clone()
    g = SecureGenerator()
    noise = []
    for _ in range(1000):
        private_step(model, _taylor, x, y, clip_norm=1.0, noise_multiplier=0.7, expected_batch_size=8.0, generator=g)
        noise.append(_flat_grad(model) - clean)
    noise = torch.cat(noise)
    # 31,000 draws: the sample std is within 6 standard errors (6 / sqrt(2 * 31000) ~ 2.4%)
    assert noise.std().item() == pytest.approx(0.7 * 1.0 / 8.0, rel=0.025)
    # independent coordinates: the noise of two coordinates is uncorrelated (6 / sqrt(1000) ~ 0.19)
    per_draw = noise.reshape(1000, -1)
    assert abs(torch.corrcoef(per_draw[:, :2].T)[0, 1].item()) < 0.2


def test_empty_batch_without_noise_gives_zero_gradients():
    model = _mlp()
    private_step(model, _bce, torch.empty(0, D), torch.empty(0), clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=3.0)
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape
        assert torch.count_nonzero(p.grad) == 0


def test_default_noise_is_fresh_and_seeded_noise_is_replayed_only_on_request():
    model = _Logistic()
    x, y = _data(10, seed=6)

    def run(generator=None):
        private_step(model, _bce, x, y, clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=5.0, generator=generator)
        return _flat_grad(model).clone()

    assert not torch.equal(run(), run())  # no generator: a fresh OS-keyed one per call
    with pytest.warns(InsecureNoiseWarning):
        torch.testing.assert_close(
            run(SecureGenerator.insecure_from_seed(7)), run(SecureGenerator.insecure_from_seed(7)), rtol=0, atol=0
        )
        assert not torch.equal(run(SecureGenerator.insecure_from_seed(7)), run(SecureGenerator.insecure_from_seed(8)))


def test_float32_models_get_the_float64_noised_sum_rounded_once():
    model = _mlp()
    x, y = _data(6, seed=9, dtype=torch.float32)
    private_step(model, _bce, x, y, clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=3.0)
    clean = [p.grad.double() for p in model.parameters()]
    with pytest.warns(InsecureNoiseWarning):
        a, b = SecureGenerator.insecure_from_seed(3), SecureGenerator.insecure_from_seed(3)
    private_step(model, _bce, x, y, clip_norm=1.0, noise_multiplier=2.0, expected_batch_size=3.0, generator=a)
    for p, c in zip(model.parameters(), clean):
        assert p.grad.dtype == torch.float32
        noise = b.normal(p.shape, std=2.0)  # the same draws, in the same order
        torch.testing.assert_close(p.grad, ((c * 3.0 + noise) / 3.0).float(), rtol=1e-6, atol=1e-6)


def test_grad_is_replaced_and_frozen_parameters_are_left_alone():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    x, y = _data(6, seed=7, dtype=torch.float32)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 123.0)
    private_step(model, _bce, x, y, clip_norm=1e9, noise_multiplier=0.0, expected_batch_size=6)
    got = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    assert model[0].weight.grad is None
    model.zero_grad()
    (_bce(model(x), y) / 6).backward()
    for a, p in zip(got, [p for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(a, p.grad)


def test_an_added_term_after_the_step_reaches_the_optimizer():
    # FedProx-style use: the caller adds a non-private gradient to .grad, then steps the optimizer.
    model = _Logistic()
    x, y = _data(4, seed=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    private_step(model, _bce, x, y, clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=4)
    private_grads = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad += 0.1
    opt.step()
    for b, g, p in zip(before, private_grads, model.parameters()):
        torch.testing.assert_close(p.detach(), b - 0.5 * (g + 0.1))


def test_errors():
    model = _Logistic()
    x, y = _data(3)
    with pytest.raises(ConfigError, match=r"clip_norm must be a finite number > 0, got 0.0"):
        private_step(model, _bce, x, y, clip_norm=0.0, noise_multiplier=1.0, expected_batch_size=3)
    with pytest.raises(ConfigError, match=r"noise_multiplier must be a finite number >= 0, got -1.0"):
        private_step(model, _bce, x, y, clip_norm=1.0, noise_multiplier=-1.0, expected_batch_size=3)
    with pytest.raises(ValueError, match=r"expected_batch_size must be > 0, got 0"):
        private_step(model, _bce, x, y, clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=0)
    with pytest.raises(TypeError, match=r"generator must be a torchhefl.privacy.SecureGenerator, got Generator"):
        private_step(model, _bce, x, y, clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=3,
                     generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"x and y must have the same number of samples, got 3 and 2"):
        private_step(model, _bce, x, y[:2], clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=3)
    per_sample = lambda out, t: nn.functional.binary_cross_entropy_with_logits(out, t, reduction="none")  # noqa: E731
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar for one sample, got shape \(1,\)"):
        private_step(model, per_sample, x, y, clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=3)
