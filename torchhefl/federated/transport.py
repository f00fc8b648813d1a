"""The in-process transport: the server's requests reach clients as bytes, and replies come back as bytes.

It is the network path without the network: every message is a complete wire-format byte string,
so the byte counts it reports are the ones a deployment would send.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["ClientUnavailableError", "InProcessTransport", "Transport"]


class ClientUnavailableError(ConnectionError):
    """A client did not answer (it crashed, dropped out, or its reply was lost)."""


class Transport(Protocol):
    """What the server needs from a transport."""

    client_ids: list[str]
    bytes_up: int
    bytes_down: int

    def send(self, cid: str, request: bytes) -> bytes: ...


class _Handler(Protocol):
    def handle(self, request: bytes) -> bytes: ...


class InProcessTransport:
    """Delivers requests to client objects in this process.

    Args:
        clients: client id -> object with ``handle(bytes) -> bytes``.

    ``bytes_down`` counts server-to-client bytes, ``bytes_up`` client-to-server bytes.
    ``fail`` names clients that are treated as unreachable (for dropout tests and simulations).
    """

    def __init__(self, clients: Mapping[str, _Handler]) -> None:
        self.clients = dict(clients)
        self.client_ids = list(self.clients)
        self.bytes_up = 0
        self.bytes_down = 0
        self.fail: set[str] = set()

    def send(self, cid: str, request: bytes) -> bytes:
        if not isinstance(request, (bytes, bytearray)):
            raise TypeError("the transport carries bytes only")
        if cid in self.fail or cid not in self.clients:
            raise ClientUnavailableError(f"client {cid} is unreachable")
        self.bytes_down += len(request)
        reply = self.clients[cid].handle(bytes(request))
        if not isinstance(reply, (bytes, bytearray)):
            raise TypeError(f"client {cid} replied with {type(reply).__name__}, not bytes")
        self.bytes_up += len(reply)
        return bytes(reply)
