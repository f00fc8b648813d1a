"""A server that picks the participant list of a round, to shrink the masked sum to one site.

With the server's key, each upload is ``Enc(n_k * theta_k + mask_k)`` where the pairwise masks of
the listed participants cancel in their sum. A server that lists one site alone gets a zero mask and
decrypts that site's update and row count. Sites refuse any list that is not a subset of the sites
they agreed keys with or is smaller than a strict majority of them (never fewer than 2).
"""

import warnings

import pytest

from torchhefl.exceptions import ProtocolError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.messages import decode_request, payload_of
from torchhefl.federated.server_key import ServerKeyClient
from torchhefl.secure import InsecureKeyWarning, wire
from torchhefl.secure.masking import majority_threshold
from torchhefl.secure.tensor import array_to_cts


def _attack(chosen: list[str], clients: int = 3):
    """Run round 1 with the server's ``select`` replaced by ``chosen``; returns what it got."""
    cfg = TrainConfig(mode="he", key_holder="server", clip_norm=None, rounds=1, clients=clients, key_bits=512,
                      extra={"allow_insecure_keys": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = build(cfg)
    sim.server.setup()
    sim.server.select = lambda server_round: list(chosen)  # the one behaviour changed
    uploads, refusals = [], []
    send = sim.transport.send

    def recording_send(cid, request):
        try:
            reply = send(cid, request)
        except ProtocolError as e:
            refusals.append(str(e))
            raise
        if decode_request(reply).kind == "fit_res":
            uploads.append(reply)
        return reply

    sim.transport.send = recording_send
    try:
        sim.server.run_round(1)
    except ProtocolError:
        pass
    return sim, uploads, refusals


def _decrypt_alone(sim, reply) -> list[int]:
    """What the key-holding server reads from one upload decrypted on its own (centred mod n)."""
    exchange = sim.server.exchange
    pk, sk = exchange.public_key, exchange._private_key
    msg = wire.decode(payload_of(decode_request(reply)))
    cts = array_to_cts(msg.arrays["weights"], pk, exchange.theta.numel()) + array_to_cts(msg.arrays["count"], pk, 1)
    n = int(pk.n)
    return [(v - n if v > n // 2 else v) for v in (int(sk.decrypt_raw(c)) % n for c in cts)]


def test_the_attack_reads_a_site_that_uploads_alone(monkeypatch):
    """The control: a site without the check uploads under ``["site0"]`` and its count is read exactly."""
    monkeypatch.setattr(ServerKeyClient, "_check_participants", lambda self, participants: None)
    sim, uploads, _ = _attack(["site0"])
    assert len(uploads) >= 1
    assert _decrypt_alone(sim, uploads[0])[-1] == sim.clients[0].num_examples


@pytest.mark.parametrize(
    ("chosen", "clients"), [(["site0"], 3), (["site0", "site1"], 5), (["site0", "ghost"], 3)], ids=["one-of-3", "two-of-5", "a-ghost"]
)
def test_sites_refuse_a_participant_list_below_the_threshold_or_outside_the_roster(chosen, clients):
    sim, uploads, refusals = _attack(chosen, clients)
    assert uploads == []  # nothing to decrypt, in any attempt
    assert refusals
    if "ghost" in chosen:
        assert all("refuses participants it agreed no key with: ghost" in r for r in refusals)
    else:
        t = majority_threshold(clients)
        assert all(f"at least {t} of the {clients} sites that agreed keys must take part" in r for r in refusals)
    assert [p for p, _ in sim.server.exchange.decryptions if p not in ("refresh", "statistics_sum")] == []


def test_a_majority_is_accepted():
    """What still holds: a list of a strict majority is a legitimate round (a faked drop of the rest
    is the attack secure aggregation with dropout recovery closes; see the README's threat table)."""
    sim, uploads, refusals = _attack(["site0", "site1"], 3)
    assert refusals == [] and len(uploads) == 2
