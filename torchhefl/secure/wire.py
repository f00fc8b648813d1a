"""The torchhefl wire container: versioned, self-describing bytes, no pickle.

Layout (all integers little-endian)::

    magic      8 bytes   b"THEFL\\x00\\r\\n"
    version    u16       WIRE_VERSION
    hlen       u32       length of the JSON header
    header     hlen      UTF-8 JSON object: {"kind": str, "meta": {...}, "arrays": [manifest...]}
    payload    rest      the arrays' raw bytes, back to back, in manifest order

Each manifest entry is ``{"name": str, "dtype": str, "shape": [int, ...]}``; dtypes are from a fixed
allow-list (little-endian numbers, and ``u1`` for opaque ciphertext bytes). The payload length must
equal the sum of the arrays' sizes exactly. The header is read by
:func:`torchhefl.secure.strict_json.loads` (bounded integers and nesting, finite numbers, no key
twice). Every check failure raises :class:`~torchhefl.exceptions.MalformedMessageError` with the
reason, whatever the bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import strict_json

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "WIRE_VERSION", "Message", "decode", "encode"]

WIRE_VERSION = 1
MAGIC = b"THEFL\x00\r\n"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30  # 1 GiB
_MAX_HEADER_BYTES = 16 << 20
_PREFIX = struct.Struct("<8sHI")
_MAX_ELEMENTS = 1 << 40  # per array, zero-length dimensions aside
_DTYPES = {"<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "|i1", "|u1", "|b1", "<u2", "<u4", "<u8"}


@dataclass
class Message:
    """A decoded message: its kind, a JSON-able ``meta`` dict and named numpy arrays (in order)."""

    kind: str
    meta: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode(kind: str, meta: Mapping | None = None, arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Serialise ``kind``, ``meta`` (JSON-able) and ``arrays`` into one wire message."""
    arrays = dict(arrays or {})
    manifest, chunks = [], []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if not arr.flags.c_contiguous:  # np.ascontiguousarray would turn a 0-d array into 1-d
            arr = arr.copy(order="C")
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dt, copy=False)
        if dt.str not in _DTYPES:
            raise TypeError(f"array {name!r}: dtype {arr.dtype} cannot go on the wire")
        manifest.append({"name": str(name), "dtype": dt.str, "shape": list(arr.shape)})
        chunks.append(arr.tobytes())
    header = json.dumps(
        {"kind": kind, "meta": dict(meta or {}), "arrays": manifest}, separators=(",", ":"), allow_nan=False
    ).encode()
    return b"".join([_PREFIX.pack(MAGIC, WIRE_VERSION, len(header)), header, *chunks])


def decode(
    blob: bytes, *, kind: str | None = None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Message:
    """Parse and check one wire message; ``kind`` (if given) must match the message's kind."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise MalformedMessageError(f"message must be bytes, not {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) > max_bytes:
        raise MalformedMessageError(f"message of {len(blob)} bytes exceeds the limit of {max_bytes} bytes")
    if len(blob) < _PREFIX.size:
        raise MalformedMessageError(f"message truncated: {len(blob)} bytes is shorter than the prefix")
    magic, version, hlen = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise MalformedMessageError("not a torchhefl message (bad magic bytes)")
    if version != WIRE_VERSION:
        raise MalformedMessageError(f"unsupported wire format version {version} (this build reads {WIRE_VERSION})")
    if hlen > _MAX_HEADER_BYTES or _PREFIX.size + hlen > len(blob):
        raise MalformedMessageError(f"message truncated: header of {hlen} bytes does not fit")
    header = strict_json.loads(blob[_PREFIX.size : _PREFIX.size + hlen], what="message header")
    if not isinstance(header, dict) or set(header) != {"kind", "meta", "arrays"}:
        raise MalformedMessageError("message header must hold exactly 'kind', 'meta' and 'arrays'")
    msg_kind, meta, manifest = header["kind"], header["meta"], header["arrays"]
    if not isinstance(msg_kind, str) or not isinstance(meta, dict) or not isinstance(manifest, list):
        raise MalformedMessageError("message header fields have the wrong types")
    if kind is not None and msg_kind != kind:
        raise MalformedMessageError(f"expected a {kind!r} message, got {msg_kind!r}")
    arrays: dict[str, np.ndarray] = {}
    offset = _PREFIX.size + hlen
    for entry in manifest:
        name, dtype, shape = _check_entry(entry)
        if name in arrays:
            raise MalformedMessageError(f"array {name!r} appears twice")
        nbytes = np.dtype(dtype).itemsize * _prod(shape)
        if offset + nbytes > len(blob):
            raise MalformedMessageError(f"message truncated inside array {name!r}")
        arrays[name] = np.frombuffer(blob, dtype=dtype, count=_prod(shape), offset=offset).reshape(shape)
        offset += nbytes
    if offset != len(blob):
        raise MalformedMessageError(f"{len(blob) - offset} unexpected trailing bytes after the arrays")
    return Message(msg_kind, meta, arrays)


def _check_entry(entry) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
        raise MalformedMessageError("array manifest entries must hold exactly 'name', 'dtype' and 'shape'")
    name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str):
        raise MalformedMessageError("array name must be a string")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise MalformedMessageError(f"array {name!r}: dtype {dtype!r} is not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > 32
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _MAX_ELEMENTS for d in shape)
        or _prod(tuple(max(d, 1) for d in shape)) >= _MAX_ELEMENTS
    ):
        raise MalformedMessageError(f"array {name!r}: invalid shape {shape!r}")
    return name, dtype, tuple(shape)


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
