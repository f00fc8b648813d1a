"""Paillier key pairs: generation, JSON key files, and the raw integer layer.

The scheme is Paillier's with ``g = n + 1`` (so ``g^m = 1 + m n mod n^2``) and Damgård-Jurik-Nielsen
short-exponent randomness: the public key fixes ``h_s = h^n mod n^2`` for a random ``h = -x^2 mod n``
and the random factor of a ciphertext is ``h_s^a`` for a fresh ``a`` of :func:`coin_bits` bits (256
for a 2048-bit key), computed from a fixed-base table cached on the key. Ciphertexts are plain
``gmpy2.mpz`` integers and are decryptable by ``phe``'s private key too (``public_key.phe`` and
``private_key.phe`` give the matching ``phe`` objects).

Key files are JSON (no pickle, read by :func:`torchhefl.secure.strict_json.loads`): ``{"kind": "torchhefl.paillier.public", "version": 1, "bits": ...,
"n": "<hex>"}`` and, for a private key, ``"kind": "torchhefl.paillier.private"`` plus ``"p"`` and
``"q"``. Key files are replaced atomically through :mod:`torchhefl.secure.files` (a private key
file is mode 0600 from its first byte, a symlink at its path is replaced, not followed); a private
key cannot be pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import gmpy2
import phe
from gmpy2 import mpz

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import _parallel, strict_json
from torchhefl.secure._fastmath import AdaptiveFixedBase
from torchhefl.secure.files import write_private_file, write_public_file

if TYPE_CHECKING:
    from torchhefl.secure.coins import CoinKey, CoinList

__all__ = [
    "DEFAULT_KEY_BITS",
    "GUARD_BITS",
    "MIN_SECURE_KEY_BITS",
    "InsecureKeyWarning",
    "PrivateKey",
    "PublicKey",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
]

DEFAULT_KEY_BITS = 2048
MIN_SECURE_KEY_BITS = 2048
GUARD_BITS = 8
"""Signed plaintexts must satisfy ``|m| < 2^(n_bits - GUARD_BITS)``; the rest of ``[0, n)`` is a
band that no valid result can land in, so an overflow shows up on decryption instead of wrapping."""

_MIN_KEY_BITS = 256
_KEY_FILE_VERSION = 1
_PUBLIC_KIND = "torchhefl.paillier.public"
_PRIVATE_KIND = "torchhefl.paillier.private"
# seconds per operation on a 2048-bit key, for deciding when forking workers pays off
_DECRYPT_SECONDS_2048 = 2.3e-3
_ENCRYPT_SECONDS_2048 = 1.2e-4


class InsecureKeyWarning(UserWarning):
    """A key shorter than :data:`MIN_SECURE_KEY_BITS` was generated or loaded on request."""


MIN_COIN_BITS = 256
"""Fewest bits of a DJN random exponent, whatever the key size."""


def coin_bits(n_bits: int) -> int:
    """Bits of a DJN random exponent for an ``n_bits`` key: ``max(256, 2 * security level)``.

    The random factor of a ciphertext is ``h_s^a`` for a uniform ``a`` in ``[0, 2^t)``. Damgård,
    Jurik and Nielsen, "A generalization of Paillier's public-key system with applications to
    electronic voting" (Int. J. Inf. Secur. 9, 2010), in their section on making encryption
    faster, take ``a`` of ``ceil(n_bits / 2)`` bits, as libdjn (in ABY), Intel's IPCL and
    SecretFlow's HEU implement it. Shorter exponents rest on the short-exponent discrete-log
    assumption: telling which plaintext a ciphertext holds then costs about ``2^(t/2)`` group
    operations by the best known attack, Pollard's lambda method on ``a`` (van Oorschot and
    Wiener, "On Diffie-Hellman key agreement with short exponents", EUROCRYPT 1996). We follow the
    rule used for short private exponents in discrete-log groups, ``t >= 2s`` bits for security
    strength ``s`` (NIST SP 800-56A Rev. 3 for the safe-prime groups), with ``s`` the key's
    strength from NIST SP 800-57 Part 1 Rev. 5, table 2, and never fewer than 256 bits (128-bit
    security for the randomness whatever the key): 2048-bit keys (112-bit strength) get 256; 3072
    and 4096 (128) 256; 7680 (192) 384; 15360 (256) 512.
    """
    return max(MIN_COIN_BITS, 2 * _security_bits(n_bits))


def _security_bits(n_bits: int) -> int:
    # NIST SP 800-57 Part 1 Rev. 5, table 2: strengths of factoring-based (IFC) keys
    if n_bits >= 15360:
        return 256
    if n_bits >= 7680:
        return 192
    if n_bits >= 3072:
        return 128
    if n_bits >= 2048:
        return 112
    return 80


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
        return {"kind": _PUBLIC_KIND, "version": _KEY_FILE_VERSION, "bits": self._bits, "n": format(int(self._n), "x")}

    def save(self, path: str | os.PathLike) -> None:
        """Write the key as JSON to ``path`` (mode 0644), replacing it atomically."""
        _write_json(path, self.to_dict(), private=False)

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
        from torchhefl.secure.coins import CoinKey

        with self._coins_lock:
            if self._coins is None:
                self._coins = CoinKey(self)
        return self._coins

    def save(self, path: str | os.PathLike) -> None:
        """Write the private key as JSON to ``path`` with mode 0600, replacing it atomically: a crash
        leaves the old file or the new one, and a symlink at ``path`` is replaced, not followed
        (:func:`torchhefl.secure.files.write_private_file`)."""
        d = self._public_key.to_dict()
        d.update(kind=_PRIVATE_KIND, p=format(int(self._p), "x"), q=format(int(self._q), "x"))
        _write_json(path, d, private=True)

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
    bits = _check_bits(bits, allow_insecure)
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


def _check_bits(bits: int, allow_insecure: bool, stacklevel: int = 3) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if bits < _MIN_KEY_BITS:
        raise ValueError(f"a key of {bits} bits is too small to use at all (minimum {_MIN_KEY_BITS})")
    if bits < MIN_SECURE_KEY_BITS:
        if not allow_insecure:
            raise ValueError(
                f"a {bits}-bit key is insecure (minimum {MIN_SECURE_KEY_BITS}); pass allow_insecure=True for tests only"
            )
        warnings.warn(
            f"using an insecure {bits}-bit Paillier key (allow_insecure=True); never use it for real data",
            InsecureKeyWarning,
            stacklevel=stacklevel,
        )
    return bits


def _write_json(path: str | os.PathLike, obj: dict, *, private: bool) -> None:
    data = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
    (write_private_file if private else write_public_file)(path, data)


_MAX_KEY_FILE_BYTES = 1 << 20  # a 16384-bit private key file is about 8.5 KB
_HEX = re.compile(r"[0-9a-fA-F]+")
_MAX_KEY_HEX_DIGITS = 4096  # 16384 bits


def _read_key_json(path: str | os.PathLike, kind: str) -> dict:
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(_MAX_KEY_FILE_BYTES + 1)
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise MalformedMessageError(f"{path}: not a torchhefl key file (larger than {_MAX_KEY_FILE_BYTES} bytes)")
    try:
        d = strict_json.loads(raw, what="its text")
    except MalformedMessageError as e:
        raise MalformedMessageError(f"{path}: not a torchhefl key file ({e})") from None
    if not isinstance(d, dict) or d.get("kind") not in (_PUBLIC_KIND, _PRIVATE_KIND):
        raise MalformedMessageError(f"{path}: not a torchhefl key file (missing or unknown 'kind')")
    if d["kind"] != kind:
        what = "private" if d["kind"] == _PRIVATE_KIND else "public"
        raise MalformedMessageError(
            f"{path}: this is a {what} key file, expected a {'private' if kind == _PRIVATE_KIND else 'public'} one"
        )
    version = d.get("version")
    if type(version) is not int or version != _KEY_FILE_VERSION:
        raise MalformedMessageError(f"{path}: unsupported key file version {version!r} (this build reads {_KEY_FILE_VERSION})")
    return d


def _hex_field(d: dict, name: str, path) -> mpz:
    v = d.get(name)
    if not isinstance(v, str) or not v or len(v) > _MAX_KEY_HEX_DIGITS:
        raise MalformedMessageError(f"{path}: field {name!r} must be a hexadecimal string of at most {_MAX_KEY_HEX_DIGITS} digits")
    if not _HEX.fullmatch(v):
        raise MalformedMessageError(f"{path}: field {name!r} is not valid hexadecimal")
    x = mpz(int(v, 16))
    if x <= 0:
        raise MalformedMessageError(f"{path}: field {name!r} must be positive")
    return x


def _public_from_dict(d: dict, path, *, allow_insecure: bool) -> PublicKey:
    n = _hex_field(d, "n", path)
    bits = d.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or n.bit_length() != bits:
        raise MalformedMessageError(f"{path}: 'bits' does not match the size of n ({n.bit_length()} bits)")
    if n % 2 == 0 or gmpy2.is_prime(n):
        raise MalformedMessageError(f"{path}: n is not a valid Paillier modulus")
    try:
        _check_bits(bits, allow_insecure, stacklevel=5)
    except ValueError as e:
        raise MalformedMessageError(f"{path}: {e}") from None
    return PublicKey(n)


def load_public_key(path: str | os.PathLike, *, allow_insecure: bool = False) -> PublicKey:
    """Read a public key file written by :meth:`PublicKey.save` and check it.

    Raises :class:`~torchhefl.exceptions.MalformedMessageError` (a ``ValueError``) with the reason
    for a file that is not a valid public key file, whatever its bytes; ``OSError`` if it cannot be read.
    """
    d = _read_key_json(path, _PUBLIC_KIND)
    return _public_from_dict(d, path, allow_insecure=allow_insecure)


def load_private_key(path: str | os.PathLike, *, allow_insecure: bool = False) -> PrivateKey:
    """Read a private key file written by :meth:`PrivateKey.save` and check it (``p * q == n``, primes).

    Raises :class:`~torchhefl.exceptions.MalformedMessageError` (a ``ValueError``) with the reason
    for a file that is not a valid private key file, whatever its bytes; ``OSError`` if it cannot be read.
    """
    d = _read_key_json(path, _PRIVATE_KIND)
    public_key = _public_from_dict(d, path, allow_insecure=allow_insecure)
    p, q = _hex_field(d, "p", path), _hex_field(d, "q", path)
    if p * q != public_key.n:
        raise MalformedMessageError(f"{path}: p * q does not equal n (corrupt or mismatched private key)")
    if p == q or not gmpy2.is_prime(p, 50) or not gmpy2.is_prime(q, 50):
        raise MalformedMessageError(f"{path}: p and q must be distinct primes")
    return PrivateKey(public_key, p, q)
