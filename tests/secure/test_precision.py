"""Packed encodings narrower than the default: the sums decrypt to the plaintext FedAvg within the
resolution asked for, in fewer ciphertexts; stochastic rounding is unbiased."""

from collections import OrderedDict

import pytest
import torch

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import SecureStateDict
from torchhefl.secure.encoding import STATE_DICT_FIXED_POINT, FixedPoint
from torchhefl.secure.packing import check_encoding, precision

pytestmark = pytest.mark.filterwarnings("ignore::torchhefl.secure.keys.InsecureKeyWarning")


def _states(k=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [
        OrderedDict(w=scale * torch.randn(20, 30, generator=g).clamp(-3.9, 3.9), b=torch.randn(20, generator=g).clamp(-3.9, 3.9),
                    steps=torch.tensor(5 + i))
        for i in range(k)
    ]


def _fedavg(states, weights):
    total = sum(weights)
    return {k: sum(w * s[k].to(torch.float64) for w, s in zip(weights, states)) / total for k in states[0]}


def test_precision_is_the_narrowest_encoding_that_holds_what_is_asked():
    fp = precision(resolution=1e-6, max_abs=4, max_total_weight=1023)
    assert (fp.scale_bits, fp.value_bits, fp.headroom_bits, fp.slot_bits) == (20, 2, 10, 33)
    assert 2.0**-fp.scale_bits <= 1e-6 < 2.0 ** -(fp.scale_bits - 1)
    assert precision() == STATE_DICT_FIXED_POINT  # the defaults are the default encoding
    assert precision(resolution=2.0**-15, max_abs=1, max_total_weight=3).slot_bits == 18
    with pytest.raises(ValueError, match="slots of at most 63 bits"):
        precision(resolution=2.0**-40, max_abs=2.0**20, max_total_weight=10)
    with pytest.raises(ValueError, match="0 < resolution <= 1"):
        precision(resolution=0)
    with pytest.raises(TypeError, match="must be a FixedPoint"):
        check_encoding((20, 2, 10))


def test_a_narrow_sum_is_fedavg_to_its_resolution_in_fewer_ciphertexts(keypair):
    pk, sk = keypair
    states, weights = _states(), [100, 137, 174]
    fp = precision(resolution=1e-6, max_abs=4, max_total_weight=1023)
    narrow = [SecureStateDict.encrypt(s, pk, weight=w, weight_bound=300, precision=fp) for s, w in zip(states, weights)]
    default = SecureStateDict.encrypt(states[0], pk, weight=100)
    assert narrow[0].num_ciphertexts == SecureStateDict.num_ciphertexts_for(states[0], pk, fp)
    assert narrow[0].num_ciphertexts < 0.6 * default.num_ciphertexts
    blobs = [u.to_bytes() for u in narrow]
    assert len(blobs[0]) < 0.6 * len(default.to_bytes())
    received = [SecureStateDict.from_bytes(b, public_key=pk, precision=fp) for b in blobs]
    assert received[0].precision == fp
    total = SecureStateDict.weighted_average(received)
    got, want = total.decrypt(sk), _fedavg(states, weights)
    for k in ("w", "b"):
        err = float((got[k].to(torch.float64) - want[k]).abs().max())
        assert 0 < err <= 2.0 ** -(fp.scale_bits + 1) + 1e-7  # rounding to nearest, then float32
    assert int(got["steps"]) == round(sum(w * (5 + i) for i, w in enumerate(weights)) / sum(weights))
    assert total.decrypt_weight(sk) == sum(weights)


def test_a_narrow_encoding_refuses_what_it_cannot_hold(keypair):
    pk, _ = keypair
    fp = precision(resolution=1e-6, max_abs=4, max_total_weight=1023)
    with pytest.raises(OverflowError, match=r"holds \|v\| < 4"):
        SecureStateDict.encrypt({"w": torch.tensor([4.5])}, pk, precision=fp)
    with pytest.raises(OverflowError, match="weight_bound <= 1023"):
        SecureStateDict.encrypt({"w": torch.tensor([0.5])}, pk, weight=1024, precision=fp)
    a = SecureStateDict.encrypt({"w": torch.tensor([0.5])}, pk, weight=600, precision=fp)
    with pytest.raises(OverflowError, match="limit of 1023"):
        SecureStateDict.weighted_average([a, a])
    b = SecureStateDict.encrypt({"w": torch.tensor([0.5])}, pk)
    with pytest.raises(ValueError, match="different precisions"):
        SecureStateDict.weighted_average([a, b])
    with pytest.raises(ValueError, match="rounding must be one of nearest, stochastic"):
        SecureStateDict.encrypt({"w": torch.tensor([0.5])}, pk, rounding="up")


def test_stochastic_rounding_is_unbiased_where_nearest_is_not(keypair):
    """A value of 0.3 steps of a coarse grid: rounding to nearest always gives 0; stochastic
    rounding gives 1 step with probability 0.3, so the mean of many is 0.3 steps."""
    pk, sk = keypair
    fp = FixedPoint(scale_bits=4, value_bits=1, headroom_bits=4)
    step = 2.0**-fp.scale_bits
    x = {"w": torch.full((4000,), 0.3 * step, dtype=torch.float64)}
    nearest = SecureStateDict.encrypt(x, pk, precision=fp).decrypt(sk)["w"]
    assert float(nearest.abs().max()) == 0.0
    stochastic = SecureStateDict.encrypt(x, pk, precision=fp, rounding="stochastic").decrypt(sk)["w"]
    assert set(stochastic.unique().tolist()) == {0.0, step}
    mean_steps = float(stochastic.mean()) / step
    assert abs(mean_steps - 0.3) < 4 * (0.3 * 0.7 / 4000) ** 0.5  # four standard errors
    again = SecureStateDict.encrypt(x, pk, precision=fp, rounding="stochastic").decrypt(sk)["w"]
    assert not torch.equal(again, stochastic)  # fresh randomness each time, not a seed


def test_a_reader_accepts_only_the_precision_it_expects(keypair):
    """The precision is agreed like the key: bytes in another encoding than the reader's are
    refused, so that a relayer cannot have a sum read in an encoding of its choosing."""
    pk, _ = keypair
    fp = precision(resolution=1e-6, max_abs=4, max_total_weight=1023)
    narrow = SecureStateDict.encrypt({"w": torch.zeros(100)}, pk, precision=fp).to_bytes()
    default = SecureStateDict.encrypt({"w": torch.zeros(100)}, pk).to_bytes()
    assert SecureStateDict.from_bytes(narrow, public_key=pk, precision=fp).precision == fp
    assert SecureStateDict.from_bytes(default, public_key=pk).precision == STATE_DICT_FIXED_POINT
    with pytest.raises(MalformedMessageError, match="unsupported encoding"):
        SecureStateDict.from_bytes(narrow, public_key=pk)
    with pytest.raises(MalformedMessageError, match="unsupported encoding"):
        SecureStateDict.from_bytes(default, public_key=pk, precision=fp)
