"""Paillier key pairs: generation and loading, and the one import path of everything about keys.

The key classes are :class:`~torchhefl.secure.public_key.PublicKey` and
:class:`~torchhefl.secure.private_key.PrivateKey`; key files are JSON in the format of
:mod:`torchhefl.secure.key_files` (no pickle; a private key file is mode 0600 from its first
byte); key sizes and the DJN exponent size are in :mod:`torchhefl.secure.key_sizes`. All of them
are re-exported here.
"""

from __future__ import annotations

import os
import secrets

import gmpy2
from gmpy2 import mpz

from torchhefl.secure.key_files import (
    PRIVATE_KIND,
    PUBLIC_KIND,
    read_key_file,
    read_modulus,
    read_primes,
)
from torchhefl.secure.key_sizes import (
    DEFAULT_KEY_BITS,
    MIN_COIN_BITS,
    MIN_SECURE_KEY_BITS,
    InsecureKeyWarning,
    check_key_bits,
    coin_bits,
)
from torchhefl.secure.private_key import PrivateKey
from torchhefl.secure.public_key import GUARD_BITS, PublicKey

__all__ = [
    "DEFAULT_KEY_BITS",
    "GUARD_BITS",
    "MIN_COIN_BITS",
    "MIN_SECURE_KEY_BITS",
    "InsecureKeyWarning",
    "PrivateKey",
    "PublicKey",
    "coin_bits",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
]


def generate_keypair(bits: int = DEFAULT_KEY_BITS, *, allow_insecure: bool = False) -> tuple[PublicKey, PrivateKey]:
    """Generate a Paillier key pair with an ``n`` of ``bits`` bits.

    ``p`` and ``q`` are independent random primes of half the size each, with their two top bits
    set so that ``n`` always has exactly ``bits`` bits (one attempt, where drawing primes with only
    the top bit set needs 2.6 on average), and at least ``2^(bits/2 - 100)`` apart.

    Args:
        bits: modulus size; at least 2048 (the default; 3072 and 4096 are common choices).
        allow_insecure: permit fewer than 2048 bits (tests only); warns with :class:`InsecureKeyWarning`.
    """
    bits = check_key_bits(bits, allow_insecure)
    while True:
        p, q = _random_prime(bits // 2), _random_prime(bits - bits // 2)
        if abs(p - q).bit_length() > bits // 2 - 100 and (p * q).bit_length() == bits:
            break
    public_key = PublicKey(p * q)
    return public_key, PrivateKey(public_key, p, q)


def _random_prime(bits: int) -> mpz:
    """A random prime of exactly ``bits`` bits whose two top bits are set."""
    top = mpz(3) << (bits - 2)
    while True:
        p = gmpy2.next_prime(mpz(secrets.randbits(bits)) | top | 1)
        if p.bit_length() == bits:
            return p


def load_public_key(path: str | os.PathLike, *, allow_insecure: bool = False) -> PublicKey:
    """Read a public key file written by :meth:`PublicKey.save` and check it.

    Raises :class:`~torchhefl.exceptions.MalformedMessageError` (a ``ValueError``) with the reason
    for a file that is not a valid public key file, whatever its bytes; ``OSError`` if it cannot be read.
    """
    d = read_key_file(path, PUBLIC_KIND)
    return PublicKey(read_modulus(d, path, allow_insecure=allow_insecure))


def load_private_key(path: str | os.PathLike, *, allow_insecure: bool = False) -> PrivateKey:
    """Read a private key file written by :meth:`PrivateKey.save` and check it (``p * q == n``, primes).

    Raises :class:`~torchhefl.exceptions.MalformedMessageError` (a ``ValueError``) with the reason
    for a file that is not a valid private key file, whatever its bytes; ``OSError`` if it cannot be read.
    """
    d = read_key_file(path, PRIVATE_KIND)
    public_key = PublicKey(read_modulus(d, path, allow_insecure=allow_insecure))
    p, q = read_primes(d, path, public_key.n)
    return PrivateKey(public_key, p, q)
