"""The messages of the federated protocol, as bytes in the torchhefl wire format.

Every request the server sends and every reply a client returns is one wire message
(:mod:`torchhefl.secure.wire`): a kind, a small JSON ``meta`` and named arrays. Parameter payloads
are themselves wire messages, carried as one opaque ``u1`` array named ``payload``, so that a
plaintext payload and an encrypted one travel the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import wire

__all__ = [
    "EVALUATE_INS",
    "EVALUATE_RES",
    "FIT_INS",
    "FIT_RES",
    "GLOBAL_REQ",
    "PLAIN_STATE",
    "STANDARDIZE_INS",
    "STANDARDIZE_RES",
    "STATS_INS",
    "STATS_RES",
    "decode_request",
    "decode_state",
    "encode_request",
    "encode_state",
    "payload_of",
    "same_int",
]

# The kinds of the core protocol's messages, every mode's: the server sends each ``*_INS`` request,
# a client answers with the matching ``*_RES`` reply. A mode's own kinds live with the mode.
#: the feature statistics (count, sum, sum of squares) of a site's rows
STATS_INS, STATS_RES = "stats_ins", "stats_res"
#: the summed statistics, from which each site standardises its rows
STANDARDIZE_INS, STANDARDIZE_RES = "standardize_ins", "standardize_res"
#: train on the global model (carried, or named by its digest); the reply carries the update
FIT_INS, FIT_RES = "fit_ins", "fit_res"
#: evaluate the global model on the site's share of the held-out set; the reply carries counts
EVALUATE_INS, EVALUATE_RES = "evaluate_ins", "evaluate_res"
#: a client's answer to a fit request that named a global model it no longer holds: send it again
GLOBAL_REQ = "global_req"

#: the kind of a plaintext state_dict payload
PLAIN_STATE = "plain_state"
#: each tensor dtype a ``plain_state`` message may name, with the wire dtype of its array
#: (``bfloat16`` travels as float64, which numpy has)
_WIRE_DTYPES = {
    "float16": "<f2", "float32": "<f4", "float64": "<f8", "bfloat16": "<f8",
    "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8",
    "uint8": "|u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "bool": "|b1",
}
_FLOAT_DTYPES = {"float16", "float32", "float64", "bfloat16"}


def encode_state(state: Mapping[str, torch.Tensor | np.ndarray], meta: Mapping | None = None) -> bytes:
    """A plaintext state_dict (or dict of arrays) as a ``plain_state`` wire message."""
    arrays, dtypes = {}, {}
    for name, value in state.items():
        t = torch.as_tensor(value).detach().cpu()
        dtypes[name] = str(t.dtype).removeprefix("torch.")
        arrays[name] = (t.to(torch.float64) if t.dtype == torch.bfloat16 else t).numpy()
    return wire.encode(PLAIN_STATE, {"dtypes": dtypes, **dict(meta or {})}, arrays)


def decode_state(blob: bytes, *, expected: Mapping[str, torch.Tensor] | None = None) -> tuple[OrderedDict, dict]:
    """Parse a ``plain_state`` message into ``(state_dict, meta)``.

    Each array's dtype must be the one :func:`encode_state` writes for the tensor dtype the header
    names, and floating values must be finite (after conversion, so a float64 array cannot overflow
    into a float16 tensor); with ``expected`` (a reference state_dict), names and shapes must match it
    exactly. Anything else raises :class:`MalformedMessageError`.
    """
    msg = wire.decode(blob, kind=PLAIN_STATE)
    dtypes = msg.meta.get("dtypes")
    if not isinstance(dtypes, dict) or set(dtypes) != set(msg.arrays):
        raise MalformedMessageError("plain_state message: dtypes do not match its arrays")
    if expected is not None:
        if list(msg.arrays) != list(expected):
            raise MalformedMessageError(
                f"parameter names {list(msg.arrays)} do not match the model's {list(expected)}"
            )
        for name, ref in expected.items():
            if tuple(msg.arrays[name].shape) != tuple(ref.shape):
                raise MalformedMessageError(
                    f"parameter {name!r} has shape {tuple(msg.arrays[name].shape)}, expected {tuple(ref.shape)}"
                )
    state = OrderedDict()
    for name, arr in msg.arrays.items():
        dtype = dtypes[name]
        if not isinstance(dtype, str) or dtype not in _WIRE_DTYPES:
            raise MalformedMessageError(f"parameter {name!r}: unknown dtype {dtype!r}")
        if arr.dtype.str != _WIRE_DTYPES[dtype]:
            raise MalformedMessageError(f"parameter {name!r}: a {dtype} tensor travels as {_WIRE_DTYPES[dtype]}, not {arr.dtype.str}")
        t = torch.from_numpy(arr.copy()).to(getattr(torch, dtype))
        if dtype in _FLOAT_DTYPES and not torch.isfinite(t).all():
            raise MalformedMessageError(f"parameter {name!r} holds NaN or infinite values")
        state[name] = t
    meta = {k: v for k, v in msg.meta.items() if k != "dtypes"}
    return state, meta


def encode_request(kind: str, meta: Mapping | None = None, payload: bytes | None = None) -> bytes:
    """A protocol message: ``kind``, ``meta`` and an optional opaque payload (itself a wire message)."""
    arrays = {} if payload is None else {"payload": np.frombuffer(payload, dtype=np.uint8)}
    return wire.encode(kind, meta, arrays)


def decode_request(blob: bytes, *, kind: str | tuple[str, ...] | None = None, max_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES) -> wire.Message:
    """Parse a protocol message; ``kind`` may name one kind or several acceptable ones."""
    msg = wire.decode(blob, max_bytes=max_bytes)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and msg.kind not in kinds:
        raise MalformedMessageError(f"expected a {' or '.join(repr(k) for k in kinds)} message, got {msg.kind!r}")
    if set(msg.arrays) - {"payload"}:
        raise MalformedMessageError(f"{msg.kind} message carries unexpected arrays {sorted(set(msg.arrays) - {'payload'})}")
    return msg


def same_int(value, expected: int) -> bool:
    """Whether the header value ``value`` is the integer ``expected`` (``True`` is not ``1``, nor is ``1.0``)."""
    return type(value) is int and value == expected


def payload_of(msg: wire.Message) -> bytes:
    """The opaque payload bytes of a protocol message."""
    if "payload" not in msg.arrays:
        raise MalformedMessageError(f"{msg.kind} message has no payload")
    arr = msg.arrays["payload"]
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise MalformedMessageError(f"{msg.kind} message payload must be a flat byte array")
    return arr.tobytes()
