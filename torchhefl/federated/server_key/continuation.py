"""Where a server-key site is in one fit while it waits for a refresh, and its bytes.

A fit needs refreshes from the key-holding server, and only the server sends requests: the site
answers with a refresh request and keeps its place (a :class:`Continuation`) until the server's
answer arrives. Deployments that rebuild the site per message keep it as
:func:`encode_continuation` bytes in the site's own state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated.server_key.constants import CONTINUATION_KIND
from torchhefl.secure import EncryptedTensor, PublicKey, wire

__all__ = ["Continuation", "decode_continuation", "encode_continuation"]


@dataclass
class Continuation:
    """Where a HEM client is in one fit while it waits for a refresh: enough to carry on.

    Kept by the client between its ``refresh_req`` reply and the server's ``refresh_ins`` (in
    memory, or in a site's own state as :func:`encode_continuation` bytes). ``pending`` holds the
    target scale and the secret blinding masks of the refresh in flight; ``refreshes`` and
    ``seconds`` are the site's own record of this fit (never sent: the server counts the refreshes
    it serves itself, and a site's seconds reveal its number of steps).
    """

    server_round: int
    attempt: int
    participants: list[str]
    proximal_mu: float
    base: int
    theta: EncryptedTensor
    anchor0: EncryptedTensor | None = None
    anchor: EncryptedTensor | None = None
    step: int = 0
    seq: int = 0
    refreshes: int = 0
    products: int = 0
    pending: tuple[int, list[int]] | None = None
    seconds: dict = field(default_factory=dict)


def encode_continuation(c: Continuation) -> bytes:
    """A continuation as wire bytes (for the site's own state only: it holds secret masks)."""
    meta = {
        "round": c.server_round, "attempt": c.attempt, "participants": list(c.participants),
        "proximal_mu": c.proximal_mu, "base": c.base, "step": c.step, "seq": c.seq, "refreshes": c.refreshes,
        "products": c.products,
        "pending": None if c.pending is None else [c.pending[0], [format(m, "x") for m in c.pending[1]]],
        "seconds": dict(c.seconds),
    }
    arrays = {"theta": np.frombuffer(c.theta.to_bytes(), dtype=np.uint8)}
    if c.anchor0 is not None:
        arrays["anchor0"] = np.frombuffer(c.anchor0.to_bytes(), dtype=np.uint8)
        arrays["anchor"] = np.frombuffer(c.anchor.to_bytes(), dtype=np.uint8)
    return wire.encode(CONTINUATION_KIND, meta, arrays)


def decode_continuation(blob: bytes, pk: PublicKey) -> Continuation:
    """The continuation :func:`encode_continuation` wrote, its tensors under ``pk``.

    Raises :class:`MalformedMessageError` for bytes that do not hold one.
    """
    msg = wire.decode(blob, kind=CONTINUATION_KIND)
    m = msg.meta

    def tensor(name):
        return EncryptedTensor.from_bytes(msg.arrays[name].tobytes(), public_key=pk) if name in msg.arrays else None

    pending = m.get("pending")
    try:
        return Continuation(
            server_round=int(m["round"]), attempt=int(m["attempt"]), participants=list(m["participants"]),
            proximal_mu=float(m["proximal_mu"]), base=int(m["base"]), theta=tensor("theta"),
            anchor0=tensor("anchor0"), anchor=tensor("anchor"), step=int(m["step"]), seq=int(m["seq"]),
            refreshes=int(m["refreshes"]), products=int(m.get("products", 0)),
            pending=None if pending is None else (int(pending[0]), [int(h, 16) for h in pending[1]]),
            seconds={str(k): float(v) for k, v in m["seconds"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MalformedMessageError(f"the site's saved training state is unreadable: {e}") from None
