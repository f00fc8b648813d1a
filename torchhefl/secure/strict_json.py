"""The JSON that torchhefl reads: one parser with the same rules for every header and file.

Every JSON text the library reads from another party or from disk (wire-format headers, hence
checkpoints; Paillier key files) goes through :func:`loads`, which accepts only what torchhefl's
own writers produce (``json.dumps(..., allow_nan=False)``) and refuses the rest with
:class:`~torchhefl.exceptions.MalformedMessageError`, never another error:

* integers of at most :data:`MAX_INT_DIGITS` digits (Python's own limit, 4,300, would raise a plain
  ``ValueError``; every integer torchhefl writes is below 2^64, so 20 digits, and at most 308
  digits also means that ``float(x)`` of any accepted integer is finite);
* finite numbers only: no ``NaN``, ``Infinity`` or ``-Infinity``, and no literal such as ``1e400``
  that overflows to infinity;
* no key twice in one object (which value would count is a matter of parser, so refuse both);
* nesting at most :data:`MAX_DEPTH` deep (torchhefl writes at most 8), measured before parsing by
  a linear scan, so a header of sixteen million ``[`` neither recurses nor raises ``RecursionError``;
* UTF-8 text, and no string holding a lone surrogate (``"\\ud800"``), which no encoder can write back.
"""

from __future__ import annotations

import json
import re

import numpy as np

from torchhefl.exceptions import MalformedMessageError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "loads"]

MAX_INT_DIGITS = 308
"""Most decimal digits an integer may have (the sign not counted)."""

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted (``[[1]]`` is 2 deep)."""

# a string literal, or an unterminated one up to the end of the text: matched left to right it
# consumes whole strings, so what is left holds only the brackets that structure the document
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads(data: bytes | bytearray | memoryview | str, *, what: str = "JSON text") -> object:
    """Parse ``data`` (UTF-8 bytes, or text) under the rules in the module docstring.

    ``what`` names the text in error messages (``"message header"``, ``"key file x.json"``).

    Raises:
        MalformedMessageError: ``data`` is not JSON under those rules; the message says why.
    """
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise MalformedMessageError(f"{what} must be bytes or text, not {type(data).__name__}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedMessageError(f"{what} is not valid JSON: not UTF-8 ({e.reason} at byte {e.start})") from None
    depth = _depth_bound(raw)
    if depth > MAX_DEPTH:
        raise MalformedMessageError(f"{what} is not valid JSON: nested {depth} deep, more than {MAX_DEPTH}")
    try:
        doc = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_object,
        )
    except MalformedMessageError as e:
        raise MalformedMessageError(f"{what} is not valid JSON: {e}") from None
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: cannot happen below MAX_DEPTH
        raise MalformedMessageError(f"{what} is not valid JSON: {e}") from None
    if _SURROGATE_ESCAPE.search(raw) and not _encodable(doc):
        raise MalformedMessageError(f"{what} is not valid JSON: a string holds a lone surrogate")
    return doc


def _depth_bound(raw: bytes) -> int:
    """How deep the arrays and objects of the JSON text ``raw`` nest (brackets inside strings not
    counted), exactly when that is beyond :data:`MAX_DEPTH`, else a bound at most :data:`MAX_DEPTH`.
    Linear time; for text that is not JSON, at least the depth a parser would reach."""
    skeleton = _STRING.sub(b'""', raw)
    opening = skeleton.count(b"[") + skeleton.count(b"{")
    if opening <= MAX_DEPTH:
        return opening
    steps = np.frombuffer(skeleton.translate(None, _NOT_BRACKETS).translate(_STEPS), dtype=np.int8)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _parse_int(literal: str) -> int:
    digits = len(literal) - literal.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise MalformedMessageError(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise MalformedMessageError(f"the number {literal[:40]!r} is beyond the float range")
    return value


def _parse_constant(name: str):
    raise MalformedMessageError(f"{name} is not a number JSON allows")


def _object(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedMessageError(f"key {key[:40]!r} appears twice in one object")
            seen.add(key)
    return out


def _encodable(node) -> bool:
    """Whether every string in ``node`` (keys too) encodes as UTF-8 (no lone surrogates)."""
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(node, dict):
        return all(_encodable(k) and _encodable(v) for k, v in node.items())
    if isinstance(node, list):
        return all(_encodable(v) for v in node)
    return True
