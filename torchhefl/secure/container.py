"""The base of the ciphertext containers on the wire (EncryptedTensor, SecureStateDict, PackedSum).

Each container is one :mod:`torchhefl.secure.wire` message of its own kind, whose header starts
with ``format`` (the container's layout version), ``fingerprint`` and ``key_bits`` (the key it is
bound to) and whose one array, ``ciphertexts``, holds the ciphertexts as big-endian bytes.
:class:`WireContainer` writes and checks that common part once; each container adds its own fields.
The ciphertext codec (:func:`cts_to_array`, :func:`array_to_cts`) and :func:`check_fingerprint`
also serve protocol messages that carry ciphertexts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import ClassVar

import gmpy2
import numpy as np
from gmpy2 import mpz

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError
from torchhefl.secure import wire
from torchhefl.secure.encoding import FixedPoint
from torchhefl.secure.keys import PrivateKey, PublicKey

__all__ = [
    "WireContainer",
    "array_to_cts",
    "check_fingerprint",
    "check_private_key",
    "check_public_key",
    "cts_to_array",
    "is_int",
]


def is_int(v) -> bool:
    """``v`` is an ``int`` and not a ``bool`` (as a header field must be)."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_public_key(public_key) -> None:
    """``TypeError`` unless ``public_key`` is a torchhefl :class:`~torchhefl.secure.PublicKey`."""
    if not isinstance(public_key, PublicKey):
        raise TypeError(f"expected a torchhefl PublicKey, got {type(public_key).__name__}")


def check_private_key(private_key, public_key: PublicKey, what: str) -> None:
    """``TypeError`` unless ``private_key`` is a torchhefl PrivateKey, ``KeyMismatchError`` unless
    it is the private half of ``public_key`` (the key of ``what``, e.g. "the tensor's")."""
    if not isinstance(private_key, PrivateKey):
        raise TypeError(f"decrypt needs a torchhefl PrivateKey, not {type(private_key).__name__}")
    if private_key.public_key != public_key:
        raise KeyMismatchError(f"this private key does not match {what} public key")


def check_fingerprint(meta: dict, public_key: PublicKey) -> None:
    """Check a header's ``fingerprint`` and ``key_bits`` against ``public_key``."""
    fp, bits = meta.get("fingerprint"), meta.get("key_bits")
    if not isinstance(fp, str) or not is_int(bits):
        raise MalformedMessageError("header fields 'fingerprint' and 'key_bits' are missing or have the wrong type")
    if fp != public_key.fingerprint:
        raise KeyMismatchError(
            f"message was encrypted under key {fp[:16]}, expected key {public_key.fingerprint[:16]}"
        )
    if bits != public_key.bits:
        raise MalformedMessageError(f"key_bits {bits} does not match the key ({public_key.bits} bits)")


def cts_to_array(cts: Sequence[mpz], public_key: PublicKey) -> np.ndarray:
    """Ciphertexts as a ``uint8`` array of shape ``(count, ciphertext_bytes)``, big-endian."""
    width = public_key.ciphertext_bytes
    buf = b"".join(mpz(c).to_bytes(width, "big") for c in cts)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(cts), width)


def array_to_cts(arr, public_key: PublicKey, count: int) -> list[mpz]:
    """Inverse of :func:`cts_to_array`, checking the shape, ``0 < c < n^2`` and ``gcd(c, n) = 1``
    for every ciphertext (every Paillier ciphertext is a unit modulo ``n^2``; one that is not, such
    as ``c = n`` or a multiple of a prime factor, encrypts nothing and is refused).

    The units are checked all at once: ``gcd(prod c_i mod n, n) = 1`` exactly when every ``c_i`` is
    prime to ``n`` (one gcd and ``count`` multiplications modulo ``n``, not ``count`` gcds).
    """
    width = public_key.ciphertext_bytes
    if arr.dtype != np.uint8 or arr.shape != (count, width):
        raise MalformedMessageError(
            f"ciphertext array has dtype {arr.dtype} and shape {tuple(arr.shape)}, expected uint8 ({count}, {width})"
        )
    buf = arr.tobytes()
    n, n2 = public_key.n, public_key.nsquare
    out = []
    product = mpz(1)
    for i in range(count):
        c = mpz.from_bytes(buf[i * width : (i + 1) * width], "big")
        if not 0 < c < n2:
            raise MalformedMessageError(f"ciphertext {i} is out of range (must satisfy 0 < c < n^2)")
        product = product * (c % n) % n
        out.append(c)
    if gmpy2.gcd(product, n) != 1:
        bad = next(i for i, c in enumerate(out) if gmpy2.gcd(c, n) != 1)
        raise MalformedMessageError(f"ciphertext {bad} is not a unit (it shares a factor with n): not a Paillier ciphertext")
    return out


class WireContainer:
    """Ciphertexts bound to one public key, sent as one wire message of kind :attr:`WIRE_KIND`.

    A subclass sets the class attributes below, keeps its key in ``_pk``, writes itself with
    :meth:`_encode` and reads itself in ``from_bytes`` with :meth:`_parsing`,
    :meth:`_decode_header` and :meth:`_read_ciphertexts`.
    """

    WIRE_KIND: ClassVar[str]
    """The wire message kind, e.g. ``"torchhefl.EncryptedTensor"``."""
    WIRE_FORMAT: ClassVar[int]
    """The version of this container's header layout (the ``format`` field)."""
    WIRE_FIELDS: ClassVar[frozenset[str]]
    """Header fields every message holds (``format``, ``fingerprint`` and ``key_bits`` among them)."""
    WIRE_OPTIONAL_FIELDS: ClassVar[frozenset[str]] = frozenset()
    """Header fields a message may hold."""
    WIRE_ARTICLE: ClassVar[str] = "a"
    """The article before the class name in messages ("an EncryptedTensor")."""
    FIXED_POINT: ClassVar[FixedPoint]
    """The fixed-point parameters of the values held (see :mod:`torchhefl.secure.encoding`)."""

    _pk: PublicKey

    @property
    def public_key(self) -> PublicKey:
        """The key the ciphertexts are under."""
        return self._pk

    def _encode(self, fields: dict, ciphertexts: Sequence[mpz]) -> bytes:
        """The wire message: ``format``, ``fingerprint``, ``key_bits``, then ``fields``, and the ciphertexts."""
        meta = {"format": self.WIRE_FORMAT, "fingerprint": self._pk.fingerprint, "key_bits": self._pk.bits, **fields}
        return wire.encode(self.WIRE_KIND, meta, {"ciphertexts": cts_to_array(ciphertexts, self._pk)})

    @classmethod
    @contextlib.contextmanager
    def _parsing(cls) -> Iterator[None]:
        """Turn any error while parsing a message into ``MalformedMessageError`` (``KeyMismatchError`` passes)."""
        try:
            yield
        except (MalformedMessageError, KeyMismatchError):
            raise
        except Exception as e:  # noqa: BLE001 - a malformed message must never leak another error type
            raise MalformedMessageError(f"malformed {cls.__name__} message: {e}") from None

    @classmethod
    def _decode_header(cls, blob: bytes, public_key: PublicKey, max_bytes: int) -> wire.Message:
        """Decode ``blob`` as this container's kind and check its header fields, format and key."""
        msg = wire.decode(blob, kind=cls.WIRE_KIND, max_bytes=max_bytes)
        meta = msg.meta
        if not cls.WIRE_FIELDS <= set(meta) <= cls.WIRE_FIELDS | cls.WIRE_OPTIONAL_FIELDS:
            raise MalformedMessageError(f"{cls.__name__} header fields {sorted(meta)} != {sorted(cls.WIRE_FIELDS)}")
        if meta["format"] != cls.WIRE_FORMAT:
            raise MalformedMessageError(f"unsupported {cls.__name__} format {meta['format']!r}")
        check_fingerprint(meta, public_key)
        return msg

    @classmethod
    def _read_ciphertexts(cls, msg: wire.Message, public_key: PublicKey, count: int) -> list[mpz]:
        """The message's ``count`` checked ciphertexts (its only array)."""
        if set(msg.arrays) != {"ciphertexts"}:
            raise MalformedMessageError(
                f"{cls.WIRE_ARTICLE} {cls.__name__} message holds exactly one array, 'ciphertexts'"
            )
        return array_to_cts(msg.arrays["ciphertexts"], public_key, count)
