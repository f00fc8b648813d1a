"""Shamir secret sharing of byte strings, over pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir``.

pycryptodome shares 16-byte secrets over GF(2^128); a longer secret (a 32-byte X25519 private key)
is cut into 16-byte blocks, each shared with the same indices. Any ``threshold`` shares give the
secret back; fewer give no information about it. Shares carry no integrity: a caller that
reconstructs checks the result against a commitment (a public key, a hash) it trusts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import combinations

from Crypto.Protocol.SecretSharing import Shamir

__all__ = ["BLOCK_BYTES", "MAX_SUBSETS", "combine_checked", "combine_secret", "split_secret"]

MAX_SUBSETS = 20_000
"""The most threshold-sized subsets :func:`combine_checked` tries before it gives up."""

BLOCK_BYTES = 16
"""Shamir over GF(2^128): secrets and shares are whole multiples of 16 bytes."""


def split_secret(secret: bytes, threshold: int, count: int) -> dict[int, bytes]:
    """``count`` shares of ``secret`` (indices ``1..count``), any ``threshold`` of which recover it."""
    if not isinstance(secret, bytes) or not secret or len(secret) % BLOCK_BYTES:
        raise ValueError(f"a shared secret is a non-empty multiple of {BLOCK_BYTES} bytes")
    if not 1 <= threshold <= count <= 255:
        raise ValueError(f"need 1 <= threshold <= count <= 255, got threshold {threshold} of {count}")
    shares: dict[int, bytes] = {i: b"" for i in range(1, count + 1)}
    for start in range(0, len(secret), BLOCK_BYTES):
        for index, share in Shamir.split(threshold, count, secret[start : start + BLOCK_BYTES]):
            shares[index] += share
    return shares


def combine_secret(shares: Mapping[int, bytes], length: int) -> bytes:
    """The ``length``-byte secret from shares ``{index: share}`` (at least the threshold of them)."""
    if not shares or length % BLOCK_BYTES or any(len(s) != length for s in shares.values()):
        raise ValueError(f"every share of a {length}-byte secret is {length} bytes")
    if any(not 1 <= i <= 255 for i in shares):
        raise ValueError("share indices are in 1..255")
    out = b""
    for start in range(0, length, BLOCK_BYTES):
        out += Shamir.combine([(i, s[start : start + BLOCK_BYTES]) for i, s in sorted(shares.items())])
    return out


def combine_checked(
    shares: Mapping[int, bytes], length: int, threshold: int, check: Callable[[bytes], bool]
) -> tuple[bytes | None, set[int]]:
    """The secret that ``check`` accepts (its commitment) from ``shares``, and the indices of the
    shares that cannot be part of any accepted rebuilding: ``(secret, bad)``; ``(None, set())``
    when no ``threshold`` of the shares rebuild an accepted secret.

    All shares together first (the usual case: every share is good); then each threshold-sized
    subset until one rebuilds an accepted secret. A share is named bad only when no
    ``threshold - 1`` of the others rebuild an accepted secret with it: a good share is never named
    while ``threshold`` of the shares are good (a share altered in a way ``check`` cannot see, such
    as the clamped bits of an X25519 key, is not named either). At most :data:`MAX_SUBSETS`
    subsets are tried for the secret and for each share; beyond that nothing is named.
    """
    if len(shares) < threshold:
        return None, set()
    whole = combine_secret(shares, length)
    if check(whole):
        return whole, set()
    indices = sorted(shares)

    def accepted(subset) -> bytes | None:
        secret = combine_secret({i: shares[i] for i in subset}, length)
        return secret if check(secret) else None

    secret = None
    for tried, subset in enumerate(combinations(indices, threshold)):
        if tried >= MAX_SUBSETS:
            return None, set()
        secret = accepted(subset)
        if secret is not None:
            break
    if secret is None:
        return None, set()

    def supported(i: int) -> bool:
        others = [j for j in indices if j != i]
        for tried, rest in enumerate(combinations(others, threshold - 1)):
            if tried >= MAX_SUBSETS or accepted((i, *rest)) is not None:
                return True
        return False

    return secret, {i for i in indices if not supported(i)}
