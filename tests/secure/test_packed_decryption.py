"""Packed decryption: several bounded ciphertexts combined into one before decrypting, compared
with decrypting each one; values out of bound and random ciphertexts are refused."""

import random

import pytest

from torchhefl.secure import generate_keypair


@pytest.fixture(scope="module")
def keypair_2048():
    return generate_keypair(2048)


def _values(rng: random.Random, length: int, bound: int) -> list[int]:
    edge = [0, 1, -1, (1 << bound) - 1, -((1 << bound) - 1)]
    return [rng.choice(edge) if rng.random() < 0.3 else rng.randrange(-(1 << bound) + 1, 1 << bound) for _ in range(length)]


@pytest.mark.parametrize("length", [1, 2, 6, 7, 8, 13, 20])
@pytest.mark.parametrize("bound", [1, 16, 40])
def test_packed_equals_one_by_one_on_small_keys(keypair, length, bound):
    pk, sk = keypair
    ms = _values(random.Random(length * 100 + bound), length, bound)
    cts = pk.encrypt_ints(ms)
    assert sk.decrypt_ints(cts, bound_bits=bound, packed=False) == ms
    assert sk.decrypt_ints(cts, bound_bits=bound) == ms == sk.decrypt_ints(cts)


@pytest.mark.parametrize("length", [1, 7, 31, 32])
def test_packed_equals_one_by_one_at_the_server_key_sum_bound(keypair_2048, length):
    pk, sk = keypair_2048
    bound = 112  # upload scale 64 + value bits 16 + count bits 32: 7 values per decryption
    ms = _values(random.Random(length), length, bound)
    cts = pk.rerandomize_ints(pk.encrypt_ints(ms))
    assert sk.decrypt_ints(cts, bound_bits=bound) == ms == sk.decrypt_ints(cts, bound_bits=bound, packed=False)


@pytest.mark.parametrize("where", [0, 3, 6])
def test_a_value_just_beyond_the_bound_is_refused_in_any_slot(keypair, where):
    pk, sk = keypair
    ms = [5, -3, 0, 7, 1, 2, -9]
    for bad in (1 << 16, -(1 << 16), 1 << 17):  # inside the slot's guard bits: no carry, caught by the check
        cts = pk.encrypt_ints(ms[:where] + [bad] + ms[where + 1 :])
        with pytest.raises(OverflowError, match="exceeds the bound of 2\\^16"):
            sk.decrypt_ints(cts, bound_bits=16)


def test_random_ciphertexts_are_refused(keypair_2048):
    pk, sk = keypair_2048
    rng = random.Random(7)
    for _ in range(5):
        cts = [rng.randrange(1, int(pk.nsquare)) for _ in range(7)]
        with pytest.raises(OverflowError):
            sk.decrypt_ints(cts, bound_bits=112)


def test_packing_is_one_decryption_per_slot_group(keypair_2048, monkeypatch):
    from torchhefl.secure import private_key as module

    pk, sk = keypair_2048
    seen = []
    real = module._parallel.powmod_lists

    def counting(jobs, **kwargs):
        seen.append(sum(len(bases) for bases, _, _ in jobs))
        return real(jobs, **kwargs)

    monkeypatch.setattr(module._parallel, "powmod_lists", counting)
    ms = list(range(-15, 16))
    assert sk.decrypt_ints(pk.encrypt_ints(ms), bound_bits=112) == ms
    assert seen == [5]  # 31 values, 7 to a decryption
