"""taylor_grad against autograd of TaylorLoss; add_bias_column; taylor_loss argument checks."""

import pytest
import torch

from torchhefl.nn import LogisticRegression, TaylorLoss
from torchhefl.nn.functional import add_bias_column, taylor_grad, taylor_loss


def _autograd_grad(theta, X, y):
    theta = theta.clone().requires_grad_(True)
    TaylorLoss()(X @ theta, y.to(X.dtype)).backward()
    return theta.grad


@pytest.mark.parametrize("n,d", [(1, 1), (5, 3), (64, 30), (200, 7)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_taylor_grad_equals_autograd(n, d, with_bias):
    g = torch.Generator().manual_seed(n * 100 + d)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    if with_bias:
        X = add_bias_column(X)
    theta = torch.randn(X.shape[1], generator=g, dtype=torch.float64)
    expected = _autograd_grad(theta, X, y)
    got = taylor_grad(theta, X, y)
    assert got.shape == (X.shape[1],)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_taylor_grad_matches_model_gradients():
    torch.manual_seed(0)
    model = LogisticRegression(4, dtype=torch.float64)
    X = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (32,))
    TaylorLoss()(model(X), y.double()).backward()
    expected = torch.cat([model.weight.grad.reshape(-1), model.bias.grad])
    got = taylor_grad(model.get_flat(), add_bias_column(X), y)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_taylor_grad_follows_weight_dtype():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (10,), generator=g)
    w32 = torch.randn(3, generator=g)
    got = taylor_grad(w32, X, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, taylor_grad(w32.double(), X, y).float(), rtol=1e-5, atol=1e-6)
    assert taylor_grad(torch.tensor([1, 0, 2]), X, y).dtype == torch.float64


class _RightOperandOnly:
    """Stands in for an encrypted tensor: supports only matrix @ self and self - tensor."""

    def __init__(self, value):
        self.value = value

    def __rmatmul__(self, matrix):
        assert isinstance(matrix, torch.Tensor) and matrix.dtype == torch.float64
        return _RightOperandOnly(matrix @ self.value)

    def __sub__(self, other):
        assert isinstance(other, torch.Tensor)
        return _RightOperandOnly(self.value - other)


def test_taylor_grad_touches_weight_only_as_right_operand():
    g = torch.Generator().manual_seed(2)
    X = add_bias_column(torch.randn(20, 5, generator=g, dtype=torch.float64))
    y = torch.randint(0, 2, (20,), generator=g)
    theta = torch.randn(6, generator=g, dtype=torch.float64)
    got = taylor_grad(_RightOperandOnly(theta), X, y)
    torch.testing.assert_close(got.value, taylor_grad(theta, X, y), rtol=0, atol=0)


@pytest.mark.parametrize(
    "X_shape,y_shape,w_shape,match",
    [
        ((4, 3), (5,), (3,), r"taylor_grad expects X \(n, d\) and y \(n,\), got \(4, 3\) and \(5,\)"),
        ((4,), (4,), (3,), r"taylor_grad expects X \(n, d\) and y \(n,\)"),
        ((4, 3), (4, 1), (3,), r"taylor_grad expects X \(n, d\) and y \(n,\)"),
        ((4, 3), (4,), (4,), r"taylor_grad expects weight of shape \(3,\), got \(4,\)"),
        ((0, 3), (0,), (3,), r"taylor_grad needs at least one row"),
    ],
)
def test_taylor_grad_shape_errors(X_shape, y_shape, w_shape, match):
    with pytest.raises(ValueError, match=match):
        taylor_grad(torch.zeros(w_shape), torch.zeros(X_shape), torch.zeros(y_shape))


def test_add_bias_column():
    X = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    Xb = add_bias_column(X)
    assert Xb.shape == (3, 3) and Xb.dtype == torch.float32
    assert torch.equal(Xb[:, :2], X) and torch.equal(Xb[:, 2], torch.ones(3))
    with pytest.raises(ValueError, match=r"add_bias_column expects X of shape \(n, d\), got \(3,\)"):
        add_bias_column(torch.zeros(3))


def test_add_bias_column_matches_model_forward():
    torch.manual_seed(3)
    model = LogisticRegression(5, dtype=torch.float64)
    X = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(add_bias_column(X) @ model.get_flat(), model(X).detach())


def test_taylor_loss_errors():
    with pytest.raises(ValueError, match=r"target size \(\(3, 1\)\) that is different to the input size \(\(3,\)\)"):
        taylor_loss(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="'avg' is not a valid value for reduction|avg is not a valid value"):
        taylor_loss(torch.zeros(3), torch.zeros(3), reduction="avg")
    with pytest.raises(TypeError, match="taylor_loss expects floating-point logits, got torch.int64"):
        taylor_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3))


@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_a_rounds_composed_map_is_its_twenty_steps(mu):
    """``compose_steps`` over 20 batches, applied to a plaintext vector, is the 20 single
    ``sgd_step`` calls to 1e-12 (with FedProx, the anchor is the round's start)."""
    from torchhefl.nn.functional import add_bias_column, compose_steps, sgd_step

    g = torch.Generator().manual_seed(3)
    batches = [
        (add_bias_column(torch.randn(16, 30, generator=g, dtype=torch.float64)), (torch.rand(16, generator=g) < 0.5).double())
        for _ in range(20)
    ]
    theta0 = torch.randn(31, generator=g, dtype=torch.float64)
    theta = theta0.clone()
    for X, y in batches:
        theta = sgd_step(theta, X, y, lr=0.1, proximal_mu=mu, anchor=theta0)
    A, B, c = compose_steps(batches, lr=0.1, proximal_mu=mu)
    torch.testing.assert_close((A + B) @ theta0 + c, theta, rtol=0, atol=1e-12)
    assert torch.equal(B, torch.zeros_like(B)) == (mu == 0)
    # from any start and any anchor, not only the round's start
    other = torch.randn(31, generator=g, dtype=torch.float64)
    theta = other.clone()
    for X, y in batches:
        theta = sgd_step(theta, X, y, lr=0.1, proximal_mu=mu, anchor=theta0)
    torch.testing.assert_close(A @ other + B @ theta0 + c, theta, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least one batch"):
        compose_steps([], lr=0.1)


# -- the curvature-safe step ----------------------------------------------------------------------
def _radius(A: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(A).abs().max())


def _ill_conditioned_batches(count=6, n=16, d=64, seed=5):
    """Batches of strongly correlated rows (one common factor of unit size): ``lambda_max(X^T X / 4n)``
    near ``d / 4``, so at lr 0.2 each raw step has ``lr * lambda_max`` near 3.2, above 2."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        f = torch.randint(0, 2, (n, 1), generator=g).to(torch.float64) * 2 - 1
        X = f * torch.ones(1, d, dtype=torch.float64) + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
        out.append((add_bias_column(X), (torch.rand(n, generator=g) < 0.5).double()))
    return out


@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_safe_step_is_stable_where_the_raw_step_is_not(mu):
    from torchhefl.nn.functional import SAFE_STEP, compose_steps, safe_lr, step_curvature, step_map

    batches = _ill_conditioned_batches()
    lr = 0.2
    X, y = batches[0]
    H = X.T @ X / (4 * X.shape[0]) + mu * torch.eye(X.shape[1], dtype=torch.float64)
    assert step_curvature(X, y, proximal_mu=mu) == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-12)
    assert lr * step_curvature(X, y, proximal_mu=mu) > 2  # the raw step diverges ...
    M_raw, _, c = step_map(X, y, lr=lr, proximal_mu=mu)
    assert _radius(M_raw) > 1
    safe = safe_lr(X, y, lr=lr, proximal_mu=mu)
    assert safe < lr
    assert safe * step_curvature(X, y, proximal_mu=mu) == pytest.approx(SAFE_STEP, rel=1e-12)
    M, _, _ = step_map(X, y, lr=safe, proximal_mu=mu)
    assert _radius(M) <= 1.0 + 1e-12  # ... the safe one does not
    # a round: the raw composition grows, the safe one does not (A + B: the round from its start)
    A, B, _ = compose_steps(batches, lr=lr, proximal_mu=mu)
    assert _radius(A + B) > 1
    A, B, _ = compose_steps(batches, lr=lr, proximal_mu=mu, limit=SAFE_STEP)
    assert _radius(A + B) <= 1.0 + 1e-12
    assert float(torch.linalg.matrix_norm(A, ord=2)) <= 1.0 + 1e-12


def test_safe_step_equals_the_raw_step_where_that_is_safe():
    from torchhefl.nn.functional import SAFE_STEP, compose_steps, safe_lr

    g = torch.Generator().manual_seed(4)
    batches = [
        (add_bias_column(torch.randn(16, 30, generator=g, dtype=torch.float64)), (torch.rand(16, generator=g) < 0.5).double())
        for _ in range(20)
    ]
    assert all(safe_lr(X, y, lr=0.1) == 0.1 for X, y in batches)
    raw = compose_steps(batches, lr=0.1, proximal_mu=0.1)
    safe = compose_steps(batches, lr=0.1, proximal_mu=0.1, limit=SAFE_STEP)
    for a, b in zip(raw, safe):
        assert torch.equal(a, b)


def test_safe_lr_limit_must_keep_the_step_stable():
    from torchhefl.nn.functional import safe_lr

    X, y = _ill_conditioned_batches(count=1)[0]
    for limit in (0.0, -1.0, 2.5):
        with pytest.raises(ValueError, match=r"limit in \(0, 2\]"):
            safe_lr(X, y, lr=0.1, limit=limit)
