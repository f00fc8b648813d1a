"""The JSON key file format (no pickle): reading and checking a key file, writing one atomically.

``{"kind": "torchhefl.paillier.public", "version": 1, "bits": ..., "n": "<hex>"}`` and, for a
private key, ``"kind": "torchhefl.paillier.private"`` plus ``"p"`` and ``"q"``. Files are read by
:func:`torchhefl.secure.strict_json.loads` and replaced atomically through
:mod:`torchhefl.secure.files` (a private key file is mode 0600 from its first byte, a symlink at
its path is replaced, not followed). The key classes live in :mod:`torchhefl.secure.keys`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import gmpy2
from gmpy2 import mpz

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import strict_json
from torchhefl.secure.files import write_private_file, write_public_file
from torchhefl.secure.key_sizes import check_key_bits

__all__ = [
    "KEY_FILE_VERSION",
    "PRIVATE_KIND",
    "PUBLIC_KIND",
    "private_dict",
    "public_dict",
    "read_key_file",
    "read_modulus",
    "read_primes",
    "write_key_file",
]

KEY_FILE_VERSION = 1
PUBLIC_KIND = "torchhefl.paillier.public"
PRIVATE_KIND = "torchhefl.paillier.private"
_MAX_KEY_FILE_BYTES = 1 << 20  # a 16384-bit private key file is about 8.5 KB
_HEX = re.compile(r"[0-9a-fA-F]+")
_MAX_KEY_HEX_DIGITS = 4096  # 16384 bits


def public_dict(n: int) -> dict:
    """The JSON-able description of the public key with modulus ``n``."""
    return {"kind": PUBLIC_KIND, "version": KEY_FILE_VERSION, "bits": int(n).bit_length(), "n": format(int(n), "x")}


def private_dict(n: int, p: int, q: int) -> dict:
    """The JSON-able description of the private key ``(p, q)`` of ``n``."""
    d = public_dict(n)
    d.update(kind=PRIVATE_KIND, p=format(int(p), "x"), q=format(int(q), "x"))
    return d


def write_key_file(path: str | os.PathLike, obj: dict, *, private: bool) -> None:
    """Write ``obj`` as JSON to ``path``, replacing it atomically (mode 0600 if ``private``, else 0644)."""
    data = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
    (write_private_file if private else write_public_file)(path, data)


def read_key_file(path: str | os.PathLike, kind: str) -> dict:
    """The JSON object of the key file at ``path``, which must be of ``kind`` and this version."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(_MAX_KEY_FILE_BYTES + 1)
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise MalformedMessageError(f"{path}: not a torchhefl key file (larger than {_MAX_KEY_FILE_BYTES} bytes)")
    try:
        d = strict_json.loads(raw, what="its text")
    except MalformedMessageError as e:
        raise MalformedMessageError(f"{path}: not a torchhefl key file ({e})") from None
    if not isinstance(d, dict) or d.get("kind") not in (PUBLIC_KIND, PRIVATE_KIND):
        raise MalformedMessageError(f"{path}: not a torchhefl key file (missing or unknown 'kind')")
    if d["kind"] != kind:
        what = "private" if d["kind"] == PRIVATE_KIND else "public"
        raise MalformedMessageError(
            f"{path}: this is a {what} key file, expected a {'private' if kind == PRIVATE_KIND else 'public'} one"
        )
    version = d.get("version")
    if type(version) is not int or version != KEY_FILE_VERSION:
        raise MalformedMessageError(f"{path}: unsupported key file version {version!r} (this build reads {KEY_FILE_VERSION})")
    return d


def _hex_field(d: dict, name: str, path) -> mpz:
    v = d.get(name)
    if not isinstance(v, str) or not v or len(v) > _MAX_KEY_HEX_DIGITS:
        raise MalformedMessageError(f"{path}: field {name!r} must be a hexadecimal string of at most {_MAX_KEY_HEX_DIGITS} digits")
    if not _HEX.fullmatch(v):
        raise MalformedMessageError(f"{path}: field {name!r} is not valid hexadecimal")
    x = mpz(int(v, 16))
    if x <= 0:
        raise MalformedMessageError(f"{path}: field {name!r} must be positive")
    return x


def read_modulus(d: dict, path, *, allow_insecure: bool) -> mpz:
    """The checked modulus ``n`` of a key file's object ``d`` (read from ``path``)."""
    n = _hex_field(d, "n", path)
    bits = d.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or n.bit_length() != bits:
        raise MalformedMessageError(f"{path}: 'bits' does not match the size of n ({n.bit_length()} bits)")
    if n % 2 == 0 or gmpy2.is_prime(n):
        raise MalformedMessageError(f"{path}: n is not a valid Paillier modulus")
    try:
        check_key_bits(bits, allow_insecure, stacklevel=5)
    except ValueError as e:
        raise MalformedMessageError(f"{path}: {e}") from None
    return n


def read_primes(d: dict, path, n: int) -> tuple[mpz, mpz]:
    """The checked primes ``p, q`` of a private key file's object ``d``, whose product must be ``n``."""
    p, q = _hex_field(d, "p", path), _hex_field(d, "q", path)
    if p * q != n:
        raise MalformedMessageError(f"{path}: p * q does not equal n (corrupt or mismatched private key)")
    if p == q or not gmpy2.is_prime(p, 50) or not gmpy2.is_prime(q, 50):
        raise MalformedMessageError(f"{path}: p and q must be distinct primes")
    return p, q
