"""Paillier key pairs: generation, JSON key files, and the raw integer layer.

The scheme is Paillier's with ``g = n + 1`` (so ``g^m = 1 + m n mod n^2``) and Damgård-Jurik-Nielsen
short-exponent randomness: the public key fixes ``h_s = h^n mod n^2`` for a random ``h = -x^2 mod n``
and the random factor of a ciphertext is ``h_s^a`` for a fresh ``a`` of :func:`coin_bits` bits (256
for a 2048-bit key), computed from a fixed-base table cached on the key. Ciphertexts are plain
``gmpy2.mpz`` integers and are decryptable by ``phe``'s private key too (``public_key.phe`` and
``private_key.phe`` give the matching ``phe`` objects).

Key files are JSON, in the format of :mod:`torchhefl.secure.key_files` (no pickle; a private key
file is mode 0600 from its first byte); a private key cannot be pickled. Key sizes and the DJN
exponent size are in :mod:`torchhefl.secure.key_sizes`, re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections.abc import Iterable, Sequence

import gmpy2
import phe
from gmpy2 import mpz

from torchhefl.secure import _parallel
from torchhefl.secure._fastmath import AdaptiveFixedBase
from torchhefl.secure.coins import CoinKey, CoinList
from torchhefl.secure.key_files import (
    PRIVATE_KIND,
    PUBLIC_KIND,
    private_dict,
    public_dict,
    read_key_file,
    read_modulus,
    read_primes,
    write_key_file,
)
from torchhefl.secure.key_sizes import (
    DEFAULT_KEY_BITS,
    MIN_COIN_BITS,
    MIN_SECURE_KEY_BITS,
    InsecureKeyWarning,
    check_key_bits,
    coin_bits,
)

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

GUARD_BITS = 8
"""Signed plaintexts must satisfy ``|m| < 2^(n_bits - GUARD_BITS)``; the rest of ``[0, n)`` is a
band that no valid result can land in, so an overflow shows up on decryption instead of wrapping."""

# seconds per operation on a 2048-bit key, for deciding when forking workers pays off
_DECRYPT_SECONDS_2048 = 2.3e-3
_ENCRYPT_SECONDS_2048 = 1.2e-4


def _cost_factor(n_bits: int) -> float:
    return (n_bits / 2048.0) ** 2.5


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
        return self._djn.for_count(count)

    def precompute(self, encryptions: int = AdaptiveFixedBase.WIDE_AFTER) -> None:
        """Build now, not on first use, the randomness table for about ``encryptions`` encryptions."""
        self._randomness_table(encryptions)

    def obfuscator(self) -> mpz:
        """A fresh random factor ``h_s^a mod n^2`` (an encryption of zero)."""
        table = self._randomness_table(1)
        return table.pow(secrets.randbits(table.exp_bits))

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

        def work(chunk: Sequence[int]) -> list[mpz]:
            return [(1 + (mpz(m) % n) * n) * table.pow(secrets.randbits(bits)) % n2 for m in chunk]

        return _parallel.map_chunks(work, ms, seconds_per_item=_ENCRYPT_SECONDS_2048 * _cost_factor(self._bits))

    def rerandomize_int(self, c: int) -> mpz:
        """The same plaintext as ``c`` under fresh randomness."""
        return mpz(c) * self.obfuscator() % self._nsquare

    def rerandomize_ints(self, cs: Sequence[int]) -> list[mpz]:
        """:meth:`rerandomize_int` for many ciphertexts."""
        cs = list(cs)
        table = self._randomness_table(len(cs))
        n2, bits = self._nsquare, table.exp_bits

        def work(chunk: Sequence[int]) -> list[mpz]:
            return [mpz(c) * table.pow(secrets.randbits(bits)) % n2 for c in chunk]

        return _parallel.map_chunks(work, cs, seconds_per_item=_ENCRYPT_SECONDS_2048 * _cost_factor(self._bits))

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


class PrivateKey:
    """A Paillier private key: the primes ``p`` and ``q`` of its public key's ``n``.

    Decryption uses the Chinese remainder theorem (exponentiations modulo ``p^2`` and ``q^2``).
    ``repr`` shows the fingerprint only; a private key cannot be pickled (save it to a 0600 file).
    """

    def __init__(self, public_key: PublicKey, p: int, q: int) -> None:
        p, q = mpz(p), mpz(q)
        if p == q or p < 3 or q < 3 or p * q != public_key.n:
            raise ValueError("p and q must be two distinct primes whose product is the public key's n")
        if p > q:
            p, q = q, p
        self._public_key = public_key
        self._p, self._q = p, q
        self._p2, self._q2 = p * p, q * q
        # with g = n + 1, g^(p-1) = 1 + (p-1) n (mod p^2), so L_p(g^(p-1) mod p^2) = -q (mod p)
        self._hp = gmpy2.invert(-q % p, p)
        self._hq = gmpy2.invert(-p % q, q)
        self._q_inv_p = gmpy2.invert(q, p)
        self._phe: phe.PaillierPrivateKey | None = None
        self._coins = None
        self._coins_lock = threading.Lock()

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._public_key

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the matching public key."""
        return self._public_key.fingerprint

    @property
    def p(self) -> mpz:
        """The smaller prime factor of ``n`` (secret, as ``phe.PaillierPrivateKey.p`` is)."""
        return self._p

    @property
    def q(self) -> mpz:
        """The larger prime factor of ``n`` (secret)."""
        return self._q

    @property
    def phe(self) -> phe.PaillierPrivateKey:
        """The equivalent ``phe.PaillierPrivateKey``."""
        if self._phe is None:
            self._phe = phe.PaillierPrivateKey(self._public_key.phe, int(self._p), int(self._q))
        return self._phe

    def __repr__(self) -> str:
        return f"PrivateKey(fingerprint={self.fingerprint[:16]})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a torchhefl PrivateKey cannot be pickled; use PrivateKey.save() (a 0600 JSON file)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and other._public_key == self._public_key

    def __hash__(self) -> int:
        return hash(("torchhefl.PrivateKey", self.fingerprint))

    def coins(self) -> CoinKey:
        """This key pair's :class:`~torchhefl.secure.coins.CoinKey` (derived once, then cached).

        Encrypting with it lets any holder of the key decrypt sums of the ciphertexts with one
        fixed-base exponentiation each (see :mod:`torchhefl.secure.coins`).
        """
        with self._coins_lock:
            if self._coins is None:
                self._coins = CoinKey(self)
        return self._coins

    def save(self, path: str | os.PathLike) -> None:
        """Write the private key as JSON to ``path`` with mode 0600, replacing it atomically: a crash
        leaves the old file or the new one, and a symlink at ``path`` is replaced, not followed
        (:func:`torchhefl.secure.files.write_private_file`)."""
        write_key_file(path, private_dict(self._public_key.n, self._p, self._q), private=True)

    # -- raw integer layer ----------------------------------------------------------------------
    def decrypt_raw(self, c: int) -> mpz:
        """The plaintext of ``c`` in ``[0, n)``."""
        return self.decrypt_raw_many([c])[0]

    def decrypt_raw_many(self, cs: Iterable[int], *, coins: CoinList | None = None, start: int = 0) -> list[mpz]:
        """:meth:`decrypt_raw` for many ciphertexts.

        With ``coins`` (the coin list of ciphertexts ``start, start + 1, ...`` of encryptions made
        with :meth:`coins`), the known random factors are removed instead (one fixed-base power
        each); if that fails, or without ``coins``, the exponentiations modulo ``p^2`` and ``q^2``
        run on separate threads (and cores) when the work pays for the hand-off: one 2048-bit
        ciphertext already does.
        """
        cs = [mpz(c) for c in cs]
        if coins is not None:
            out = self.coins().strip(cs, coins, start)
            if out is not None:
                return out
        p, q, p2, q2 = self._p, self._q, self._p2, self._q2
        xp, xq = _parallel.powmod_lists(
            [([c % p2 for c in cs], p - 1, p2), ([c % q2 for c in cs], q - 1, q2)],
            seconds_per_item=0.5 * _DECRYPT_SECONDS_2048 * _cost_factor(self._public_key.bits),
        )
        hp, hq, q_inv_p = self._hp, self._hq, self._q_inv_p
        out = []
        for ap, aq in zip(xp, xq):
            mp = (ap - 1) // p * hp % p
            mq = (aq - 1) // q * hq % q
            out.append(mq + q * ((mp - mq) * q_inv_p % p))
        return out

    def to_signed(self, m: int) -> int:
        """Map a raw plaintext in ``[0, n)`` to a signed integer, raising ``OverflowError`` in the guard band."""
        n = self._public_key.n
        limit = mpz(1) << self._public_key.max_bits
        if m < limit:
            return int(m)
        if m > n - limit:
            return int(m - n)
        raise OverflowError(
            f"decrypted value lies outside the safe range |m| < 2^{self._public_key.max_bits}: "
            "the computation overflowed the plaintext space (or the ciphertext is corrupt)"
        )

    def decrypt_int(self, c: int) -> int:
        """The signed plaintext of ``c``; ``OverflowError`` if it lies in the guard band."""
        return self.to_signed(self.decrypt_raw(c))

    def decrypt_ints(self, cs: Iterable[int], *, bound_bits: int | None = None) -> list[int]:
        """:meth:`decrypt_int` for many ciphertexts.

        With ``bound_bits`` (a promise that ``|m| < 2^bound_bits``) small enough, only the
        exponentiation modulo ``p^2`` is needed (half the work); the caller must then check the
        results against the bound, which catches corrupt ciphertexts with overwhelming probability.
        """
        cs = list(cs)
        p = self._p
        if bound_bits is not None and bound_bits + 2 < p.bit_length():
            p2, hp, half = self._p2, self._hp, p >> 1
            (powers,) = _parallel.powmod_lists(
                [([mpz(c) % p2 for c in cs], p - 1, p2)],
                seconds_per_item=0.5 * _DECRYPT_SECONDS_2048 * _cost_factor(self._public_key.bits),
            )
            out = []
            for x in powers:
                m = (x - 1) // p * hp % p
                out.append(int(m) if m <= half else int(m - p))
            return out
        return [self.to_signed(m) for m in self.decrypt_raw_many(cs)]


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
