import os

import pytest

from torchhefl.secure.shamir import combine_secret, split_secret


@pytest.mark.parametrize("length", [16, 32, 48])
def test_any_threshold_shares_rebuild_the_secret(length):
    secret = os.urandom(length)
    shares = split_secret(secret, 3, 5)
    assert sorted(shares) == [1, 2, 3, 4, 5] and all(len(s) == length for s in shares.values())
    for picked in ([1, 2, 3], [2, 4, 5], [1, 3, 5], [1, 2, 3, 4, 5]):
        assert combine_secret({i: shares[i] for i in picked}, length) == secret


def test_fewer_than_threshold_shares_do_not_rebuild_it():
    secret = os.urandom(32)
    shares = split_secret(secret, 3, 5)
    assert combine_secret({1: shares[1], 2: shares[2]}, 32) != secret


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="multiple of 16 bytes"):
        split_secret(b"short", 2, 3)
    with pytest.raises(ValueError, match="threshold 4 of 3"):
        split_secret(os.urandom(16), 4, 3)
    with pytest.raises(ValueError, match="every share of a 32-byte secret is 32 bytes"):
        combine_secret({1: os.urandom(16)}, 32)


def test_combine_checked_outvotes_bad_shares_and_names_them():
    from torchhefl.secure.shamir import combine_checked

    secret = os.urandom(32)
    shares = split_secret(secret, 3, 6)
    assert combine_checked(shares, 32, 3, lambda s: s == secret) == (secret, set())
    bad = dict(shares)
    for i in (2, 5):  # each altered by its own random error
        bad[i] = bytes(a ^ b for a, b in zip(bad[i], os.urandom(32)))
    assert combine_checked(bad, 32, 3, lambda s: s == secret) == (secret, {2, 5})
    for i in (1, 3):  # four bad of six: two good shares cannot rebuild it
        bad[i] = bytes(a ^ b for a, b in zip(bad[i], os.urandom(32)))
    assert combine_checked(bad, 32, 3, lambda s: s == secret) == (None, set())
    assert combine_checked({1: shares[1]}, 32, 3, lambda s: True) == (None, set())
    # a check blind to the first byte: the altered share rebuilds an accepted secret, nobody is named
    blind = {**shares, 1: bytes([shares[1][0] ^ 1]) + shares[1][1:]}
    got, named = combine_checked(blind, 32, 3, lambda s: s[1:] == secret[1:])
    assert got[1:] == secret[1:] and named <= {1}
