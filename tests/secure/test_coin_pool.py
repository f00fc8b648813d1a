"""Precomputed coins: encryptions and decryptions from the pool equal the ones computed online,
and no precomputed factor is ever used twice."""

import os
from collections import OrderedDict

import gmpy2
import pytest
import torch

from torchhefl.secure import SecureStateDict
from torchhefl.secure import coins as coins_module
from torchhefl.secure.coins import CoinKey

pytestmark = pytest.mark.filterwarnings("ignore::torchhefl.secure.keys.InsecureKeyWarning")


def _states(k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [OrderedDict(weight=torch.randn(4, 30, generator=g), bias=torch.randn(4, generator=g)) for _ in range(k)]


def test_a_pooled_encryption_is_the_online_one_under_its_nonce(keypair):
    """The pool's factors are exactly the coins of the nonce it returned: stripping by that nonce
    gives back the plaintexts, and the ciphertexts equal an online encryption under that nonce."""
    pk, sk = keypair
    ck = CoinKey(sk)
    ms = [3, 0, int(pk.n) - 1, 12345678901234567890]
    (nonce,) = ck.precompute(len(ms))
    assert ck.pooled(len(ms)) == 1
    used, cts = ck.encrypt_ints(ms)
    assert used == nonce and ck.pooled(len(ms)) == 0
    assert cts == ck._encrypt_under(nonce, ms)
    assert ck.strip(cts, [(nonce, 1)]) == [m % pk.n for m in ms]
    assert sk.decrypt_raw_many(cts) == [m % pk.n for m in ms]


def test_a_batch_serves_once(keypair):
    """Two batches: two different nonces, each used by exactly one encryption; after them, fresh
    OS nonces. Equal plaintexts never share a random factor."""
    pk, sk = keypair
    ck = CoinKey(sk)
    ms = [42] * 5
    first, second = ck.precompute(5, batches=2)
    assert first != second
    nonces = [ck.encrypt_ints(ms)[0] for _ in range(3)]
    assert nonces[:2] == [first, second] and nonces[2] not in (first, second)
    assert ck.pooled(5) == 0
    assert len({c for nonce in nonces for c in ck._encrypt_under(nonce, ms)}) == 15
    # a batch of another size is not taken
    ck.precompute(4)
    assert ck.encrypt_ints(ms)[0] != ck.precompute(4)[0] and ck.pooled(4) == 2


def test_the_pool_is_bounded(keypair, monkeypatch):
    _, sk = keypair
    ck = CoinKey(sk)
    monkeypatch.setattr(coins_module, "MAX_POOLED_CIPHERTEXTS", 10)
    ck.precompute(4, batches=2)
    with pytest.raises(MemoryError, match="holds 8 factors; 4 more would pass its bound of 10"):
        ck.precompute(4)
    ck.encrypt_ints([1, 2, 3, 4])
    ck.precompute(2)  # room again once one batch is used
    assert ck.pooled(4) == 1 and ck.pooled(2) == 1
    with pytest.raises(ValueError, match="positive integers"):
        ck.precompute(0)


def test_a_forked_copy_of_the_pool_is_never_used(keypair, monkeypatch):
    """A process forked after the pool was filled holds a copy of it; using it would encrypt with
    the same factors as the parent. The copy is dropped: the encryption draws its own nonce."""
    _, sk = keypair
    ck = CoinKey(sk)
    (nonce,) = ck.precompute(3)
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as a forked child sees it: another process id
    assert ck.encrypt_ints([1, 2, 3])[0] != nonce
    assert ck.pooled(3) == 0


def test_precomputed_strip_decrypts_the_aggregate(keypair):
    """The inverse factors prepared from the sites' nonces decrypt their weighted average, equal to
    plaintext FedAvg; a tampered ciphertext does not strip, and a strict decryption refuses it."""
    pk, sk = keypair
    ck = CoinKey(sk)
    states, weights = _states(), [100, 137, 174]
    count = SecureStateDict.num_ciphertexts_for(states[0], pk)
    nonces = ck.precompute(count, batches=3)
    uploads = [SecureStateDict.encrypt(s, pk, weight=w, coins=ck) for s, w in zip(states, weights)]
    assert [u.num_ciphertexts for u in uploads] == [count] * 3
    assert [u.coins[0][0] for u in uploads] == nonces
    average = SecureStateDict.weighted_average(uploads)
    assert sorted(average.coins) == sorted((n, 1) for n in nonces)
    ck.precompute_strip([(n, 1) for n in reversed(nonces)], count)  # any order names the same list
    sk._coins = ck  # the private key's coin key is the one holding the prepared inverses
    try:
        got = average.decrypt(sk, coins=[(n, 1) for n in nonces])
    finally:
        sk._coins = None
    total = sum(weights)
    for k in states[0]:
        want = sum(w * s[k].to(torch.float64) for w, s in zip(weights, states)) / total
        assert torch.allclose(got[k].to(torch.float64), want, atol=1e-6)
    cts = list(average._cts)
    assert ck.strip(cts, list(average.coins)) == sk.decrypt_raw_many(cts)
    cts[1] = cts[1] * (1 + pk.n) % pk.nsquare  # a plaintext offset: still strips, to the shifted value
    assert ck.strip(cts, list(average.coins))[1] == (sk.decrypt_raw_many(cts[1:2])[0])
    cts[2] = cts[2] * gmpy2.powmod(2, pk.n, pk.nsquare) % pk.nsquare  # another random factor
    assert ck.strip(cts, list(average.coins)) is None
    with pytest.raises(ValueError, match="not made of the coins"):
        sk.decrypt_raw_many(cts, coins=list(average.coins), strict=True)
