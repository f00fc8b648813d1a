"""Coin reuse: two plaintexts encrypted under one nonce would show anyone their difference.

With ``--key-holder clients`` every site holds the key pair, so every site's ``CoinKey`` draws the
same coins for the same nonce, and the nonces travel in the clear. Were one nonce used twice (by a
site in two rounds, or by two sites), the server would divide the two ciphertexts: the random
factors cancel and ``1 + (m1 - m2) n`` is left, the difference in the clear. The attack is run on
the module's private primitive (it works there), then on every public way to encrypt with coins
(it fails: no public API takes a nonce, and no two encryptions share one).
"""

import inspect
import warnings
from collections import OrderedDict
from itertools import combinations

import gmpy2
import pytest
import torch

import torchhefl.secure as secure
from torchhefl.secure import InsecureKeyWarning, PackedSum, PrivateKey, PublicKey, SecureStateDict, generate_keypair
from torchhefl.secure.coins import NONCE_BYTES, CoinKey


@pytest.fixture(scope="module")
def keypair():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(512, allow_insecure=True)


def _difference_attack(pk: PublicKey, c1, c2) -> int | None:
    """What the server recovers from two ciphertexts with only the public ``n``: ``m1 - m2`` (mod n)
    if they share their random factor, else ``None``."""
    q = gmpy2.mpz(c1) * gmpy2.invert(gmpy2.mpz(c2), pk.nsquare) % pk.nsquare
    d, rest = gmpy2.f_divmod(q - 1, pk.n)
    return int(d) if rest == 0 else None


def _state(seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(weight=torch.randn(1, 30, generator=g), bias=torch.randn(1, generator=g))


def _signed(pk: PublicKey, d: int) -> int:
    return d - int(pk.n) if d > pk.n // 2 else d


def test_reused_coins_give_the_server_the_difference(keypair):
    # the attack works when coins repeat: this is what the public API must never allow
    pk, sk = keypair
    ck = sk.coins()
    nonce = bytes(range(NONCE_BYTES))
    m1, m2 = [123456789, -42, 7], [123000000, 58, 7]
    c1, c2 = ck._encrypt_under(nonce, m1), ck._encrypt_under(nonce, m2)
    assert all(c % pk.n != 1 for c in c1 + c2)  # each ciphertext alone looks random
    assert [_signed(pk, _difference_attack(pk, a, b)) for a, b in zip(c1, c2)] == [456789, -100, 0]


def test_no_public_way_to_encrypt_takes_a_nonce(keypair):
    pk, sk = keypair
    ck, nonce = sk.coins(), bytes(NONCE_BYTES)
    with pytest.raises(TypeError, match="positional argument"):
        ck.encrypt_ints([1, 2], nonce)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonce'"):
        ck.encrypt_ints([1, 2], nonce=nonce)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonce'"):
        SecureStateDict.encrypt(_state(), pk, coins=ck, nonce=nonce)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonce'"):
        PackedSum.encrypt([1.0, 2.0], pk, coins=ck, nonce=nonce)
    # every public encrypting callable of torchhefl.secure, looked up by name: none has a nonce or
    # coin-exponent parameter (CoinKey.exponents takes a nonce, but encrypts nothing)
    found = []
    for owner in (CoinKey, PublicKey, PrivateKey, SecureStateDict, PackedSum, secure.EncryptedTensor):
        for name, fn in inspect.getmembers(owner, callable):
            if "crypt" in name and not name.startswith("_"):
                found.append(f"{owner.__name__}.{name}")
                assert not {"nonce", "nonces", "exponent", "r"} & set(inspect.signature(fn).parameters), found[-1]
    assert {"CoinKey.encrypt_ints", "SecureStateDict.encrypt", "PackedSum.encrypt", "PublicKey.encrypt_ints"} <= set(found)


def test_encryptions_through_the_public_api_never_share_coins(keypair):
    # two sites holding the key (two PrivateKey objects, hence two CoinKeys drawing the same coins for
    # the same nonce) encrypt the same plaintext again and again: every nonce and every ciphertext
    # differs, and the difference attack on every pair of them recovers nothing
    pk, sk = keypair
    twin = PrivateKey(PublicKey(int(pk.n)), int(sk._p), int(sk._q))
    state, vector, ints = _state(), [0.5, -1.25, 3.0], [5, 6, 7]
    nonces, cts = [], []
    for key in (sk, twin):
        for _ in range(8):
            nonce, c = key.coins().encrypt_ints(ints)
            nonces.append(nonce)
            cts.append(c)
            enc = SecureStateDict.encrypt(state, pk, weight=3, coins=key.coins())
            nonces += [n for n, _ in enc._coins]
            cts.append(enc._cts)
            packed = PackedSum.encrypt(vector, pk, coins=key.coins())
            nonces += [n for n, _ in packed._coins]
            cts.append(packed._cts)
    assert len(nonces) == 48 and len(set(nonces)) == 48 and all(len(n) == NONCE_BYTES for n in nonces)
    flat = [c for group in cts for c in group]
    assert len(set(flat)) == len(flat)
    same_plaintext = [cts[i] for i in range(0, len(cts), 3)]  # the encrypt_ints groups: all of [5, 6, 7]
    for a, b in combinations(same_plaintext, 2):
        assert all(_difference_attack(pk, x, y) is None for x, y in zip(a, b))
    # and each still decrypts to what was encrypted, by the usual decryption and by the coins
    assert sk.decrypt_ints(cts[0]) == ints
    assert sk.coins().strip(cts[-3], [(nonces[-3], 1)]) == ints
