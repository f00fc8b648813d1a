"""Random factors drawn ahead on a second core: encryptions that use them decrypt to the same values
as encryptions that draw their own, every factor is an n-th residue, and none serves twice."""

import time

import gmpy2
import pytest

from torchhefl.secure import PublicKey
from torchhefl.secure import randomness
from torchhefl.secure.randomness import BATCH, HELPER, POOL_TARGET, START_AFTER

pytestmark = [
    pytest.mark.filterwarnings("ignore::torchhefl.secure.keys.InsecureKeyWarning"),
    pytest.mark.skipif(not HELPER.usable(), reason="no helper process on this machine (one core or no fork)"),
]


def _filled(pk: PublicKey, count: int) -> int:
    """Encrypt enough under ``pk`` to start its pool, then wait (at most 30 s) for ``count`` factors."""
    pk.encrypt_ints(range(START_AFTER))
    deadline = time.monotonic() + 30
    while len(pk._pool) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(pk._pool)


def _factors(pk: PublicKey, cts, ms):
    """The random factor of each ciphertext: ``c / (1 + m n) mod n^2``."""
    n, n2 = pk.n, pk.nsquare
    return [int(c * gmpy2.invert(1 + (m % n) * n, n2) % n2) for c, m in zip(cts, ms)]


def test_pooled_encryptions_decrypt_and_their_factors_are_nth_residues(keypair):
    pk, sk = PublicKey(int(keypair[0].n)), keypair[1]
    assert _filled(pk, 2 * BATCH) >= 2 * BATCH
    ready = len(pk._pool)
    ms = [0, 1, -5, 2**200 + 7] * 25
    cts = pk.encrypt_ints(ms)
    assert len(pk._pool) < ready  # the factors came from the pool
    assert sk.decrypt_ints(cts) == ms
    # h_s^a with h_s = h^n: every factor is an n-th residue, so f^lambda = 1 mod n^2
    lam = (sk.p - 1) * (sk.q - 1)
    assert all(pow(f, int(lam), int(pk.nsquare)) == 1 for f in _factors(pk, cts, ms))
    # and re-randomisation from the pool keeps the plaintexts
    assert sk.decrypt_ints(pk.rerandomize_ints(cts[:10])) == ms[:10]
    assert sk.decrypt_int(pk.encrypt_int(42)) == 42


def test_no_factor_serves_twice(keypair):
    pk = PublicKey(int(keypair[0].n))
    _filled(pk, 2 * START_AFTER)
    ms = [7] * 3000  # equal plaintexts: equal factors would show as equal ciphertexts
    cts = pk.encrypt_ints(ms[:1500]) + pk.rerandomize_ints([pk.encrypt_int(7, obfuscate=False)] * 1500)
    assert len(set(cts)) == len(cts)
    assert len(set(_factors(pk, cts, ms))) == len(cts)


def test_the_pool_keeps_two_takes_ready_within_its_bound(keypair):
    pk = PublicKey(int(keypair[0].n))
    _filled(pk, 2 * START_AFTER)
    assert len(pk._pool) + pk._pool.asked == 2 * START_AFTER  # two takes as large as the largest
    pk.encrypt_ints(range(3 * POOL_TARGET))  # a take larger than the bound
    for _ in range(5):
        pk.encrypt_ints(range(100))
        assert len(pk._pool) + pk._pool.asked <= POOL_TARGET


def test_two_pools_of_one_key_draw_different_factors(keypair):
    """The exponents come from the helper's OS randomness, not from anything two runs share."""
    a, b = PublicKey(int(keypair[0].n)), PublicKey(int(keypair[0].n))
    _filled(a, BATCH)
    _filled(b, BATCH)
    fa, fb = set(a._pool.take(BATCH)), set(b._pool.take(BATCH))
    assert len(fa) == len(fb) == BATCH and not fa & fb


def test_a_forked_copy_drops_the_pool(keypair, monkeypatch):
    pk, sk = PublicKey(int(keypair[0].n)), keypair[1]
    assert _filled(pk, BATCH) >= BATCH
    real = randomness.os.getpid()
    monkeypatch.setattr(randomness.os, "getpid", lambda: real + 1)  # as seen from a forked child
    assert len(pk._pool) == 0 and pk._pool.take(10) == []
    cts = pk.encrypt_ints([1, 2, 3])  # the copy draws its own factors
    monkeypatch.undo()
    assert sk.decrypt_ints(cts) == [1, 2, 3]


def test_without_a_helper_encryption_draws_its_own_factors(keypair, monkeypatch):
    pk, sk = PublicKey(int(keypair[0].n)), keypair[1]
    monkeypatch.setattr(HELPER, "submit", lambda job: False)
    cts = pk.encrypt_ints(range(START_AFTER + 10))
    assert len(pk._pool) == 0 and pk._pool.asked == 0
    assert sk.decrypt_ints(cts) == list(range(START_AFTER + 10))
