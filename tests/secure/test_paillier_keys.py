import json
import os
import pickle
import secrets
import stat

import gmpy2
import pytest

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import (
    InsecureKeyWarning,
    PrivateKey,
    PublicKey,
    generate_keypair,
    load_private_key,
    load_public_key,
)
from torchhefl.secure._parallel import map_chunks, powmod_lists
from torchhefl.secure.keys import MIN_COIN_BITS, coin_bits

pytestmark = pytest.mark.filterwarnings("ignore::torchhefl.secure.keys.InsecureKeyWarning")


def test_small_keys_need_explicit_opt_in():
    with pytest.raises(ValueError, match="insecure.*allow_insecure=True"):
        generate_keypair(512)
    with pytest.warns(InsecureKeyWarning, match="insecure 512-bit"):
        pk, sk = generate_keypair(512, allow_insecure=True)
    assert pk.bits == 512 and sk.public_key == pk
    with pytest.raises(ValueError, match="too small"):
        generate_keypair(128, allow_insecure=True)


@pytest.mark.parametrize("bits", [512, 514, 768])
def test_generated_primes_fill_exactly_the_asked_size(bits):
    for _ in range(3):
        pk, sk = generate_keypair(bits, allow_insecure=True)
        p, q = int(sk._p), int(sk._q)
        assert pk.bits == bits == int(pk.n).bit_length() and p * q == int(pk.n)
        assert sorted([p.bit_length(), q.bit_length()]) == sorted([bits // 2, bits - bits // 2])
        for prime in (p, q):
            assert gmpy2.is_prime(prime, 50)
            assert prime >> (prime.bit_length() - 2) == 0b11  # two top bits set: n never falls a bit short
        assert abs(p - q).bit_length() > bits // 2 - 100


def test_fingerprint_is_sha256_of_n_and_stable(keypair):
    pk, _ = keypair
    import hashlib

    assert pk.fingerprint == hashlib.sha256(int(pk.n).to_bytes(64, "big")).hexdigest()
    assert PublicKey(int(pk.n)).fingerprint == pk.fingerprint
    assert pickle.loads(pickle.dumps(pk)) == pk


def test_repr_never_shows_private_parts(keypair):
    pk, sk = keypair
    for text in (repr(pk), str(pk), repr(sk), str(sk)):
        assert str(int(sk._p)) not in text and format(int(sk._p), "x") not in text
    assert pk.fingerprint[:16] in repr(sk)


def test_private_key_cannot_be_pickled(keypair):
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keypair[1])


def test_save_load_roundtrip_and_permissions(keypair, tmp_path):
    pk, sk = keypair
    pub, priv = tmp_path / "public.json", tmp_path / "private.json"
    priv.write_text("old")
    os.chmod(priv, 0o644)
    pk.save(pub)
    sk.save(priv)
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o644
    d = json.loads(pub.read_text())
    assert set(d) == {"kind", "version", "bits", "n"}
    assert set(json.loads(priv.read_text())) == {"kind", "version", "bits", "n", "p", "q"}
    with pytest.raises(ValueError, match="insecure"):
        load_public_key(pub)
    pk2 = load_public_key(pub, allow_insecure=True)
    sk2 = load_private_key(priv, allow_insecure=True)
    assert pk2 == pk and sk2.public_key == pk
    c = pk.encrypt_int(-12345)
    assert sk2.decrypt_int(c) == -12345


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(p=format(int(d["p"], 16) + 2, "x")), "p \\* q does not equal n"),
        (lambda d: d.update(kind="something"), "unknown 'kind'"),
        (lambda d: d.update(version=99), "unsupported key file version"),
        (lambda d: d.update(bits=1024), "'bits' does not match"),
        (lambda d: d.update(n="zz"), "not valid hexadecimal"),
        (lambda d: d.pop("q"), "'q' must be a hexadecimal string"),
    ],
)
def test_load_private_key_rejects_bad_files(keypair, tmp_path, mutate, message):
    path = tmp_path / "private.json"
    keypair[1].save(path)
    d = json.loads(path.read_text())
    mutate(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        load_private_key(path, allow_insecure=True)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=True), "unsupported key file version True"),
        (lambda d: d.update(version=1.0), "unsupported key file version 1.0"),
        (lambda d: d.update(n="0x" + d["n"]), "field 'n' is not valid hexadecimal"),
        (lambda d: d.update(p=d["p"][:4] + "_" + d["p"][4:]), "field 'p' is not valid hexadecimal"),
        (lambda d: d.update(q="f" * 4097), "at most 4096 digits"),
    ],
)
def test_key_files_are_read_strictly(keypair, tmp_path, mutate, message):
    """``int(v, 16)`` took ``0x``, ``_`` and spaces; ``True == 1`` passed as the version."""
    path = tmp_path / "private.json"
    keypair[1].save(path)
    d = json.loads(path.read_text())
    mutate(d)
    path.write_text(json.dumps(d))
    with pytest.raises(MalformedMessageError, match=message):
        load_private_key(path, allow_insecure=True)


def test_key_file_json_rules_and_size(keypair, tmp_path):
    path = tmp_path / "public.json"
    keypair[0].save(path)
    text = path.read_text()
    for bad, message in [
        (text.replace('"version": 1', '"version": 1, "version": 1'), "key 'version' appears twice"),
        (text.replace('"version": 1', '"version": NaN'), "NaN is not a number"),
        (text.replace('"version": 1', '"version": ' + "9" * 5000), "an integer of 5000 digits"),
        (text + " " * (1 << 20), "larger than 1048576 bytes"),
    ]:
        path.write_text(bad)
        with pytest.raises(MalformedMessageError, match=message):
            load_public_key(path, allow_insecure=True)


def test_load_rejects_wrong_kind_and_garbage(keypair, tmp_path):
    pk, sk = keypair
    sk.save(tmp_path / "priv.json")
    pk.save(tmp_path / "pub.json")
    with pytest.raises(ValueError, match="this is a private key file"):
        load_public_key(tmp_path / "priv.json", allow_insecure=True)
    with pytest.raises(ValueError, match="this is a public key file"):
        load_private_key(tmp_path / "pub.json", allow_insecure=True)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MalformedMessageError, match="not valid JSON"):
        load_public_key(tmp_path / "bad.json")


def test_raw_layer_matches_plaintext_and_phe(keypair):
    pk, sk = keypair
    a, b = 123456789, -987654321
    ca, cb = pk.encrypt_int(a), pk.encrypt_int(b)
    assert ca != pk.encrypt_int(a)  # randomised
    assert sk.decrypt_int(pk.raw_add(ca, cb)) == a + b
    assert sk.decrypt_int(pk.raw_mul(ca, -7)) == -7 * a
    assert sk.decrypt_int(pk.raw_mul(ca, 0)) == 0
    assert sk.decrypt_int(pk.raw_add_plain(ca, -5)) == a - 5
    assert sk.decrypt_int(pk.rerandomize_int(cb)) == b
    # interoperable with phe's private key (same g = n + 1)
    assert sk.phe.raw_decrypt(int(ca)) == a
    assert sk.decrypt_raw(pk.phe.raw_encrypt(42)) == 42


def test_guard_band_raises_overflow(keypair):
    pk, sk = keypair
    big = 1 << pk.max_bits
    assert sk.decrypt_int(pk.encrypt_int(big - 1)) == big - 1
    assert sk.decrypt_int(pk.encrypt_int(-(big - 1))) == -(big - 1)
    with pytest.raises(OverflowError, match="outside the safe range"):
        sk.decrypt_int(pk.encrypt_int(big))
    with pytest.raises(OverflowError, match="outside the safe range"):
        sk.decrypt_int(pk.encrypt_int(int(pk.n) // 2))


def test_private_key_checks_factors(keypair):
    pk, sk = keypair
    with pytest.raises(ValueError, match="product is the public key's n"):
        PrivateKey(pk, sk._p, sk._p)


def test_bulk_operations_in_worker_processes_match_serial(keypair):
    pk, sk = keypair
    ms = list(range(-50, 50))
    cts = map_chunks(lambda chunk: [pk.encrypt_int(m) for m in chunk], ms, seconds_per_item=1.0)
    assert len(set(cts)) == len(cts)  # workers draw independent randomness
    dec = map_chunks(lambda chunk: [sk.decrypt_int(c) for c in chunk], cts, seconds_per_item=1.0)
    assert dec == ms
    assert all(isinstance(c, gmpy2.mpz().__class__) for c in cts)


@pytest.mark.parametrize("workers", ["1", "2", "3"])
def test_threaded_powmods_match_pow_in_order(monkeypatch, workers):
    monkeypatch.setenv("TORCHHEFL_NUM_WORKERS", workers)
    mods = [gmpy2.mpz(2**127 - 1), gmpy2.mpz(2**89 - 1)]
    jobs = [(list(range(2, 9)), 65537, mods[0]), ([], 3, mods[1]), (list(range(100, 103)), 12345, mods[1])]
    out = powmod_lists(jobs, seconds_per_item=1.0)  # forced onto threads when workers > 1
    assert out == [[pow(b, e, int(m)) for b in bases] for bases, e, m in jobs]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_threaded_decryption_matches_phe(keypair, monkeypatch, workers):
    monkeypatch.setenv("TORCHHEFL_NUM_WORKERS", workers)
    pk, sk = keypair
    ms = list(range(-60, 60))
    cts = [pk.encrypt_int(m) for m in ms]
    assert [sk.phe.raw_decrypt(int(c)) for c in cts] == [m % int(pk.n) for m in ms]
    assert sk.decrypt_raw_many(cts) == [m % int(pk.n) for m in ms]
    assert sk.decrypt_ints(cts) == ms == sk.decrypt_ints(cts, bound_bits=16)


@pytest.mark.parametrize("window", [1, 3, 5, 8])
def test_fixed_base_table_matches_pow_at_every_window(window):
    from torchhefl.secure._fastmath import FixedBaseTable

    modulus, base = gmpy2.mpz(2**521 - 1), 3**50
    table = FixedBaseTable(base, modulus, 70, window=window)
    for e in (0, 1, 2**70 - 1, 0x2F_0123_4567_89AB_CDEF, 2**(window * 3)):
        assert table.pow(e) == pow(base, e, int(modulus))


def test_keys_switch_to_the_wide_randomness_table_after_heavy_use(keypair):
    pk = PublicKey(int(keypair[0].n))  # a fresh key object: no table yet
    _, sk = keypair
    assert sk.decrypt_ints([pk.encrypt_int(5)]) == [5]
    assert pk._djn.windows == {5}
    cts = pk.encrypt_ints(range(600))
    assert pk._djn.windows == {5, 8}
    assert sk.decrypt_ints(cts) == list(range(600)) and sk.decrypt_ints(pk.rerandomize_ints(cts[:3])) == [0, 1, 2]


@pytest.mark.parametrize(
    "n_bits, expected", [(512, 256), (1024, 256), (2048, 256), (3072, 256), (4096, 256), (7680, 384), (15360, 512)]
)
def test_djn_exponents_are_at_least_256_bits_as_the_docstring_says(n_bits, expected):
    assert coin_bits(n_bits) == expected >= MIN_COIN_BITS == 256


def test_encryption_draws_exponents_of_coin_bits(monkeypatch):
    # the random factor h_s^a of a 2048-bit key's ciphertexts has a 256-bit a: watch what is drawn
    pk, sk = generate_keypair(2048)
    drawn = []
    real = secrets.randbits

    def recording(k: int) -> int:
        drawn.append(k)
        return real(k)

    monkeypatch.setattr(secrets, "randbits", recording)
    cts = [pk.encrypt_int(-7), *pk.encrypt_ints([1, 2, 3]), *pk.rerandomize_ints([pk.encrypt_int(9, obfuscate=False)])]
    monkeypatch.undo()
    assert drawn == [256] * 5 and pk._djn.for_count(1).exp_bits == 256
    assert sk.decrypt_ints(cts) == [-7, 1, 2, 3, 9]
    # the coins derived from the private key have the same width
    exps = sk.coins().exponents(bytes(16), 64)
    assert max(a.bit_length() for a in exps) == 256
