from collections import OrderedDict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from torchhefl.exceptions import KeyMismatchError
from torchhefl.secure import MAX_TOTAL_WEIGHT, SecureStateDict


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def trained_states(k: int) -> list[OrderedDict]:
    torch.manual_seed(0)
    states = []
    for i in range(k):
        m = small_cnn()
        m.train()
        for _ in range(i + 1):
            m(torch.randn(8, 1, 6, 6))  # moves running stats and num_batches_tracked
        states.append(OrderedDict((n, t.clone()) for n, t in m.state_dict().items()))
    return states


def fedavg(states, weights):
    total = sum(weights)
    return {k: sum(w * s[k].to(torch.float64) for w, s in zip(weights, states)) / total for k in states[0]}


def test_cnn_with_batchnorm_round_trips_strictly(keypair):
    pk, sk = keypair
    (state,) = trained_states(1)
    enc = SecureStateDict.encrypt(state, pk)
    out = SecureStateDict.from_bytes(enc.to_bytes(), public_key=pk).decrypt(sk)
    assert list(out) == list(state)
    for k in state:
        assert out[k].dtype == state[k].dtype and out[k].shape == state[k].shape
        torch.testing.assert_close(out[k].to(torch.float64), state[k].to(torch.float64), atol=3e-8, rtol=0)
    assert out["1.num_batches_tracked"].item() == 1
    small_cnn().load_state_dict(out, strict=True)


def test_weighted_average_equals_plaintext_fedavg(keypair):
    pk, sk = keypair
    states = trained_states(3)
    weights = [120, 75, 301]
    encs = [SecureStateDict.encrypt(s, pk) for s in states]
    avg = SecureStateDict.weighted_average(encs, weights=weights)
    out = avg.decrypt(sk)
    ref = fedavg(states, weights)
    for k in ref:
        if out[k].is_floating_point():
            assert (out[k].to(torch.float64) - ref[k]).abs().max().item() <= 1e-6
    # integer buffers: the same weighted mean, rounded to the nearest integer
    assert out["1.num_batches_tracked"].item() == round(ref["1.num_batches_tracked"].item())
    assert avg.decrypt_weight(sk) == sum(weights)
    small_cnn().load_state_dict(out, strict=True)


def test_client_weighted_encryption_hides_counts_from_the_server(keypair):
    pk, sk = keypair
    states = trained_states(3)
    counts = [13, 250, 77]
    encs = [SecureStateDict.encrypt(s, pk, weight=n, weight_bound=1000) for s, n in zip(states, counts)]
    assert all(e.weight_bound == 1000 for e in encs)  # only the public cap is visible
    total = SecureStateDict.weighted_average(encs)  # plain sum on the server
    assert total.decrypt_weight(sk) == sum(counts)
    out = total.decrypt(sk)
    ref = fedavg(states, counts)
    for k in ref:
        if out[k].is_floating_point():
            assert (out[k].to(torch.float64) - ref[k]).abs().max().item() <= 1e-6
    summed = total.decrypt(sk, average=False)
    torch.testing.assert_close(
        summed["4.bias"].to(torch.float64), ref["4.bias"] * sum(counts), atol=1e-3, rtol=1e-6
    )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    k=st.integers(1, 4),
    size=st.integers(0, 40),
    weights=st.lists(st.integers(0, 5000), min_size=4, max_size=4),
)
def test_weighted_average_property(keypair, data, k, size, weights):
    pk, sk = keypair
    weights = weights[:k]
    if not any(weights):
        weights[0] = 1
    vals = st.floats(-8000, 8000, allow_nan=False)
    states = [
        OrderedDict(
            a=torch.tensor(data.draw(st.lists(vals, min_size=size, max_size=size)), dtype=torch.float64),
            b=torch.tensor(data.draw(st.integers(-(2**30), 2**30))),
        )
        for _ in range(k)
    ]
    out = SecureStateDict.weighted_average([SecureStateDict.encrypt(s, pk) for s in states], weights).decrypt(sk)
    ref = fedavg(states, weights)
    assert out["a"].dtype == torch.float64 and out["a"].shape == (size,)
    assert (out["a"] - ref["a"]).abs().max().item() <= 1e-6 if size else True
    assert abs(out["b"].item() - ref["b"].item()) <= 0.5


def test_weight_limits(keypair):
    pk, _ = keypair
    state = {"w": torch.ones(3)}
    enc = SecureStateDict.encrypt(state, pk)
    with pytest.raises(OverflowError, match="beyond the packed encoding's limit"):
        SecureStateDict.weighted_average([enc, enc], weights=[MAX_TOTAL_WEIGHT, 1])
    SecureStateDict.weighted_average([enc, enc], weights=[MAX_TOTAL_WEIGHT - 1, 1])
    big = SecureStateDict.encrypt(state, pk, weight=10, weight_bound=MAX_TOTAL_WEIGHT)
    with pytest.raises(OverflowError, match="beyond the packed encoding's limit"):
        SecureStateDict.weighted_average([big, enc])
    with pytest.raises(TypeError, match="non-negative integer"):
        SecureStateDict.weighted_average([enc, enc], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="at least one weight"):
        SecureStateDict.weighted_average([enc, enc], weights=[0, 0])
    with pytest.raises(ValueError, match="2 weights for 1"):
        SecureStateDict.weighted_average([enc], weights=[1, 2])
    with pytest.raises(OverflowError, match="weight_bound"):
        SecureStateDict.encrypt(state, pk, weight=5, weight_bound=4)


def test_values_out_of_range_and_bad_inputs(keypair):
    pk, _ = keypair
    with pytest.raises(OverflowError, match="'w'.*holds \\|v\\| < 8192"):
        SecureStateDict.encrypt({"w": torch.tensor([1.0, 9000.0])}, pk)
    with pytest.raises(ValueError, match="NaN"):
        SecureStateDict.encrypt({"w": torch.tensor([float("inf")])}, pk)
    with pytest.raises(TypeError, match="not a tensor"):
        SecureStateDict.encrypt({"w": [1.0]}, pk)


def test_mismatched_layouts_and_keys(keypair, other_keypair):
    pk, sk = keypair
    pk2, sk2 = other_keypair
    a = SecureStateDict.encrypt({"w": torch.ones(3)}, pk)
    b = SecureStateDict.encrypt({"w": torch.ones(4)}, pk)
    c = SecureStateDict.encrypt({"w": torch.ones(3)}, pk2)
    with pytest.raises(ValueError, match="different keys, shapes or dtypes"):
        SecureStateDict.weighted_average([a, b])
    with pytest.raises(KeyMismatchError, match="different public keys"):
        SecureStateDict.weighted_average([a, c])
    with pytest.raises(KeyMismatchError, match="does not match"):
        a.decrypt(sk2)


def test_rerandomize_and_packing_density(keypair):
    pk, sk = keypair
    state = {"w": torch.linspace(-1, 1, 100)}
    enc = SecureStateDict.encrypt(state, pk)
    r = enc.rerandomize()
    assert r.to_bytes() != enc.to_bytes()
    torch.testing.assert_close(r.decrypt(sk)["w"], state["w"], atol=3e-8, rtol=0)
    # 512-bit key: 8 slots of 62 bits per plaintext -> ceil(100 / 8) ciphertexts
    assert enc.num_ciphertexts == 13
