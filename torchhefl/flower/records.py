"""Wire-format bytes inside Flower messages, and back.

A torchhefl message travels as one Flower :class:`~flwr.app.Array` whose ``dtype``/``stype`` name
the torchhefl wire format: Flower moves (and chunks) it as opaque bytes and never interprets it,
so ciphertexts are never turned into floats on the way.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, RecordDict

from torchhefl.exceptions import MalformedMessageError

__all__ = ["HELLO_ACTION", "HELLO_TYPE", "MESSAGE_TYPE", "RECORD", "WIRE_DTYPE", "WIRE_STYPE", "pack", "unpack"]

#: the record that holds a torchhefl message in a Flower ``RecordDict``
RECORD = "torchhefl"
#: ``Array.dtype`` and ``Array.stype`` of a wire-format message
WIRE_DTYPE = "torchhefl.wire"
WIRE_STYPE = "torchhefl.wire/v1"
#: Flower message type of a torchhefl request (routed to the ClientApp's default query function)
MESSAGE_TYPE = "query"
#: the ClientApp's query function that answers the first exchange, in which each SuperNode says which site it runs
HELLO_ACTION = "hello"
#: Flower message type of that first exchange
HELLO_TYPE = f"{MESSAGE_TYPE}.{HELLO_ACTION}"
_ARRAY = "message"


def pack(blob: bytes) -> RecordDict:
    """A Flower ``RecordDict`` carrying the wire-format message ``blob`` unchanged."""
    if not isinstance(blob, (bytes, bytearray)):
        raise TypeError(f"a torchhefl message is bytes, not {type(blob).__name__}")
    blob = bytes(blob)
    array = Array(dtype=WIRE_DTYPE, shape=(len(blob),), stype=WIRE_STYPE, data=blob)
    return RecordDict({RECORD: ArrayRecord(array_dict={_ARRAY: array})})


def unpack(content: RecordDict) -> bytes:
    """The wire-format message inside ``content``; :class:`MalformedMessageError` if there is none."""
    try:
        array = content.array_records[RECORD][_ARRAY]
    except (KeyError, AttributeError):
        raise MalformedMessageError(f"Flower message without a {RECORD!r} array record") from None
    if array.dtype != WIRE_DTYPE or array.stype != WIRE_STYPE:
        raise MalformedMessageError(f"Flower array of dtype {array.dtype!r}/{array.stype!r}, expected {WIRE_DTYPE}/{WIRE_STYPE}")
    data = bytes(array.data)
    if tuple(array.shape) != (len(data),):
        raise MalformedMessageError(f"Flower array of shape {tuple(array.shape)} holds {len(data)} bytes")
    return data
