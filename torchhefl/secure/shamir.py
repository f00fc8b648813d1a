"""Shamir secret sharing of byte strings, over pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir``.

pycryptodome shares 16-byte secrets over GF(2^128); a longer secret (a 32-byte X25519 private key)
is cut into 16-byte blocks, each shared with the same indices. Any ``threshold`` shares give the
secret back; fewer give no information about it. Shares carry no integrity: a caller that
reconstructs checks the result against a commitment (a public key, a hash) it trusts.
"""

from __future__ import annotations

from collections.abc import Mapping

from Crypto.Protocol.SecretSharing import Shamir

__all__ = ["BLOCK_BYTES", "combine_secret", "split_secret"]

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
