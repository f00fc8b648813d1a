"""Signed uploads (``--key-holder clients``), and the global model that lists the uploads it sums.

A site's upload is its ``Enc(n_i * w_i)``, a :class:`~torchhefl.secure.SecureStateDict` whose
random factors one fresh nonce names (:mod:`torchhefl.secure.coins`), with the site's Ed25519
signature (:mod:`torchhefl.secure.identity`) over :func:`upload_message`::

    {"purpose": "torchhefl he-clients upload v1", "cid": ..., "round": r, "attempt": a,
     "nonce": <the upload's nonce>, "digest": <SHA-256 of the SecureStateDict's bytes>,
     "roster": <the roster's fingerprint>}

The round and attempt are those of the fit request the upload answers, so a signature cannot be
moved into another round; the nonce and the digest name this one upload, so it cannot be moved onto
other ciphertexts; the purpose keeps it from passing for a signature made in another step, and the
roster's fingerprint for one made in another federation.

The server's sum of a round's uploads, the next global model (:class:`SignedGlobal`), lists the
:class:`UploadSignature` of every upload it sums, beside the coin list its ciphertext header
carries. The initial model lists none: it is the public model every party draws from the run's seed.

Wire forms (protocol messages, :mod:`torchhefl.federated.messages`, whose ``payload`` is the
SecureStateDict's bytes; binary fields in lowercase hex, as coin lists carry nonces)::

    he_clients_upload  {"cid", "round", "attempt", "nonce", "signature"}
    he_clients_global  {"uploads": [{"cid", "round", "attempt", "nonce", "digest", "signature"}, ...]}
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated.client import MAX_ROUND
from torchhefl.federated.messages import decode_request, encode_request, payload_of
from torchhefl.secure import wire
from torchhefl.secure.coins import MAX_COIN_TERMS, NONCE_BYTES
from torchhefl.secure.identity import SIGNATURE_BYTES, Roster, SiteIdentity, signed_bytes

__all__ = [
    "GLOBAL_KIND",
    "UPLOAD_KIND",
    "UPLOAD_PURPOSE",
    "SignedGlobal",
    "SignedUpload",
    "UploadSignature",
    "upload_message",
]

UPLOAD_KIND = "he_clients_upload"
GLOBAL_KIND = "he_clients_global"
UPLOAD_PURPOSE = "torchhefl he-clients upload v1"
"""The purpose a site's upload signature is made for (see :func:`~torchhefl.secure.identity.signed_bytes`)."""

_DIGEST_BYTES = 32
_CID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RECORD_FIELDS = ("cid", "round", "attempt", "nonce", "digest", "signature")
_UPLOAD_FIELDS = ("cid", "round", "attempt", "nonce", "signature")


def upload_message(*, cid: str, round: int, attempt: int, nonce: bytes, digest: bytes, roster: str) -> bytes:
    """The canonical bytes a site signs for one upload (``roster``: the roster's fingerprint)."""
    return signed_bytes(
        UPLOAD_PURPOSE, cid=cid, round=int(round), attempt=int(attempt), nonce=nonce.hex(), digest=digest.hex(), roster=roster
    )


@dataclass(frozen=True)
class UploadSignature:
    """One site's signature on one upload: what a global model lists for each upload it sums.

    Attributes:
        cid: the signing site, as the roster names it.
        round: the round of the fit request the upload answers (1-based).
        attempt: the attempt of that request.
        nonce: the 16-byte nonce that names the upload's coins.
        digest: SHA-256 of the upload's SecureStateDict bytes (32 bytes).
        signature: the site's 64-byte Ed25519 signature of :meth:`message`.
    """

    cid: str
    round: int
    attempt: int
    nonce: bytes
    digest: bytes
    signature: bytes

    def to_wire(self) -> dict:
        """As JSON: ``{"cid", "round", "attempt", "nonce", "digest", "signature"}``, bytes in hex."""
        return {
            "cid": self.cid, "round": self.round, "attempt": self.attempt,
            "nonce": self.nonce.hex(), "digest": self.digest.hex(), "signature": self.signature.hex(),
        }

    @classmethod
    def from_wire(cls, raw) -> UploadSignature:
        """Parse :meth:`to_wire` output; raises :class:`MalformedMessageError` on anything else."""
        if not isinstance(raw, dict) or set(raw) != set(_RECORD_FIELDS):
            raise MalformedMessageError(f"an upload record holds exactly {', '.join(_RECORD_FIELDS)}")
        cid, rnd, attempt = raw["cid"], raw["round"], raw["attempt"]
        if not isinstance(cid, str) or not _CID.fullmatch(cid):
            raise MalformedMessageError(f"upload record names {cid!r}, not a site name")
        if not all(type(v) is int and 1 <= v <= MAX_ROUND for v in (rnd, attempt)):
            raise MalformedMessageError(
                f"upload record of {cid} has round {rnd!r} and attempt {attempt!r}, not integers in [1, {MAX_ROUND}]"
            )
        return cls(
            cid, rnd, attempt, _hex(raw["nonce"], "nonce", NONCE_BYTES), _hex(raw["digest"], "digest", _DIGEST_BYTES),
            _hex(raw["signature"], "signature", SIGNATURE_BYTES),
        )

    def message(self, roster_fingerprint: str) -> bytes:
        """The bytes the signature is over (:func:`upload_message`)."""
        return upload_message(
            cid=self.cid, round=self.round, attempt=self.attempt, nonce=self.nonce, digest=self.digest, roster=roster_fingerprint
        )

    def verify(self, roster: Roster) -> None:
        """Raise :class:`~torchhefl.exceptions.ProtocolError` naming the site unless the roster's
        key for :attr:`cid` made :attr:`signature`."""
        roster.verify(self.cid, self.message(roster.fingerprint), self.signature)

    @classmethod
    def sign(cls, identity: SiteIdentity, roster: Roster, *, round: int, attempt: int, nonce: bytes, model: bytes) -> UploadSignature:
        """``identity``'s signature on the upload ``model`` (SecureStateDict bytes) with coins ``nonce``."""
        digest = hashlib.sha256(model).digest()
        message = upload_message(
            cid=identity.cid, round=round, attempt=attempt, nonce=nonce, digest=digest, roster=roster.fingerprint
        )
        return cls(identity.cid, int(round), int(attempt), bytes(nonce), digest, identity.sign(message))


@dataclass(frozen=True)
class SignedUpload:
    """A site's upload: its SecureStateDict bytes and its :class:`UploadSignature` (whose digest is
    of :attr:`model`, so it does not travel)."""

    signature: UploadSignature
    model: bytes

    def to_bytes(self) -> bytes:
        record = self.signature.to_wire()
        del record["digest"]
        return encode_request(UPLOAD_KIND, record, self.model)

    @classmethod
    def from_bytes(cls, blob: bytes, *, max_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES) -> SignedUpload:
        """Parse :meth:`to_bytes` output; raises :class:`MalformedMessageError` on anything malformed
        (the signature is checked by whoever holds the roster)."""
        msg = decode_request(blob, kind=UPLOAD_KIND, max_bytes=max_bytes)
        model = payload_of(msg)
        meta = msg.meta
        if not isinstance(meta, dict) or set(meta) != set(_UPLOAD_FIELDS):
            raise MalformedMessageError(f"an upload holds exactly {', '.join(_UPLOAD_FIELDS)} and its payload")
        digest = hashlib.sha256(model).hexdigest()
        return cls(UploadSignature.from_wire({**meta, "digest": digest}), model)


@dataclass(frozen=True)
class SignedGlobal:
    """A global model: SecureStateDict bytes and the signatures of the uploads it sums (none for the
    initial model)."""

    model: bytes
    uploads: tuple[UploadSignature, ...] = ()

    def to_bytes(self) -> bytes:
        return encode_request(GLOBAL_KIND, {"uploads": [u.to_wire() for u in self.uploads]}, self.model)

    @classmethod
    def from_bytes(cls, blob: bytes, *, max_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES) -> SignedGlobal:
        """Parse :meth:`to_bytes` output; raises :class:`MalformedMessageError` on anything malformed
        (the signatures are checked by whoever holds the roster)."""
        msg = decode_request(blob, kind=GLOBAL_KIND, max_bytes=max_bytes)
        model = payload_of(msg)
        raw = msg.meta.get("uploads")
        if set(msg.meta) != {"uploads"} or not isinstance(raw, list) or len(raw) > MAX_COIN_TERMS:
            raise MalformedMessageError(f"a global model holds exactly 'uploads', a list of at most {MAX_COIN_TERMS} upload records")
        return cls(model, tuple(UploadSignature.from_wire(r) for r in raw))


def _hex(value, name: str, length: int) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{2 * length}}}", value):
        raise MalformedMessageError(f"upload record: '{name}' must be {2 * length} lowercase hexadecimal digits")
    return bytes.fromhex(value)
