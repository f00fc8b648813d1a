"""The Paillier public key: encryption, re-randomisation and the raw ciphertext operations.

The scheme is Paillier's with ``g = n + 1`` (so ``g^m = 1 + m n mod n^2``) and Damgård-Jurik-Nielsen
short-exponent randomness: the public key fixes ``h_s = h^n mod n^2`` for a random ``h = -x^2 mod n``
and the random factor of a ciphertext is ``h_s^a`` for a fresh ``a`` of
:func:`~torchhefl.secure.key_sizes.coin_bits` bits (256 for a 2048-bit key), computed from a
fixed-base table cached on the key. Ciphertexts are plain ``gmpy2.mpz`` integers and are
decryptable by ``phe``'s private key too (``public_key.phe`` gives the matching ``phe`` object).
Import it from :mod:`torchhefl.secure` or :mod:`torchhefl.secure.keys`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections.abc import Sequence

import gmpy2
import phe
from gmpy2 import mpz

from torchhefl.secure import _parallel
from torchhefl.secure._fastmath import AdaptiveFixedBase
from torchhefl.secure.randomness import FactorPool
from torchhefl.secure.key_files import public_dict, write_key_file
from torchhefl.secure.key_sizes import coin_bits, work_factor

__all__ = ["GUARD_BITS", "PublicKey"]

GUARD_BITS = 8
"""Signed plaintexts must satisfy ``|m| < 2^(n_bits - GUARD_BITS)``; the rest of ``[0, n)`` is a
band that no valid result can land in, so an overflow shows up on decryption instead of wrapping."""

_ENCRYPT_SECONDS_2048 = 1.2e-4  # per encryption on a 2048-bit key, for deciding when forking pays off


class PublicKey:
    """A Paillier public key (``n``) with fast encryption and the raw ciphertext operations.

    Args:
        n: the modulus, a product of two distinct odd primes.
    """

    def __init__(self, n: int) -> None:
        n = mpz(n)
        if n < 15 or n % 2 == 0:
            raise ValueError("a Paillier modulus must be an odd integer of at least 15")
        self._n = n
        self._nsquare = n * n
        self._bits = int(n.bit_length())
        self._fingerprint = hashlib.sha256(int(n).to_bytes((self._bits + 7) // 8, "big")).hexdigest()
        self._djn: AdaptiveFixedBase | None = None
        self._pool: FactorPool | None = None
        self._djn_lock = threading.Lock()
        self._phe: phe.PaillierPublicKey | None = None

    # -- identity -------------------------------------------------------------------------------
    @property
    def n(self) -> mpz:
        """The modulus ``n``."""
        return self._n

    @property
    def nsquare(self) -> mpz:
        """``n^2``, the ciphertext modulus."""
        return self._nsquare

    @property
    def bits(self) -> int:
        """Bit length of ``n``."""
        return self._bits

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of ``n`` (big-endian bytes): stable across processes and files."""
        return self._fingerprint

    @property
    def max_bits(self) -> int:
        """Largest safe signed plaintext size in bits: ``|m| < 2^max_bits``."""
        return self._bits - GUARD_BITS

    @property
    def ciphertext_bytes(self) -> int:
        """Bytes of one ciphertext on the wire (the byte length of ``n^2``)."""
        return (int(self._nsquare.bit_length()) + 7) // 8

    @property
    def phe(self) -> phe.PaillierPublicKey:
        """The equivalent ``phe.PaillierPublicKey`` (same ``n``, same ``g = n + 1``)."""
        if self._phe is None:
            self._phe = phe.PaillierPublicKey(int(self._n))
        return self._phe

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._n == self._n

    def __hash__(self) -> int:
        return hash(("torchhefl.PublicKey", int(self._n)))

    def __reduce__(self):
        return (PublicKey, (int(self._n),))

    def __repr__(self) -> str:
        return f"PublicKey(bits={self._bits}, fingerprint={self._fingerprint[:16]})"

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON-able description of this key (what :meth:`save` writes)."""
        return public_dict(self._n)

    def save(self, path: str | os.PathLike) -> None:
        """Write the key as JSON to ``path`` (mode 0644), replacing it atomically."""
        write_key_file(path, self.to_dict(), private=False)

    # -- randomness -----------------------------------------------------------------------------
    def _randomness_table(self, count: int):
        """The fixed-base table of ``h_s`` for the next ``count`` random factors (sized to the work)."""
        with self._djn_lock:
            if self._djn is None:
                n = self._n
                while True:
                    x = mpz(secrets.randbelow(int(n) - 2) + 2)
                    if gmpy2.gcd(x, n) == 1:
                        break
                h = (-x * x) % n
                self._djn = AdaptiveFixedBase(gmpy2.powmod(h, n, self._nsquare), self._nsquare, coin_bits(self._bits))
                self._pool = FactorPool(self._djn.base, self._nsquare, self._djn.exp_bits)
        return self._djn.for_count(count)

    def _pooled_factors(self, count: int) -> list[mpz]:
        """Up to ``count`` random factors drawn ahead on a second core (:mod:`torchhefl.secure.randomness`),
        each used once; the caller draws the rest itself. Call after :meth:`_randomness_table`."""
        return self._pool.take(count) if self._pool is not None else []

    def precompute(self, encryptions: int = AdaptiveFixedBase.WIDE_AFTER) -> None:
        """Build now, not on first use, the randomness table for about ``encryptions`` encryptions."""
        self._randomness_table(encryptions)

    def obfuscator(self) -> mpz:
        """A fresh random factor ``h_s^a mod n^2`` (an encryption of zero)."""
        table = self._randomness_table(1)
        pooled = self._pooled_factors(1)
        return pooled[0] if pooled else table.pow(secrets.randbits(table.exp_bits))

    # -- raw integer layer ----------------------------------------------------------------------
    def encrypt_int(self, m: int, *, obfuscate: bool = True) -> mpz:
        """Encrypt the integer ``m`` (taken modulo ``n``; negative values wrap to ``n - |m|``)."""
        c = (1 + (mpz(m) % self._n) * self._n) % self._nsquare
        if obfuscate:
            c = c * self.obfuscator() % self._nsquare
        return c

    def encrypt_ints(self, ms: Sequence[int]) -> list[mpz]:
        """Encrypt many integers, spread over the cores when the batch is big enough."""
        ms = list(ms)
        table = self._randomness_table(len(ms))  # built before forking so workers inherit it
        n, n2, bits = self._n, self._nsquare, table.exp_bits
        pooled = self._pooled_factors(len(ms))
        head = [(1 + (mpz(m) % n) * n) * f % n2 for m, f in zip(ms, pooled)]

        def work(chunk: Sequence[int]) -> list[mpz]:
            return [(1 + (mpz(m) % n) * n) * table.pow(secrets.randbits(bits)) % n2 for m in chunk]

        rest = ms[len(pooled):]
        if not rest:
            return head
        return head + _parallel.map_chunks(work, rest, seconds_per_item=_ENCRYPT_SECONDS_2048 * work_factor(self._bits))

    def rerandomize_int(self, c: int) -> mpz:
        """The same plaintext as ``c`` under fresh randomness."""
        return mpz(c) * self.obfuscator() % self._nsquare

    def rerandomize_ints(self, cs: Sequence[int]) -> list[mpz]:
        """:meth:`rerandomize_int` for many ciphertexts."""
        cs = list(cs)
        table = self._randomness_table(len(cs))
        n2, bits = self._nsquare, table.exp_bits
        pooled = self._pooled_factors(len(cs))
        head = [mpz(c) * f % n2 for c, f in zip(cs, pooled)]

        def work(chunk: Sequence[int]) -> list[mpz]:
            return [mpz(c) * table.pow(secrets.randbits(bits)) % n2 for c in chunk]

        rest = cs[len(pooled):]
        if not rest:
            return head
        return head + _parallel.map_chunks(work, rest, seconds_per_item=_ENCRYPT_SECONDS_2048 * work_factor(self._bits))

    def raw_add(self, c1: int, c2: int) -> mpz:
        """Ciphertext of the sum of the plaintexts of ``c1`` and ``c2``."""
        return mpz(c1) * mpz(c2) % self._nsquare

    def raw_add_plain(self, c: int, m: int) -> mpz:
        """Ciphertext of ``plaintext(c) + m`` (no new randomness)."""
        return mpz(c) * (1 + (mpz(m) % self._n) * self._n) % self._nsquare

    def raw_mul(self, c: int, k: int) -> mpz:
        """Ciphertext of ``plaintext(c) * k``; a negative ``k`` uses the inverse of ``c``."""
        k = int(k)
        if k == 1:
            return mpz(c)
        if k < 0:
            c, k = gmpy2.invert(mpz(c), self._nsquare), -k
        if k == 0:
            return mpz(1)
        return gmpy2.powmod(mpz(c), k, self._nsquare)

    def check_ciphertext(self, c: int) -> None:
        """Raise ``ValueError`` unless ``0 < c < n^2``."""
        if not 0 < c < self._nsquare:
            raise ValueError("ciphertext out of range: it must satisfy 0 < c < n^2")
