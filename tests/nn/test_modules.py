"""LogisticRegression and TaylorLoss: forward, predictions, flat parameters, reductions, BCE agreement."""

import math

import pytest
import torch
from torch import nn

from torchhefl.nn import LogisticRegression, TaylorLoss

# ---------------------------------------------------------------------------------------- TaylorLoss


def test_unreduced_formula():
    logits = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64)
    target = torch.tensor([0, 1, 1, 0, 1], dtype=torch.float64)
    z = (2 * target - 1) * logits
    expected = math.log(2) - z / 2 + z**2 / 8
    got = TaylorLoss(reduction="none")(logits, target)
    torch.testing.assert_close(got, expected, rtol=1e-15, atol=0)
    # spot value: target 1, logit 3 -> log 2 - 1.5 + 9/8
    assert got[4].item() == pytest.approx(math.log(2) - 1.5 + 1.125, abs=1e-15)


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 3, 4)])
def test_reductions(shape):
    g = torch.Generator().manual_seed(len(shape))
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, shape, generator=g).double()
    none = TaylorLoss(reduction="none")(logits, target)
    assert none.shape == shape
    mean = TaylorLoss()(logits, target)
    total = TaylorLoss(reduction="sum")(logits, target)
    assert mean.shape == () and total.shape == ()
    torch.testing.assert_close(mean, none.mean())
    torch.testing.assert_close(total, none.sum())
    torch.testing.assert_close(total, mean * none.numel())


def test_default_reduction_is_mean_and_bad_reduction_rejected():
    assert TaylorLoss().reduction == "mean"
    assert repr(TaylorLoss(reduction="sum")) == "TaylorLoss()"  # as BCEWithLogitsLoss, reduction not shown
    with pytest.raises(ValueError, match="elementwise_mean is not a valid value for reduction"):
        TaylorLoss(reduction="elementwise_mean")


def test_integer_targets_accepted():
    logits = torch.tensor([0.3, -1.2])
    torch.testing.assert_close(
        TaylorLoss()(logits, torch.tensor([1, 0])), TaylorLoss()(logits, torch.tensor([1.0, 0.0]))
    )


def test_shape_mismatch_is_rejected_like_bce():
    with pytest.raises(ValueError, match="different to the input size"):
        TaylorLoss()(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError):
        nn.BCEWithLogitsLoss()(torch.zeros(4, 1), torch.zeros(4))


def _loss_and_derivatives(loss_fn, z: float, target: float):
    x = torch.tensor([z], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([target], dtype=torch.float64)
    value = loss_fn(x, t)
    (d1,) = torch.autograd.grad(value, x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    return value.item(), d1.item(), d2.item()


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_matches_bce_at_zero_to_second_order(target):
    taylor = _loss_and_derivatives(TaylorLoss(), 0.0, target)
    bce = _loss_and_derivatives(nn.BCEWithLogitsLoss(), 0.0, target)
    assert taylor[0] == pytest.approx(math.log(2), abs=1e-15)
    assert taylor[0] == pytest.approx(bce[0], abs=1e-15)  # value log 2
    assert taylor[1] == pytest.approx(bce[1], abs=1e-15)  # first derivative -y/2
    assert taylor[1] == pytest.approx(-(2 * target - 1) / 2, abs=1e-15)
    assert taylor[2] == pytest.approx(bce[2], abs=1e-15)  # second derivative 1/4
    assert taylor[2] == pytest.approx(0.25, abs=1e-15)


def test_difference_from_bce_is_fourth_order():
    # log(1 + e^-z) = log 2 - z/2 + z^2/8 - z^4/192 + O(z^6): the gap is z^4/192 to leading order.
    z = torch.logspace(-2, -0.5, 40, dtype=torch.float64)
    z = torch.cat([-z, z])
    for target in (0.0, 1.0):
        t = torch.full_like(z, target)
        logits = z * (2 * target - 1)  # so that y * logit == z
        diff = TaylorLoss("none")(logits, t) - nn.BCEWithLogitsLoss(reduction="none")(logits, t)
        assert torch.all(diff.abs() <= z**4 / 192 * 1.01)
        assert torch.all(diff >= 0)
        # leading term: diff / z^4 -> 1/192 as z -> 0
        small = z.abs() < 1e-1
        torch.testing.assert_close(diff[small] / z[small] ** 4, torch.full_like(z[small], 1 / 192), rtol=1e-3, atol=0)


def test_backward_through_model():
    torch.manual_seed(0)
    model = LogisticRegression(3)
    loss = TaylorLoss()(model(torch.randn(5, 3)), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]))
    loss.backward()
    assert model.weight.grad.shape == (1, 3) and model.bias.grad.shape == (1,)
    assert model.weight.grad.abs().sum() > 0


# -------------------------------------------------------------------------------- LogisticRegression


def test_parameters_and_forward_shape():
    model = LogisticRegression(30)
    assert model.in_features == 30
    assert model.weight.shape == (1, 30) and model.bias.shape == (1,)
    assert [name for name, _ in model.named_parameters()] == ["weight", "bias"]
    x = torch.randn(8, 30)
    out = model(x)
    assert out.shape == (8,)
    torch.testing.assert_close(out, x @ model.weight[0] + model.bias)
    assert model(torch.randn(2, 4, 30)).shape == (2, 4)
    assert model(torch.randn(30)).shape == ()


def test_state_dict_is_compatible_with_linear():
    torch.manual_seed(0)
    model = LogisticRegression(6)
    linear = nn.Linear(6, 1)
    linear.load_state_dict(model.state_dict())
    x = torch.randn(4, 6)
    torch.testing.assert_close(linear(x).squeeze(-1), model(x))


def test_no_bias():
    model = LogisticRegression(4, bias=False)
    assert model.bias is None
    assert [name for name, _ in model.named_parameters()] == ["weight"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), x @ model.weight[0])
    assert model.flat_size == 4 and model.get_flat().shape == (4,)
    assert repr(model) == "LogisticRegression(in_features=4, bias=False)"


def test_repr():
    assert repr(LogisticRegression(30)) == "LogisticRegression(in_features=30, bias=True)"


def test_forward_rejects_wrong_feature_count():
    with pytest.raises(ValueError, match=r"expects inputs with 3 features in the last dimension, got shape \(5, 4\)"):
        LogisticRegression(3)(torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        LogisticRegression(1)(torch.tensor(1.0))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_in_features_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="in_features must be a positive integer, got"):
        LogisticRegression(bad)


def test_predict_and_predict_proba():
    model = LogisticRegression(2)
    model.set_flat(torch.tensor([1.0, -1.0, 0.0]))
    x = torch.tensor([[2.0, 1.0], [1.0, 2.0], [1.0, 1.0], [0.0, 0.5]])
    logits = torch.tensor([1.0, -1.0, 0.0, -0.5])
    torch.testing.assert_close(model(x).detach(), logits)
    pred = model.predict(x)
    assert pred.dtype == torch.int64
    assert pred.tolist() == [1, 0, 1, 0]  # logit 0 -> class 1
    proba = model.predict_proba(x)
    torch.testing.assert_close(proba.detach(), torch.sigmoid(logits))
    assert torch.equal((proba >= 0.5).long(), pred)


def test_dtype_and_device_arguments():
    model = LogisticRegression(3, dtype=torch.float64, device="cpu")
    assert model.weight.dtype == torch.float64 and model.bias.dtype == torch.float64
    assert model.weight.device.type == "cpu"
    assert model(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64
    assert model.get_flat().dtype == torch.float64
    assert LogisticRegression(3).weight.dtype == torch.get_default_dtype()
    meta = LogisticRegression(3, device="meta")
    assert meta.weight.device.type == "meta"


def test_reset_parameters_is_deterministic_under_manual_seed():
    torch.manual_seed(123)
    a = LogisticRegression(10)
    torch.manual_seed(123)
    b = LogisticRegression(10)
    assert torch.equal(a.get_flat(), b.get_flat())
    torch.manual_seed(7)
    a.reset_parameters()
    torch.manual_seed(7)
    b.reset_parameters()
    assert torch.equal(a.get_flat(), b.get_flat())
    c = LogisticRegression(10)
    assert not torch.equal(a.get_flat(), c.get_flat())
    # nn.Linear's bounds: |w|, |b| <= 1 / sqrt(fan_in)
    assert a.get_flat().abs().max() <= 1 / math.sqrt(10)


def test_reset_parameters_matches_linear_init():
    torch.manual_seed(5)
    model = LogisticRegression(8)
    torch.manual_seed(5)
    linear = nn.Linear(8, 1)
    assert torch.equal(model.weight, linear.weight) and torch.equal(model.bias, linear.bias)


def test_get_and_set_flat_round_trip():
    torch.manual_seed(0)
    model = LogisticRegression(3)
    theta = model.get_flat()
    assert theta.shape == (4,) and model.flat_size == 4
    assert not theta.requires_grad
    torch.testing.assert_close(theta, torch.cat([model.weight[0], model.bias]).detach())
    theta[0] = 99.0  # a copy
    assert model.weight[0, 0].item() != 99.0
    model.set_flat([1.0, 2.0, 3.0, 4.0])
    assert model.weight.tolist() == [[1.0, 2.0, 3.0]] and model.bias.tolist() == [4.0]
    import numpy as np

    model.set_flat(np.array([0.5, 0.25, 0.125, -1.0]))
    assert model.get_flat().tolist() == [0.5, 0.25, 0.125, -1.0]
    assert model.weight.dtype == torch.get_default_dtype()
    assert model.weight.requires_grad


def test_set_flat_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"set_flat expects a vector of shape \(4,\), got \(3,\)"):
        LogisticRegression(3).set_flat(torch.zeros(3))
    with pytest.raises(ValueError, match=r"set_flat expects a vector of shape \(3,\), got \(1, 3\)"):
        LogisticRegression(3, bias=False).set_flat(torch.zeros(1, 3))


# ---------------------------------------------------------------------------------------- MLP


def test_mlp_shapes_and_layers():
    from torchhefl.nn import MLP

    x = torch.randn(5, 8, dtype=torch.float64)
    multi = MLP(8, hidden=(6, 4), num_classes=3, dtype=torch.float64)
    assert multi(x).shape == (5, 3)
    assert [tuple(p.shape) for p in multi.parameters()] == [(6, 8), (6,), (4, 6), (4,), (3, 4), (3,)]
    binary = MLP(8, hidden=(6,), dtype=torch.float64)
    assert binary(x).shape == (5,)  # one squeezed logit, as LogisticRegression gives
    nn.BCEWithLogitsLoss()(binary(x), torch.ones(5, dtype=torch.float64)).backward()
    assert "hidden=(6,)" in repr(binary)


def test_mlp_is_relu_between_linears():
    from torchhefl.nn import MLP

    model = MLP(3, hidden=(2,), num_classes=4, dtype=torch.float64)
    x = torch.randn(7, 3, dtype=torch.float64)
    first, last = model.layers[0], model.layers[2]
    torch.testing.assert_close(model(x), last(torch.relu(first(x))))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_features": 0}, "in_features must be a positive integer"),
        ({"in_features": 3, "hidden": ()}, "hidden must be one or more positive integers"),
        ({"in_features": 3, "hidden": (4, 0)}, "hidden must be one or more positive integers"),
        ({"in_features": 3, "num_classes": 1}, "num_classes must be an integer of at least 2"),
    ],
)
def test_mlp_rejects_bad_sizes(kwargs, message):
    from torchhefl.nn import MLP

    with pytest.raises(ValueError, match=message):
        MLP(**kwargs)
    with pytest.raises(ValueError, match="MLP expects inputs with 3 features"):
        MLP(3)(torch.randn(2, 4))
