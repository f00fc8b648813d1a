"""PackedSum: wide packed slots for large statistics, compared with plaintext sums."""

import numpy as np
import pytest

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError
from torchhefl.secure import PackedSum
from torchhefl.secure.packed_sum import MAX_ABS_VALUE, sum_packed


@pytest.mark.parametrize("length", [0, 1, 11, 12, 13, 61])
def test_sum_matches_plaintext(keypair, length):
    pk, sk = keypair
    rng = np.random.default_rng(length)
    vs = [rng.normal(scale=1e6, size=length) * rng.choice([1e-6, 1, 1e3], size=length) for _ in range(3)]
    total = sum_packed([PackedSum.encrypt(v, pk) for v in vs])
    back = PackedSum.from_bytes(total.to_bytes(), public_key=pk).decrypt(sk)
    np.testing.assert_allclose(back, np.sum(vs, axis=0), rtol=1e-12, atol=3 * 2.0**-56)


def test_zero_slots_between_values_keep_alignment(keypair):
    pk, sk = keypair
    v = np.zeros(40)
    v[[0, 17, 39]] = [-5.5, 1e9, 3.25]
    np.testing.assert_array_equal(PackedSum.encrypt(v, pk).decrypt(sk), v)


def test_errors(keypair, other_keypair):
    pk, sk = keypair
    with pytest.raises(OverflowError, match="PackedSum holds"):
        PackedSum.encrypt([MAX_ABS_VALUE], pk)
    with pytest.raises(ValueError, match="finite"):
        PackedSum.encrypt([np.nan], pk)
    a = PackedSum.encrypt([1.0], pk)
    with pytest.raises(KeyMismatchError):
        a + PackedSum.encrypt([1.0], other_keypair[0])
    with pytest.raises(KeyMismatchError):
        a.decrypt(other_keypair[1])
    with pytest.raises(KeyMismatchError):
        PackedSum.from_bytes(a.to_bytes(), public_key=other_keypair[0])
    with pytest.raises(MalformedMessageError):
        PackedSum.from_bytes(a.to_bytes()[:-3], public_key=pk)
    with pytest.raises(ValueError, match="lengths"):
        a + PackedSum.encrypt([1.0, 2.0], pk)
