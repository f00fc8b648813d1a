"""The server's transport over a Flower Grid: each request is a Flower message to one SuperNode."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated.transport import ClientUnavailableError
from torchhefl.flower.records import MESSAGE_TYPE, pack, unpack

__all__ = ["DEFAULT_POLL_INTERVAL", "DEFAULT_REPLY_TIMEOUT", "FlowerTransport", "exchange"]

#: seconds between two looks for replies at the SuperLink
DEFAULT_POLL_INTERVAL = 0.2
#: seconds a request may wait for its reply before the client counts as unreachable
DEFAULT_REPLY_TIMEOUT = 600.0


def exchange(
    grid: Grid,
    messages: Mapping[str, tuple[int, str, RecordDict]],
    *,
    timeout: float,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    group_id: str = "",
) -> dict[str, Message]:
    """Send ``{name: (node id, message type, content)}`` at once; the replies that came within ``timeout`` s.

    Like ``Grid.send_and_receive``, but it looks for replies every ``poll_interval`` seconds and
    returns them by name.
    """
    if not messages:
        return {}
    outgoing = [
        Message(content=content, dst_node_id=node_id, message_type=message_type, group_id=group_id)
        for node_id, message_type, content in messages.values()
    ]
    ids = list(grid.push_messages(outgoing))
    pending = {mid: name for mid, name in zip(ids, messages) if mid}
    replies: dict[str, Message] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            name = pending.pop(reply.metadata.reply_to_message_id, None)
            if name is not None:
                replies[name] = reply
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_interval)
    return replies


class FlowerTransport:
    """Delivers the server's requests to SuperNodes through a Flower ``Grid``.

    Args:
        grid: the ServerApp's grid.
        nodes: client id -> Flower node id of the SuperNode that runs that site.
        timeout: seconds to wait for a reply (default 600).
        poll_interval: seconds between looks for replies (default 0.2).

    A client that does not answer in time, or whose ClientApp raised, is reported as
    :class:`~torchhefl.federated.transport.ClientUnavailableError`, so the server leaves it out
    of the round as it does in simulation. ``bytes_down``/``bytes_up`` count torchhefl message
    bytes (Flower's own framing is not counted).
    """

    def __init__(
        self,
        grid: Grid,
        nodes: Mapping[str, int],
        *,
        timeout: float = DEFAULT_REPLY_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if timeout <= 0 or poll_interval <= 0:
            raise ValueError("timeout and poll_interval must be positive")
        self.grid = grid
        self.nodes = dict(nodes)
        self.client_ids = list(self.nodes)
        self.timeout, self.poll_interval = timeout, poll_interval
        self.bytes_up = 0
        self.bytes_down = 0

    def send(self, cid: str, request: bytes) -> bytes:
        answer = self.send_all([cid], request)[cid]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def send_all(self, ids: Sequence[str], request: bytes) -> dict[str, bytes | Exception]:
        """Send ``request`` to every client in ``ids`` at once; each one's reply bytes, or why there is none."""
        if not isinstance(request, (bytes, bytearray)):
            raise TypeError("the transport carries bytes only")
        return self.send_each({cid: request for cid in ids})

    def send_each(self, requests: Mapping[str, bytes]) -> dict[str, bytes | Exception]:
        """Send each client its own request (``{cid: bytes}``) at once; each one's reply bytes, or why there is none."""
        answers: dict[str, bytes | Exception] = {}
        outgoing = {}
        for cid, request in requests.items():
            if not isinstance(request, (bytes, bytearray)):
                raise TypeError("the transport carries bytes only")
            if cid in self.nodes:
                outgoing[cid] = (self.nodes[cid], MESSAGE_TYPE, pack(request))
                self.bytes_down += len(request)
            else:
                answers[cid] = ClientUnavailableError(f"client {cid} has no SuperNode")
        replies = exchange(self.grid, outgoing, timeout=self.timeout, poll_interval=self.poll_interval)
        for cid in outgoing:
            reply = replies.get(cid)
            if reply is None:
                answers[cid] = ClientUnavailableError(f"client {cid} did not answer within {self.timeout:g}s")
            elif reply.has_error():
                answers[cid] = ClientUnavailableError(f"client {cid} failed: {reply.error.reason}")
            else:
                try:
                    blob = unpack(reply.content)
                except MalformedMessageError as e:
                    answers[cid] = e
                    continue
                self.bytes_up += len(blob)
                answers[cid] = blob
        return {cid: answers[cid] for cid in requests}
