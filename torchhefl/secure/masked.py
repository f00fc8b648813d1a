"""Masked ciphertext vectors: integers modulo ``n`` under masks that come off only in a sum.

A site's masked upload is ``Enc(k * x + mask)`` elementwise, where ``x`` is its encrypted vector and
``mask`` its share of masks that cancel (or that the server rebuilds) only over the sum of all
uploads. A :class:`MaskedVector` holds such ciphertexts: sites make one with :meth:`scaled` or
:meth:`encrypt`, the server multiplies them together (:meth:`sum`), takes off the masks it rebuilt
(:meth:`unmasked`), and reads the result as an :class:`~torchhefl.secure.tensor.EncryptedTensor`
with a declared bound (:meth:`as_tensor`), whose decryption refuses any value outside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from gmpy2 import mpz

from torchhefl.secure.public_key import PublicKey
from torchhefl.secure.tensor import EncryptedTensor

__all__ = ["MaskedVector"]


class MaskedVector:
    """Ciphertexts of integers modulo ``n``, each under a mask (see the module docstring)."""

    def __init__(self, public_key: PublicKey, ciphertexts: Sequence[int]) -> None:
        self.public_key = public_key
        self._cts = [mpz(c) for c in ciphertexts]
        for c in self._cts:
            public_key.check_ciphertext(c)

    @classmethod
    def scaled(cls, x: EncryptedTensor, k: int, mask: Sequence[int]) -> MaskedVector:
        """``Enc(k * x + mask)`` elementwise, re-randomised (``mask`` of ``x.numel()`` integers)."""
        pk = x.public_key
        if len(mask) != x.numel():
            raise ValueError(f"a mask of {len(mask)} integers for {x.numel()} values")
        cts = [pk.raw_add_plain(pk.raw_mul(c, k), m) for c, m in zip(x.ciphertexts, mask)]
        return cls(pk, pk.rerandomize_ints(cts))

    @classmethod
    def encrypt(cls, public_key: PublicKey, values: Sequence[int], mask: Sequence[int]) -> MaskedVector:
        """``Enc((value + mask) mod n)`` elementwise, freshly encrypted."""
        if len(mask) != len(values):
            raise ValueError(f"a mask of {len(mask)} integers for {len(values)} values")
        n = public_key.n
        return cls(public_key, public_key.encrypt_ints([(int(v) + int(m)) % n for v, m in zip(values, mask)]))

    @property
    def ciphertexts(self) -> list[mpz]:
        return list(self._cts)

    def __len__(self) -> int:
        return len(self._cts)

    def concat(self, other: MaskedVector) -> MaskedVector:
        self._same_key(other)
        return MaskedVector(self.public_key, self._cts + other._cts)

    @staticmethod
    def sum(parts: Sequence[MaskedVector]) -> MaskedVector:
        """The elementwise sum of the plaintexts of ``parts`` (one key, one length)."""
        if not parts:
            raise ValueError("no masked vectors to sum")
        first = parts[0]
        n2 = first.public_key.nsquare
        total = list(first._cts)
        for p in parts[1:]:
            first._same_key(p)
            if len(p) != len(total):
                raise ValueError(f"masked vectors of {len(p)} and {len(total)} values")
            total = [a * b % n2 for a, b in zip(total, p._cts)]
        return MaskedVector(first.public_key, total)

    def unmasked(self, masks: Sequence[int]) -> MaskedVector:
        """The plaintexts less ``masks`` (mod ``n``): the masks a sum's server rebuilt, taken off."""
        if len(masks) != len(self._cts):
            raise ValueError(f"{len(masks)} masks for {len(self._cts)} values")
        pk = self.public_key
        return MaskedVector(pk, [pk.raw_add_plain(c, -int(m) % pk.n) for c, m in zip(self._cts, masks)])

    def as_tensor(self, *, scale: int, bound_bits: int) -> EncryptedTensor:
        """The ciphertexts as a 1-d EncryptedTensor whose values are claimed below ``2^bound_bits``
        (its decryption raises ``OverflowError`` for any value beyond)."""
        return EncryptedTensor.from_ciphertexts(self.public_key, self._cts, (len(self._cts),), scale=scale, bound_bits=bound_bits)

    def _same_key(self, other: MaskedVector) -> None:
        if other.public_key != self.public_key:
            raise ValueError("masked vectors under different public keys")
