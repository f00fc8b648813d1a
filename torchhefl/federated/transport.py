"""The in-process transport: the server's requests reach clients as bytes, and replies come back as bytes.

It is the network path without the network: every message is a complete wire-format byte string,
so the byte counts it reports are the ones a deployment would send.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError, ProtocolError

__all__ = ["CLIENT_FAULTS", "ClientUnavailableError", "InProcessTransport", "Transport", "deliver"]


class ClientUnavailableError(ConnectionError):
    """A client did not answer (it crashed, dropped out, or its reply was lost)."""


#: what a misbehaving or vanished client can raise; anything else is a bug and propagates
CLIENT_FAULTS = (ClientUnavailableError, MalformedMessageError, KeyMismatchError, ProtocolError)


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


def deliver(transport: Transport, requests: Mapping[str, bytes]) -> Iterator[tuple[str, bytes | Exception]]:
    """Each client's reply to its request, or the client fault it raised, in the order of ``requests``.

    A network transport gets every request out at once: ``send_all(ids, request)`` when all clients
    get the same bytes, ``send_each({cid: request})`` otherwise (each returns ``{cid: reply bytes or
    exception}``); any other transport asks the clients one by one with ``send``.
    """
    requests = dict(requests)
    ids = list(requests)
    send_all, send_each = getattr(transport, "send_all", None), getattr(transport, "send_each", None)
    answers: Mapping[str, bytes | Exception] | None = None
    if ids and send_all is not None and len(set(requests.values())) == 1:
        answers = send_all(ids, requests[ids[0]])
    elif send_each is not None:
        answers = send_each(requests)
    if answers is not None:
        for cid in ids:
            yield cid, answers[cid]
        return
    for cid, request in requests.items():
        try:
            answer: bytes | Exception = transport.send(cid, request)
        except CLIENT_FAULTS as e:
            answer = e
        yield cid, answer
