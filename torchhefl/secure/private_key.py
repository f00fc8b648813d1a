"""The Paillier private key: CRT decryption, signed plaintexts, and the key pair's coins.

``repr`` shows the fingerprint only; a private key cannot be pickled (save it to a 0600 file).
Import it from :mod:`torchhefl.secure` or :mod:`torchhefl.secure.keys`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

import gmpy2
import phe
from gmpy2 import mpz

from torchhefl.secure import _parallel
from torchhefl.secure.coins import CoinKey, CoinList
from torchhefl.secure.key_files import private_dict, write_key_file
from torchhefl.secure.key_sizes import work_factor
from torchhefl.secure.public_key import PublicKey

__all__ = ["PrivateKey"]

_DECRYPT_SECONDS_2048 = 2.3e-3  # per decryption on a 2048-bit key, for deciding when threads pay off


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

    def decrypt_raw_many(
        self, cs: Iterable[int], *, coins: CoinList | None = None, start: int = 0, strict: bool = False
    ) -> list[mpz]:
        """:meth:`decrypt_raw` for many ciphertexts.

        With ``coins`` (the coin list of ciphertexts ``start, start + 1, ...`` of encryptions made
        with :meth:`coins`), the known random factors are removed instead (one fixed-base power
        each); if that fails, or without ``coins``, the exponentiations modulo ``p^2`` and ``q^2``
        run on separate threads (and cores) when the work pays for the hand-off: one 2048-bit
        ciphertext already does.

        ``strict``: the ciphertexts must be made of exactly ``coins``; if they do not strip over
        them, raise ``ValueError`` instead of decrypting them the usual way (for a ciphertext whose
        random factor must be the one the coin list names, such as a sum of signed uploads).
        """
        cs = [mpz(c) for c in cs]
        if strict and coins is None:
            raise ValueError("a strict decryption needs the coin list the ciphertexts must be made of")
        if coins is not None:
            out = self.coins().strip(cs, coins, start)
            if out is not None:
                return out
            if strict:
                raise ValueError("the ciphertexts are not made of the coins their coin list names")
        p, q, p2, q2 = self._p, self._q, self._p2, self._q2
        xp, xq = _parallel.powmod_lists(
            [([c % p2 for c in cs], p - 1, p2), ([c % q2 for c in cs], q - 1, q2)],
            seconds_per_item=0.5 * _DECRYPT_SECONDS_2048 * work_factor(self._public_key.bits),
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

    def decrypt_ints(
        self, cs: Iterable[int], *, bound_bits: int | None = None, packed: bool = True
    ) -> list[int]:
        """:meth:`decrypt_int` for many ciphertexts.

        With ``bound_bits`` (a promise that ``|m| < 2^bound_bits``) small enough, only the
        exponentiation modulo ``p^2`` is needed (half the work); the caller must then check the
        results against the bound, which catches corrupt ciphertexts with overwhelming probability.

        With ``bound_bits`` and ``packed`` (the default), several ciphertexts are first combined
        into one whose plaintext holds their values side by side in slots of ``k`` bits
        (``c_1^(2^(k(J-1))) ... c_J``), and each combination is decrypted once: one exponentiation
        for ``J`` values instead of ``J``. Every slot is checked against the bound here
        (``OverflowError`` otherwise), and ``J`` is small enough that random ciphertexts pass
        with probability below ``2^-128``. Values beyond the bound by more than the slot's guard
        bits can carry into a neighbouring slot; what comes out is then still a vector of
        in-bound values, one whoever made the ciphertexts could have encrypted directly.
        """
        cs = [mpz(c) for c in cs]
        p = self._p
        if bound_bits is None or bound_bits + 2 >= p.bit_length():
            return [self.to_signed(m) for m in self.decrypt_raw_many(cs)]
        slots = min(len(cs), (p.bit_length() - 130) // (bound_bits + 1)) if packed else 1
        if slots < 2:
            return self._decrypt_mod_p(cs)
        return self._decrypt_packed(cs, bound_bits, slots)

    def _decrypt_mod_p(self, cs: list[mpz]) -> list[int]:
        """Signed plaintexts of ``cs`` from their residues modulo ``p^2`` only (``|m| < p/2``)."""
        p, p2, hp, half = self._p, self._p2, self._hp, self._p >> 1
        (powers,) = _parallel.powmod_lists(
            [([c % p2 for c in cs], p - 1, p2)],
            seconds_per_item=0.5 * _DECRYPT_SECONDS_2048 * work_factor(self._public_key.bits),
        )
        out = []
        for x in powers:
            m = (x - 1) // p * hp % p
            out.append(int(m) if m <= half else int(m - p))
        return out

    def _decrypt_packed(self, cs: list[mpz], bound_bits: int, slots: int) -> list[int]:
        p2 = self._p2
        k = (self._p.bit_length() - 2) // slots  # slots of k bits: sum |m_i| 2^(k i) < p / 2
        groups = [cs[i : i + slots] for i in range(0, len(cs), slots)]
        shift = mpz(1) << k
        packs = []
        for group in groups:
            acc = group[0] % p2
            for c in group[1:]:
                acc = gmpy2.powmod(acc, shift, p2) * c % p2
            packs.append(acc)
        mask, limit = (1 << k) - 1, 1 << bound_bits
        out: list[int] = []
        for group, s in zip(groups, self._decrypt_mod_p(packs)):
            j = len(group)
            offset = sum(1 << (k * i + k - 1) for i in range(j))  # lifts every slot to [0, 2^k)
            v = s + offset
            if not 0 <= v < 1 << (k * j):
                raise OverflowError(f"a decrypted value exceeds the bound of 2^{bound_bits}: corrupt ciphertext")
            digits = [((v >> (k * i)) & mask) - (1 << (k - 1)) for i in reversed(range(j))]
            if any(not -limit < d < limit for d in digits):
                raise OverflowError(f"a decrypted value exceeds the bound of 2^{bound_bits}: corrupt ciphertext")
            out.extend(digits)
        return out
