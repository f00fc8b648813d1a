"""Pairwise masks that cancel in a sum: the clients' side of anonymous aggregation.

Each pair of clients agrees on a secret seed by X25519 key agreement, with the server relaying the
32-byte public keys (it never sees a seed). For one upload every client adds
``sum_j ±PRG(seed_ij, label)`` modulo ``n``, with ``+`` towards clients that sort after it and
``-`` towards those before it, so the masks of the participants of one upload sum to zero modulo
``n``: a server that holds the decryption key can read only the masked sum.

The label names the upload (what it is, the round, the attempt and the participant set), so a
re-run of a round without a dropped client uses fresh masks that cancel among the survivors.
The PRG is SHAKE-256 over ``seed || label``; each mask element takes ``bits(n) + 128`` bits of its
output reduced modulo ``n``, which is uniform up to a statistical distance of ``2^-128``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.secure.share_box import X25519Pair

__all__ = ["PUBLIC_KEY_BYTES", "PairwiseMasker", "majority_threshold", "mask_label", "prg_ints"]

PUBLIC_KEY_BYTES = 32
_HKDF_INFO = b"torchhefl/pairwise-mask/v1"
_EXTRA_BITS = 128


def mask_label(purpose: str, participants: Sequence[str], **fields: int) -> bytes:
    """The canonical label of one masked upload (same bytes on every client)."""
    return json.dumps(
        {"purpose": purpose, "participants": sorted(participants), **fields}, sort_keys=True, separators=(",", ":")
    ).encode()


def prg_ints(seed: bytes, label: bytes, count: int, modulus: int) -> list[int]:
    """``count`` integers uniform in ``[0, modulus)`` expanded from ``seed`` and ``label`` (SHAKE-256)."""
    width = (int(modulus).bit_length() + _EXTRA_BITS + 7) // 8
    stream = hashlib.shake_256(len(label).to_bytes(8, "big") + label + seed).digest(count * width)
    return [int.from_bytes(stream[i * width : (i + 1) * width], "big") % modulus for i in range(count)]


def majority_threshold(roster_size: int) -> int:
    """The fewest participants a masked sum may have among ``roster_size`` sites: a strict
    majority, and never below 2 (a sum over one site is that site's value)."""
    return max(2, roster_size // 2 + 1)


class PairwiseMasker:
    """One client's pairwise-mask state: its X25519 key and the seeds it shares with its peers.

    Args:
        cid: this client's name (masks are signed by the order of names).
        private_bytes: a 32-byte X25519 private key to reuse (:meth:`private_bytes` of an earlier
            masker of this client, e.g. kept in a site's own state); default a fresh one.
    """

    def __init__(self, cid: str, private_bytes: bytes | None = None) -> None:
        self.cid = cid
        self._pair = X25519Pair(private_bytes)
        self._key = X25519PrivateKey.from_private_bytes(self._pair.private_bytes())
        self._seeds: dict[str, bytes] = {}

    def private_bytes(self) -> bytes:
        """This client's 32-byte X25519 private key: secret, for the site's own state only."""
        return self._pair.private_bytes()

    def public_bytes(self) -> bytes:
        """This client's 32-byte X25519 public key."""
        return self._pair.public_bytes()

    @property
    def peers(self) -> list[str]:
        """The clients this one shares a seed with (sorted)."""
        return sorted(self._seeds)

    def agree(self, public_keys: Mapping[str, bytes]) -> None:
        """Derive a seed with every other client from their public keys (``cid -> 32 bytes``).

        The list must hold this client's own key unchanged (a relay that swapped it is caught).
        """
        if public_keys.get(self.cid) != self.public_bytes():
            raise ProtocolError(f"the relayed key list does not hold client {self.cid}'s own public key")
        seeds = {}
        for peer, raw in public_keys.items():
            if peer == self.cid:
                continue
            if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_BYTES:
                raise MalformedMessageError(f"public key of {peer!r} is not {PUBLIC_KEY_BYTES} bytes")
            try:
                shared = self._key.exchange(X25519PublicKey.from_public_bytes(raw))
            except (ValueError, InvalidKey) as e:
                raise MalformedMessageError(f"public key of {peer!r} is invalid: {e}") from None
            names = json.dumps(sorted([self.cid, peer])).encode()
            seeds[peer] = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO + names).derive(shared)
        self._seeds = seeds

    def mask(self, label: bytes, participants: Sequence[str], count: int, modulus: int) -> list[int]:
        """This client's mask for one upload: ``count`` integers modulo ``modulus``.

        The masks of all ``participants`` for the same ``label`` sum to zero modulo ``modulus``.
        """
        if self.cid not in participants:
            raise ProtocolError(f"client {self.cid} is not among the upload's participants")
        unknown = [p for p in participants if p != self.cid and p not in self._seeds]
        if unknown:
            raise ProtocolError(f"client {self.cid} shares no mask seed with {', '.join(sorted(unknown))}")
        if len(set(participants)) != len(participants):
            raise ProtocolError("the participant list names a client twice")
        out = [0] * count
        for peer in participants:
            if peer == self.cid:
                continue
            stream = prg_ints(self._seeds[peer], label, count, modulus)
            if self.cid < peer:
                out = [(a + b) % modulus for a, b in zip(out, stream)]
            else:
                out = [(a - b) % modulus for a, b in zip(out, stream)]
        return out
