"""Signed set-up statistics under the sites' key: each site signs its encrypted statistics, and the
server relays every site's signed vector instead of their sum, so that each site sums them itself.

Under the sites' key the server only adds ciphertexts, and Paillier is malleable: a sum it relays
could be one it encrypted itself (any moments, any fill values: a standardisation of its choosing)
or a true sum plus an offset. Summing signed vectors at each site leaves it nothing to choose: a
site accepts the relayed vectors only if they are exactly one signed vector per roster site,
for this purpose, run and roster, its own among them unchanged. The server still sees only
ciphertexts (and each vector's length, as before).

What a site signs (sorted-key JSON)::

    {"purpose": "torchhefl/clients-key/statistics/v1", "run": <the public key's fingerprint>,
     "roster": <the roster's fingerprint>, "cid": <site>, "pass": <impute|median|standardize>,
     "digest": <SHA-256 of its PackedSum bytes, hex>}
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated.messages import decode_request, encode_request, payload_of
from torchhefl.secure import wire
from torchhefl.secure.identity import SIGNATURE_BYTES, Roster, SiteIdentity, signed_bytes

__all__ = ["BUNDLE_KIND", "SIGNED_KIND", "STATISTICS_SIGNED", "bundle", "read_bundle", "read_signed", "sign"]

STATISTICS_SIGNED = "torchhefl/clients-key/statistics/v1"
SIGNED_KIND = "torchhefl.SignedStatistics"
BUNDLE_KIND = "torchhefl.StatisticsBundle"


def _message(run: str, roster: Roster, cid: str, purpose: str, payload: bytes) -> bytes:
    return signed_bytes(STATISTICS_SIGNED, run=run, roster=roster.fingerprint, cid=cid, **{"pass": purpose},
                        digest=hashlib.sha256(payload).hexdigest())


def sign(identity: SiteIdentity, roster: Roster, run: str, purpose: str, payload: bytes) -> bytes:
    """``payload`` (this site's PackedSum bytes) with this site's signature, as it uploads them."""
    signature = identity.sign(_message(run, roster, identity.cid, purpose, payload))
    return encode_request(SIGNED_KIND, {"cid": identity.cid, "pass": purpose, "signature": signature.hex()}, payload)


def read_signed(blob: bytes, roster: Roster, run: str, purpose: str, *, max_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES) -> tuple[str, bytes]:
    """``(site, payload)`` of one signed statistics vector, its signature checked against the
    roster for this ``run`` and ``purpose``; :class:`MalformedMessageError` or :class:`ProtocolError` otherwise."""
    msg = decode_request(blob, kind=SIGNED_KIND, max_bytes=max_bytes)
    meta = msg.meta
    if set(meta) != {"cid", "pass", "signature"} or not isinstance(meta["cid"], str) or not isinstance(meta["signature"], str):
        raise MalformedMessageError("signed statistics hold exactly a site, a pass and a signature")
    if meta["pass"] != purpose:
        raise ProtocolError(f"statistics signed for the {meta['pass']!r} pass, relayed for {purpose!r}")
    try:
        signature = bytes.fromhex(meta["signature"])
    except ValueError:
        raise MalformedMessageError("the statistics' signature is not hexadecimal") from None
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedMessageError(f"the statistics' signature is not {SIGNATURE_BYTES} bytes")
    payload = payload_of(msg)
    roster.verify(meta["cid"], _message(run, roster, meta["cid"], purpose, payload), signature)
    return meta["cid"], payload


def bundle(signed: Sequence[bytes], purpose: str) -> bytes:
    """The sites' signed vectors (as :func:`sign` made them), relayed together."""
    body = b"".join(signed)
    return encode_request(BUNDLE_KIND, {"pass": purpose, "lengths": [len(b) for b in signed]}, body)


def read_bundle(blob: bytes, purpose: str, *, max_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES) -> list[bytes]:
    """The signed vectors of a :func:`bundle` (each still to be checked with :func:`read_signed`)."""
    msg = decode_request(blob, kind=BUNDLE_KIND, max_bytes=max_bytes)
    lengths, body = msg.meta.get("lengths"), payload_of(msg)
    if set(msg.meta) != {"pass", "lengths"} or msg.meta["pass"] != purpose:
        raise MalformedMessageError(f"a statistics bundle for the {purpose!r} pass holds exactly its pass and lengths")
    if not isinstance(lengths, list) or not lengths or not all(type(n) is int and n > 0 for n in lengths) or sum(lengths) != len(body):
        raise MalformedMessageError("a statistics bundle's lengths do not cut its body")
    out, start = [], 0
    for n in lengths:
        out.append(body[start : start + n])
        start += n
    return out
