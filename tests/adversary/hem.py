"""A server-key (HEM) simulation whose transport records every site's requests, replies and refusals,
for the malicious servers of the secure-aggregation tests."""

import warnings

from torchhefl.exceptions import ProtocolError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.messages import decode_request, payload_of
from torchhefl.secure import InsecureKeyWarning, wire
from torchhefl.secure.tensor import array_to_cts


def hem_sim(clients: int = 3, rounds: int = 1, *, setup: bool = True):
    """A server-key simulation (set up unless ``setup`` is false); ``sim.uploads`` collects
    ``(cid, fit_res bytes)`` and ``sim.refusals`` the protocol refusals the sites raised."""
    cfg = TrainConfig(mode="he", key_holder="server", clip_norm=None, rounds=rounds, clients=clients, key_bits=512,
                      extra={"allow_insecure_keys": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = build(cfg)
    sim.uploads, sim.refusals = [], []
    send = sim.transport.send

    def recording_send(cid, request):
        try:
            reply = send(cid, request)
        except ProtocolError as e:
            sim.refusals.append(str(e))
            raise
        if decode_request(reply).kind == "fit_res":
            sim.uploads.append((cid, reply))
        return reply

    sim.transport.send = recording_send
    if setup:
        sim.server.setup()
    return sim


def decrypt_upload(sim, reply) -> list[int]:
    """What the key-holding server reads from one upload decrypted on its own (centred mod n):
    the weights, then the count."""
    exchange = sim.server.exchange
    pk, sk = exchange.public_key, exchange._private_key
    msg = wire.decode(payload_of(decode_request(reply)))
    cts = array_to_cts(msg.arrays["weights"], pk, exchange.theta.numel()) + array_to_cts(msg.arrays["count"], pk, 1)
    n = int(pk.n)
    return [(v - n if v > n // 2 else v) for v in (int(sk.decrypt_raw(c)) % n for c in cts)]


def decrypt_product(sim, replies, minus=None) -> list[int]:
    """The decryption of the product of ``replies`` (their plaintext sum mod n, centred), less ``minus``."""
    rows = [decrypt_upload(sim, r) for r in replies]
    n = int(sim.server.exchange.public_key.n)
    minus = minus or [0] * len(rows[0])
    out = []
    for col, m in zip(zip(*rows), minus):
        v = (sum(col) - m) % n
        out.append(v - n if v > n // 2 else v)
    return out


def aggregated(sim) -> list[int]:
    """Nothing but the decryptions the server made for aggregation (purposes other than set-up and refresh)."""
    return [p for p, _ in sim.server.exchange.decryptions if p not in ("refresh", "statistics_sum")]
