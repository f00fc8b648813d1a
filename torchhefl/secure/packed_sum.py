"""PackedSum: a float64 vector encrypted in wide packed slots, for sums of large statistics.

:class:`~torchhefl.secure.SecureStateDict` packs model parameters tightly (|v| < 8192 at 2^-24).
Statistics such as a feature's sum of squares can be far larger, so a PackedSum uses wide slots:
each value is stored as ``round(v * 2^SCALE)`` plus an offset in a :data:`SLOT_BITS`-bit slot,
several slots per plaintext, with one extra slot counting the summed vectors so the offsets can be
removed after decryption. Up to :data:`MAX_TERMS` vectors can be summed without a private key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gmpy2 import mpz

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError
from torchhefl.secure import wire
from torchhefl.secure.coins import CoinKey, CoinList, coins_from_wire, coins_to_wire, combine_coins
from torchhefl.secure.container import WireContainer, check_private_key, check_public_key, is_int
from torchhefl.secure.encoding import PACKED_SUM_FIXED_POINT
from torchhefl.secure.keys import PrivateKey, PublicKey

__all__ = ["MAX_ABS_VALUE", "MAX_TERMS", "PackedSum"]

SCALE = PACKED_SUM_FIXED_POINT.scale_bits  # 56
SLOT_BITS = PACKED_SUM_FIXED_POINT.slot_bits  # 160
_OFFSET = 1 << PACKED_SUM_FIXED_POINT.mag_bits  # 2^148
MAX_TERMS = 1 << 10
"""Most vectors a PackedSum adds (within the slots' room of ``2^headroom_bits - 1`` terms)."""
#: largest magnitude a value may have
MAX_ABS_VALUE = PACKED_SUM_FIXED_POINT.max_abs_value


def _slots(public_key: PublicKey) -> int:
    return (public_key.max_bits - 1) // SLOT_BITS


class PackedSum(WireContainer):
    """An encrypted float64 vector that supports ``+`` with others of its kind under the same key."""

    WIRE_KIND = "torchhefl.PackedSum"
    WIRE_FORMAT = 1
    WIRE_FIELDS = frozenset({"format", "fingerprint", "key_bits", "length", "terms"})
    WIRE_OPTIONAL_FIELDS = frozenset({"coins"})
    FIXED_POINT = PACKED_SUM_FIXED_POINT

    def __init__(
        self, public_key: PublicKey, ciphertexts: list[mpz], length: int, terms: int, coins: CoinList | None = None
    ) -> None:
        self._pk, self._cts, self._length, self._terms = public_key, ciphertexts, length, terms
        self._coins = coins  # the coin list when the random factors are known (torchhefl.secure.coins)

    def __len__(self) -> int:
        return self._length

    @property
    def terms(self) -> int:
        """How many encrypted vectors were summed into this one (1 for a fresh encryption)."""
        return self._terms

    @classmethod
    def encrypt(cls, vector, public_key: PublicKey, *, coins: CoinKey | None = None) -> PackedSum:
        """Encrypt a 1-D float vector (|v| < :data:`MAX_ABS_VALUE`, resolution 2^-56).

        ``coins``: the key pair's :meth:`PrivateKey.coins`, for an encryptor holding the private key
        (key holders then decrypt sums fast; see :mod:`torchhefl.secure.coins`).
        """
        check_public_key(public_key)
        if coins is not None and (not isinstance(coins, CoinKey) or coins.public_key != public_key):
            raise KeyMismatchError("coins must be the CoinKey of this public key's key pair")
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        if not np.isfinite(v).all():
            raise ValueError("PackedSum values must be finite")
        if v.size and np.abs(v).max() >= MAX_ABS_VALUE:
            raise OverflowError(f"PackedSum holds |v| < {MAX_ABS_VALUE:g}, got {np.abs(v).max():g}")
        ints = [1] + [int(round(float(x) * 2.0**SCALE)) + _OFFSET for x in v]
        k = _slots(public_key)
        plaintexts = [
            sum(m << (SLOT_BITS * j) for j, m in enumerate(ints[i : i + k])) for i in range(0, len(ints), k)
        ]
        if coins is None:
            return cls(public_key, public_key.encrypt_ints(plaintexts), len(v), 1)
        nonce, cts = coins.encrypt_ints(plaintexts)
        return cls(public_key, cts, len(v), 1, [(nonce, 1)])

    def __add__(self, other: PackedSum) -> PackedSum:
        if not isinstance(other, PackedSum):
            return NotImplemented
        if other._pk != self._pk:
            raise KeyMismatchError("PackedSums under different public keys cannot be added")
        if other._length != self._length:
            raise ValueError(f"cannot add PackedSums of lengths {self._length} and {other._length}")
        terms = self._terms + other._terms
        if terms > MAX_TERMS:
            raise OverflowError(f"a PackedSum adds at most {MAX_TERMS} vectors")
        cts = [self._pk.raw_add(a, b) for a, b in zip(self._cts, other._cts)]
        return PackedSum(self._pk, cts, self._length, terms, combine_coins([(self._coins, 1), (other._coins, 1)]))

    def decrypt(self, private_key: PrivateKey) -> np.ndarray:
        """The summed vector, float64."""
        check_private_key(private_key, self._pk, "the PackedSum's")
        mask, k = (1 << SLOT_BITS) - 1, _slots(self._pk)
        slots = []
        for pt in private_key.decrypt_raw_many(self._cts, coins=self._coins):
            pt = int(pt)
            if pt >> (SLOT_BITS * k):
                raise OverflowError("a PackedSum plaintext is out of range: corrupt ciphertext")
            slots += [(pt >> (SLOT_BITS * j)) & mask for j in range(k)]
        terms = slots[0]
        if terms != self._terms:
            raise OverflowError(f"PackedSum decrypted to {terms} terms, expected {self._terms}: corrupt ciphertext")
        values = np.array([s - terms * _OFFSET for s in slots[1 : 1 + self._length]], dtype=object)
        if any(abs(x) >= terms * _OFFSET for x in values):
            raise OverflowError("a PackedSum slot is out of range: corrupt ciphertext")
        return np.array([float(x) / 2.0**SCALE for x in values], dtype=np.float64)

    def to_bytes(self) -> bytes:
        fields = {"length": self._length, "terms": self._terms}
        if self._coins is not None:
            fields["coins"] = coins_to_wire(self._coins)
        return self._encode(fields, self._cts)

    @classmethod
    def from_bytes(cls, blob: bytes, *, public_key: PublicKey, max_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES) -> PackedSum:
        """Parse bytes from :meth:`to_bytes`; raises ``MalformedMessageError`` or ``KeyMismatchError``."""
        check_public_key(public_key)
        with cls._parsing():
            msg = cls._decode_header(blob, public_key, max_bytes)
            meta = msg.meta
            length, terms = meta["length"], meta["terms"]
            if not (is_int(length) and 0 <= length < 2**24 and is_int(terms) and 1 <= terms <= MAX_TERMS):
                raise MalformedMessageError(f"PackedSum length {length!r} or terms {terms!r} out of range")
            count = -(-(length + 1) // _slots(public_key))
            cts = cls._read_ciphertexts(msg, public_key, count)
            coins = coins_from_wire(meta["coins"]) if "coins" in meta else None
            return cls(public_key, cts, length, terms, coins)


def sum_packed(items: Sequence[PackedSum]) -> PackedSum:
    """The sum of one or more PackedSums."""
    items = list(items)
    if not items:
        raise ValueError("nothing to sum")
    total = items[0]
    for it in items[1:]:
        total = total + it
    return total
