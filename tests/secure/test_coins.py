"""Coins derived from the private key: the fast decryption of sums must equal the usual one."""

import pickle
import random
from collections import OrderedDict

import gmpy2
import numpy as np
import pytest
import torch

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError
from torchhefl.secure import PackedSum, PrivateKey, PublicKey, SecureStateDict, wire
from torchhefl.secure.coins import MAX_COIN_TERMS, NONCE_BYTES, CoinKey, _nth_power, coins_from_wire, coins_to_wire, combine_coins

pytestmark = pytest.mark.filterwarnings("ignore::torchhefl.secure.keys.InsecureKeyWarning")


def _states(k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        OrderedDict(weight=torch.randn(1, 30, generator=g), bias=torch.randn(1, generator=g), steps=torch.tensor(7 + i))
        for i in range(k)
    ]


def _plain_fedavg(states, weights):
    total = sum(weights)
    return {k: sum(w * s[k].to(torch.float64) for w, s in zip(weights, states)) / total for k in states[0]}


def test_nth_power_by_crt_matches_powmod(keypair):
    pk, sk = keypair
    rng = random.Random(1)
    for _ in range(5):
        h = gmpy2.mpz(rng.randrange(2, int(pk.n)))
        assert _nth_power(h, sk) == gmpy2.powmod(h, pk.n, pk.nsquare)


def test_a_sum_of_coin_encryptions_decrypts_by_stripping_the_coins(keypair):
    pk, sk = keypair
    states, counts = _states(), [120, 45, 301]
    encs = [SecureStateDict.encrypt(s, pk, weight=c, weight_bound=1000, coins=sk.coins()) for s, c in zip(states, counts)]
    agg = SecureStateDict.from_bytes(SecureStateDict.weighted_average(encs).to_bytes(), public_key=pk)
    stripped = sk.coins().strip(agg._cts, agg._coins)
    assert stripped is not None and stripped == sk.decrypt_raw_many(agg._cts)
    out, ref = agg.decrypt(sk), _plain_fedavg(states, counts)
    for k in ("weight", "bias"):
        assert float((out[k].to(torch.float64) - ref[k]).abs().max()) < 1e-6
    assert int(out["steps"]) == round(float(ref["steps"]))
    assert agg.decrypt_weight(sk) == sum(counts)


def test_server_chosen_weights_scale_the_coins(keypair):
    pk, sk = keypair
    states, weights = _states(seed=1), [3, 0, 11]
    encs = [SecureStateDict.encrypt(s, pk, coins=sk.coins()) for s in states]
    agg = SecureStateDict.weighted_average(encs, weights=weights)
    assert [w for _, w in agg._coins] == [3, 11]
    assert sk.coins().strip(agg._cts, agg._coins) == sk.decrypt_raw_many(agg._cts)
    ref = _plain_fedavg(states, weights)
    assert float((agg.decrypt(sk)["weight"].to(torch.float64) - ref["weight"]).abs().max()) < 1e-6


def test_another_holder_of_the_key_derives_the_same_coins(keypair):
    pk, sk = keypair
    twin = PrivateKey(PublicKey(int(pk.n)), int(sk._p), int(sk._q))
    enc = SecureStateDict.encrypt(_states(1)[0], pk, coins=sk.coins())
    agg = SecureStateDict.weighted_average([enc, enc])
    assert twin.coins() is not sk.coins()
    assert twin.coins().strip(agg._cts, agg._coins) == sk.decrypt_raw_many(agg._cts)


def test_wrong_or_missing_coins_fall_back_to_full_decryption(keypair):
    pk, sk = keypair
    states = _states(seed=2)
    encs = [SecureStateDict.encrypt(s, pk, coins=sk.coins()) for s in states]
    agg = SecureStateDict.weighted_average(encs)
    expected = agg.decrypt(sk)
    nonce, w = agg._coins[0]
    for bad in (agg._coins[1:], [(bytes(NONCE_BYTES), w)] + agg._coins[1:], [(nonce, w + 1)] + agg._coins[1:]):
        assert sk.coins().strip(agg._cts, bad) is None
        forged = SecureStateDict(pk, agg._entries, agg._cts, agg.weight_bound, bad)
        out = forged.decrypt(sk)
        assert all(torch.equal(out[k], expected[k]) for k in expected)
    # one state dict without coins: the sum's coins are unknown, decryption takes the usual path
    mixed = SecureStateDict.weighted_average(encs[:2] + [SecureStateDict.encrypt(states[2], pk)])
    assert mixed._coins is None and "coins" not in mixed.to_bytes().decode("latin-1")
    assert all(torch.equal(mixed.decrypt(sk)[k], expected[k]) for k in expected)
    assert agg.rerandomize()._coins is None


def test_a_strict_decryption_refuses_what_the_coins_do_not_name(keypair):
    """``decrypt(coins=...)``: the header must name exactly those terms and the ciphertexts must strip
    over them; where the usual decryption falls back, this raises."""
    pk, sk = keypair
    states = _states(seed=5)
    encs = [SecureStateDict.encrypt(s, pk, weight=3, coins=sk.coins()) for s in states]
    agg = SecureStateDict.weighted_average(encs)
    expected = agg.decrypt(sk)
    exact = [(nonce, 1) for nonce, _ in reversed(agg.coins)]  # in any order
    out = agg.decrypt(sk, coins=exact)
    assert all(torch.equal(out[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match="the header names a coin list of 3 terms, not exactly the 2 terms expected"):
        agg.decrypt(sk, coins=exact[:2])
    with pytest.raises(ValueError, match="not exactly the 3 terms expected"):
        agg.decrypt(sk, coins=[(n, 2) for n, _ in exact])
    # ciphertexts that are not made of the coins their header names: no fallback
    fresh = SecureStateDict.encrypt(states[0], pk, weight=3, weight_bound=agg.weight_bound)
    msg = wire.decode(fresh.to_bytes())
    claimed = SecureStateDict.from_bytes(wire.encode(msg.kind, {**msg.meta, "coins": coins_to_wire(agg.coins)}, msg.arrays), public_key=pk)
    # (the usual decryption falls back and reads it)
    assert claimed.coins == agg.coins and float((claimed.decrypt(sk)["weight"] - states[0]["weight"]).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="the ciphertexts are not made of the coins their coin list names"):
        claimed.decrypt(sk, coins=exact)
    public = SecureStateDict.encrypt(states[0], pk, public=True)
    assert public.coins == [] and torch.equal(public.decrypt(sk, coins=[])["bias"], public.decrypt(sk)["bias"])
    with pytest.raises(ValueError, match="needs the coin list"):
        sk.decrypt_raw_many(agg._cts, strict=True)


def test_every_encryption_draws_fresh_coins(keypair):
    pk, sk = keypair
    state = _states(1)[0]
    a, b = (SecureStateDict.encrypt(state, pk, coins=sk.coins()) for _ in range(2))
    assert a._coins[0][0] != b._coins[0][0] and a._cts != b._cts
    exps = sk.coins().exponents(a._coins[0][0], 4)
    assert len(set(exps)) == 4
    # without the key the ciphertexts are not of the trivial form 1 + m n
    assert all(c % pk.n != 1 for c in a._cts)


def test_public_encryption_has_no_random_factor(keypair):
    pk, sk = keypair
    state = _states(1)[0]
    enc = SecureStateDict.encrypt(state, pk, public=True)
    assert enc._coins == [] and all(c % pk.n == 1 for c in enc._cts)
    back = SecureStateDict.from_bytes(enc.to_bytes(), public_key=pk)
    assert back._coins == []
    out = back.decrypt(sk)
    assert float((out["weight"] - state["weight"]).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="either public or uses coins"):
        SecureStateDict.encrypt(state, pk, public=True, coins=sk.coins())


def test_coins_must_belong_to_the_key(keypair, other_keypair):
    pk, sk = keypair
    with pytest.raises(KeyMismatchError):
        SecureStateDict.encrypt(_states(1)[0], pk, coins=other_keypair[1].coins())
    with pytest.raises(KeyMismatchError):
        PackedSum.encrypt([1.0], pk, coins=other_keypair[1].coins())
    with pytest.raises(TypeError, match="CoinKey"):
        SecureStateDict.encrypt(_states(1)[0], pk, coins=sk)


def test_packed_sums_with_coins_decrypt_by_stripping(keypair):
    pk, sk = keypair
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=61) * 1e6 for _ in range(3)]
    parts = [PackedSum.from_bytes(PackedSum.encrypt(v, pk, coins=sk.coins()).to_bytes(), public_key=pk) for v in vectors]
    total = parts[0] + parts[1] + parts[2]
    assert len(total._coins) == 3
    assert sk.coins().strip(total._cts, total._coins) == sk.decrypt_raw_many(total._cts)
    np.testing.assert_allclose(total.decrypt(sk), sum(vectors), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "raw",
    [
        "x", [["00" * NONCE_BYTES]], [["zz" * NONCE_BYTES, 1]], [["AB" * NONCE_BYTES, 1]], [["00" * (NONCE_BYTES - 1), 1]],
        [["00" * NONCE_BYTES, 0]], [["00" * NONCE_BYTES, True]], [["00" * NONCE_BYTES, 2**33]], [["00" * NONCE_BYTES, 1.0]],
        [["00" * NONCE_BYTES, 1]] * (MAX_COIN_TERMS + 1),
    ],
)
def test_coin_lists_on_the_wire_are_checked(raw):
    with pytest.raises(MalformedMessageError):
        coins_from_wire(raw)


def test_bad_coins_in_a_message_are_a_malformed_message(keypair):
    pk, sk = keypair
    enc = SecureStateDict.encrypt(_states(1)[0], pk, coins=sk.coins())
    blob = enc.to_bytes()
    nonce_hex = enc._coins[0][0].hex()
    with pytest.raises(MalformedMessageError):
        SecureStateDict.from_bytes(blob.replace(nonce_hex.encode(), b"q" * len(nonce_hex)), public_key=pk)


def test_the_coin_secret_is_never_serialised(keypair, tmp_path):
    pk, sk = keypair
    ck = sk.coins()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ck)
    assert ck._secret.hex() not in repr(ck)
    enc = SecureStateDict.encrypt(_states(1)[0], pk, coins=ck)
    blob = enc.to_bytes() + PackedSum.encrypt([1.0, 2.0], pk, coins=ck).to_bytes()
    assert ck._secret not in blob and ck._secret.hex().encode() not in blob
    assert isinstance(ck, CoinKey)


def test_weights_beyond_the_table_range_still_strip(keypair):
    pk, sk = keypair
    states, weights = _states(seed=3), [2**20, 2**20 + 5, 7]
    encs = [SecureStateDict.encrypt(s, pk, coins=sk.coins()) for s in states]
    agg = SecureStateDict.weighted_average(encs, weights=weights)
    assert sum(w for _, w in agg._coins) > 2**16  # the summed coin exponent exceeds the table
    assert sk.coins().strip(agg._cts, agg._coins) == sk.decrypt_raw_many(agg._cts)
    ref = _plain_fedavg(states, weights)
    assert float((agg.decrypt(sk)["weight"].to(torch.float64) - ref["weight"]).abs().max()) < 1e-6


def test_coin_lists_that_would_not_fit_on_the_wire_become_unknown():
    term = [(bytes(NONCE_BYTES), 1)]
    assert combine_coins([(term, 2), (term, 3)]) == [(bytes(NONCE_BYTES), 2), (bytes(NONCE_BYTES), 3)]
    assert combine_coins([(term, 1), (None, 1)]) is None
    assert combine_coins([(term, 1)] * MAX_COIN_TERMS) is not None
    assert combine_coins([(term, 1)] * (MAX_COIN_TERMS + 1)) is None
    assert combine_coins([(term, 2**33)]) is None
