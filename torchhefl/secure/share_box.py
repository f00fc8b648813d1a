"""Sealed messages between two sites through a relay that must not read them (the server).

Two sites agree a key by X25519 (each advertises a public key, signed, through the server) and seal
each message with AES-256-GCM under it, with the sender, the receiver and the purpose as associated
data: the relay can drop or delay a sealed message, but cannot read, alter or redirect it.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidKey, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from torchhefl.exceptions import MalformedMessageError, ProtocolError

__all__ = ["KEY_BYTES", "X25519Pair", "agree", "open_sealed", "seal"]

KEY_BYTES = 32
_NONCE = 12


class X25519Pair:
    """An X25519 key pair from OS randomness (or from its 32 private bytes)."""

    def __init__(self, private_bytes: bytes | None = None) -> None:
        if private_bytes is None:
            self._key = X25519PrivateKey.generate()
        else:
            if not isinstance(private_bytes, bytes) or len(private_bytes) != KEY_BYTES:
                raise ValueError(f"an X25519 private key is {KEY_BYTES} bytes")
            self._key = X25519PrivateKey.from_private_bytes(private_bytes)

    def private_bytes(self) -> bytes:
        """The 32 private bytes: secret."""
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private_bytes: bytes, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key from X25519(``private_bytes``, ``peer_public``) through HKDF-SHA256 with ``info``.

    Raises :class:`MalformedMessageError` for a peer key that is not a valid X25519 key.
    """
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise MalformedMessageError(f"an X25519 public key is {KEY_BYTES} bytes")
    try:
        shared = X25519PrivateKey.from_private_bytes(private_bytes).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except (ValueError, InvalidKey) as e:
        raise MalformedMessageError(f"invalid X25519 public key: {e}") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """``nonce || AES-256-GCM(key, plaintext, associated)`` (a fresh random nonce)."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output; :class:`ProtocolError` if it was altered or is for
    another key or associated data."""
    if not isinstance(sealed, bytes) or len(sealed) < _NONCE + 16:
        raise MalformedMessageError("a sealed message is shorter than its nonce and tag")
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], associated)
    except InvalidTag:
        raise ProtocolError("a sealed message does not open: altered, or sealed for another site or step") from None
