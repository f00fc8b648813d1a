"""Site identities: a long-term Ed25519 signing key per site, and the roster of their public keys.

Each site keeps its signing key in its own key folder (``identity.json``, mode 0600). The sites'
public keys travel out of band as a roster file (``roster.json``, like the sites' Paillier key in
he-clients mode), created by ``python -m train.keys identities`` and checked by its fingerprint.
The server relays messages between sites but cannot sign as one: every ephemeral key a site
advertises, every survivor set it agrees to, and every he-clients upload carries the site's
signature, and a site verifies each peer's against the roster.

Files::

    {"kind": "torchhefl.identity.private", "version": 1, "cid": "site0", "ed25519": "<64 hex>"}
    {"kind": "torchhefl.roster", "version": 1, "sites": {"site0": "<64 hex>", ...}}

The roster's fingerprint is the SHA-256 of its canonical JSON (sorted names, no spaces).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.secure import strict_json
from torchhefl.secure.files import write_private_file, write_public_file
from torchhefl.secure.masking import majority_threshold

__all__ = [
    "IDENTITY_FILE",
    "IDENTITY_KIND",
    "ROSTER_FILE",
    "ROSTER_KIND",
    "SIGNATURE_BYTES",
    "Roster",
    "SiteIdentity",
    "signed_bytes",
]

IDENTITY_KIND = "torchhefl.identity.private"
ROSTER_KIND = "torchhefl.roster"
IDENTITY_FILE = "identity.json"
"""Name of a site's signing key file in its key folder."""
ROSTER_FILE = "roster.json"
"""Default name of the roster file."""
SIGNATURE_BYTES = 64
_VERSION = 1
_KEY_BYTES = 32
_MAX_FILE_BYTES = 1 << 20
_CID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def signed_bytes(purpose: str, **fields) -> bytes:
    """The canonical bytes a site signs for ``purpose`` (sorted-key JSON, no spaces; every field
    must be JSON-able). Binding the purpose keeps a signature made for one step from passing in another."""
    return json.dumps({"purpose": purpose, **fields}, sort_keys=True, separators=(",", ":")).encode()


def _check_cid(cid) -> str:
    if not isinstance(cid, str) or not _CID.fullmatch(cid):
        raise ValueError(f"site name {cid!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return cid


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class SiteIdentity:
    """One site's long-term Ed25519 signing key. Secret: it stays in the site's key folder.

    Args:
        cid: the site's name, as the roster lists it.
        private_bytes: the 32-byte Ed25519 private key; default a fresh one from the OS.
    """

    def __init__(self, cid: str, private_bytes: bytes | None = None) -> None:
        self.cid = _check_cid(cid)
        if private_bytes is None:
            self._key = Ed25519PrivateKey.generate()
        else:
            if not isinstance(private_bytes, bytes) or len(private_bytes) != _KEY_BYTES:
                raise ValueError(f"an Ed25519 private key is {_KEY_BYTES} bytes")
            self._key = Ed25519PrivateKey.from_private_bytes(private_bytes)
        self._public = _raw_public(self._key.public_key())

    def public_bytes(self) -> bytes:
        """The 32-byte Ed25519 public key (what the roster lists for this site)."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(bytes(message))

    def save(self, path: str | os.PathLike) -> None:
        """Write the signing key to ``path`` (JSON, mode 0600, replaced atomically)."""
        raw = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        doc = {"kind": IDENTITY_KIND, "version": _VERSION, "cid": self.cid, "ed25519": raw.hex()}
        write_private_file(path, (json.dumps(doc, indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike, cid: str | None = None) -> SiteIdentity:
        """Read a signing key file; with ``cid``, it must be that site's."""
        doc = _read_json(path, IDENTITY_KIND)
        raw, name = doc.get("ed25519"), doc.get("cid")
        if not isinstance(raw, str) or not _HEX64.fullmatch(raw):
            raise MalformedMessageError(f"{path}: 'ed25519' must be 64 lowercase hexadecimal digits")
        try:
            identity = cls(name, bytes.fromhex(raw))
        except ValueError as e:
            raise MalformedMessageError(f"{path}: {e}") from None
        if cid is not None and identity.cid != cid:
            raise ValueError(f"{path} is the identity of site {identity.cid!r}, not {cid!r}")
        return identity

    def __repr__(self) -> str:
        return f"SiteIdentity(cid={self.cid!r}, public={self._public.hex()[:16]})"


class Roster:
    """The sites of a federation and their Ed25519 public keys (public; agreed out of band).

    Args:
        sites: site name -> 32-byte Ed25519 public key.
    """

    def __init__(self, sites: Mapping[str, bytes]) -> None:
        if len(sites) < 2:
            raise ValueError(f"a roster lists at least 2 sites, got {len(sites)}")
        keys = {}
        for cid, raw in sites.items():
            _check_cid(cid)
            if not isinstance(raw, bytes) or len(raw) != _KEY_BYTES:
                raise ValueError(f"the roster's key for {cid!r} is not {_KEY_BYTES} bytes")
            keys[cid] = Ed25519PublicKey.from_public_bytes(raw)
        if len(set(sites.values())) != len(sites):
            raise ValueError("the roster lists one public key for two sites")
        self._raw = {cid: bytes(sites[cid]) for cid in sorted(sites)}
        self._keys = keys
        canonical = json.dumps({c: k.hex() for c, k in self._raw.items()}, sort_keys=True, separators=(",", ":"))
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def of(cls, identities: Iterable[SiteIdentity]) -> Roster:
        """The roster of these sites' identities."""
        return cls({i.cid: i.public_bytes() for i in identities})

    @property
    def sites(self) -> list[str]:
        """The sites' names, sorted."""
        return list(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, cid) -> bool:
        return cid in self._raw

    @property
    def threshold(self) -> int:
        """The default threshold: a strict majority of the roster, never below 2."""
        return majority_threshold(len(self._raw))

    def index(self, cid: str) -> int:
        """The site's 1-based position in the sorted roster (its Shamir share index)."""
        if cid not in self._raw:
            raise ProtocolError(f"site {cid!r} is not on the roster")
        return self.sites.index(cid) + 1

    def public_bytes(self, cid: str) -> bytes:
        """The roster's public key for ``cid``."""
        if cid not in self._raw:
            raise ProtocolError(f"site {cid!r} is not on the roster")
        return self._raw[cid]

    def verify(self, cid: str, message: bytes, signature) -> None:
        """Raise :class:`ProtocolError` naming ``cid`` unless ``signature`` is its signature of
        ``message`` under the roster's key for it."""
        if cid not in self._keys:
            raise ProtocolError(f"site {cid!r} is not on the roster")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            raise ProtocolError(f"the signature relayed for site {cid!r} is not {SIGNATURE_BYTES} bytes")
        try:
            self._keys[cid].verify(signature, bytes(message))
        except InvalidSignature:
            raise ProtocolError(
                f"the key or message relayed for site {cid!r} does not carry its signature (swapped or forged)"
            ) from None

    def to_dict(self) -> dict:
        return {"kind": ROSTER_KIND, "version": _VERSION, "sites": {c: k.hex() for c, k in self._raw.items()}}

    def save(self, path: str | os.PathLike) -> None:
        """Write the roster to ``path`` (JSON, mode 0644, replaced atomically)."""
        write_public_file(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def from_dict(cls, doc, *, what: str = "roster") -> Roster:
        if not isinstance(doc, dict) or doc.get("kind") != ROSTER_KIND or doc.get("version") != _VERSION:
            raise MalformedMessageError(f"{what}: not a torchhefl roster (kind {ROSTER_KIND!r}, version {_VERSION})")
        sites = doc.get("sites")
        if not isinstance(sites, dict) or not all(isinstance(v, str) and _HEX64.fullmatch(v) for v in sites.values()):
            raise MalformedMessageError(f"{what}: 'sites' must map site names to 64 hexadecimal digits")
        try:
            return cls({c: bytes.fromhex(v) for c, v in sites.items()})
        except ValueError as e:
            raise MalformedMessageError(f"{what}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike, *, fingerprint: str | None = None) -> Roster:
        """Read a roster file; with ``fingerprint``, it must be that roster (checked out of band)."""
        roster = cls.from_dict(_read_json(path, ROSTER_KIND), what=str(path))
        if fingerprint is not None and roster.fingerprint != fingerprint.lower():
            raise ValueError(f"{path} has fingerprint {roster.fingerprint}, not the expected {fingerprint}")
        return roster

    def __eq__(self, other) -> bool:
        return isinstance(other, Roster) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"Roster(sites={len(self._raw)}, fingerprint={self.fingerprint[:16]})"


def _read_json(path: str | os.PathLike, kind: str) -> dict:
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(_MAX_FILE_BYTES + 1)
    if len(raw) > _MAX_FILE_BYTES:
        raise MalformedMessageError(f"{path}: larger than {_MAX_FILE_BYTES} bytes")
    doc = strict_json.loads(raw, what=str(path))
    if not isinstance(doc, dict) or doc.get("kind") != kind or doc.get("version") != _VERSION:
        raise MalformedMessageError(f"{path}: not a {kind} file of version {_VERSION}")
    return doc
