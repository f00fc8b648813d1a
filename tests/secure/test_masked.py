import random

import pytest
import torch

from torchhefl.secure import EncryptedTensor
from torchhefl.secure.masked import MaskedVector


def test_masked_uploads_sum_and_unmask_to_the_plaintext_sum(keypair, other_keypair):
    pk, sk = keypair
    n = int(pk.n)
    rng = random.Random(0)
    xs = [torch.tensor([rng.uniform(-3, 3) for _ in range(4)], dtype=torch.float64) for _ in range(3)]
    ks = [5, 11, 2]
    masks = [[rng.randrange(n) for _ in range(4)] for _ in range(3)]
    uploads = [MaskedVector.scaled(EncryptedTensor.encrypt(x, pk, scale=16), k, m) for x, k, m in zip(xs, ks, masks)]
    alone = [int(sk.decrypt_raw(c)) for c in uploads[0].ciphertexts]
    assert alone == [(round(v * 2**16) * 5 + m) % n for v, m in zip(xs[0].tolist(), masks[0])]  # k * x + mask, mod n
    total = MaskedVector.sum(uploads).unmasked([sum(col) for col in zip(*masks)])
    expected = sum(k * x for k, x in zip(ks, xs))
    got = total.as_tensor(scale=16, bound_bits=40).decrypt(sk)
    torch.testing.assert_close(got, expected, rtol=0, atol=3 * 2**-16 * max(ks))
    counts = MaskedVector.encrypt(pk, [7], [masks[0][0]]).concat(MaskedVector.encrypt(pk, [9], [-masks[0][0]]))
    assert [int(sk.decrypt_raw(c)) for c in counts.ciphertexts] == [(7 + masks[0][0]) % n, (9 - masks[0][0]) % n]
    with pytest.raises(OverflowError):  # a sum still under a mask is refused by its bound
        MaskedVector.sum(uploads).as_tensor(scale=16, bound_bits=40).decrypt_ints(sk)
    with pytest.raises(ValueError, match="different public keys"):
        MaskedVector.sum([uploads[0], MaskedVector.encrypt(other_keypair[0], [1, 2, 3, 4], [0, 0, 0, 0])])
    with pytest.raises(ValueError, match="3 masks for 4 values"):
        uploads[0].unmasked([1, 2, 3])
