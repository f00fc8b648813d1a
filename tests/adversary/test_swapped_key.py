"""A server that swaps the keys it relays between sites, to open what they seal for each other.

Secure aggregation's shares travel through the server sealed under keys the sites agree through
it. A server that hands site0 its own share keys in place of its peers' opens every share site0
seals, rebuilds site0's self-mask seed and mask key from them, and reads site0's update. Every
advertised key is signed with the site's identity key, and site0 checks each against the roster:
it refuses the swapped list, naming the peer, and takes no part in the round.
"""

import json
import os

import pytest

from torchhefl.exceptions import ProtocolError
from torchhefl.federated.messages import decode_request, encode_request, payload_of
from torchhefl.federated.secagg.site import mask_seed, share_context, update_label
from torchhefl.secure.identity import Roster
from torchhefl.secure.masking import prg_ints
from torchhefl.secure.shamir import combine_secret
from torchhefl.secure.share_box import X25519Pair, agree, open_sealed, seal

from tests.adversary.hem import decrypt_upload, hem_sim


def _box_info(context, server_round, sender, receiver):
    return b"torchhefl/secagg/box/v1" + json.dumps([context, server_round, sorted([sender, receiver])]).encode()


def _swap_share_keys(victim: str = "site0"):
    """Round 1 where the victim alone is relayed the server's own share keys for its peers; returns
    the simulation, the server's share key pairs and what the victim sealed for its peers."""
    sim = hem_sim(3)
    mine = {cid: X25519Pair() for cid in sim.transport.client_ids if cid != victim}
    sealed = {}
    send = sim.transport.send

    def swapping_send(cid, request):
        msg = decode_request(request)
        if cid == victim and msg.kind == "secagg_shares_ins":  # the one behaviour changed
            keys = {c: dict(a, share_key=mine[c].public_bytes().hex()) if c in mine else a for c, a in msg.meta["keys"].items()}
            request = encode_request(msg.kind, {**msg.meta, "keys": keys})
        if cid == victim and msg.kind == "fit_ins":  # boxes "from" the peers under the server's keys
            ctx, own = sim.server.exchange.secagg.context, bytes.fromhex(sim.server.exchange.secagg._adverts[victim]["share_key"])
            boxes = {
                peer: seal(agree(mine[peer].private_bytes(), own, _box_info(ctx, 1, peer, victim)), os.urandom(48),
                           share_context(ctx, 1, peer, victim)).hex()
                for peer in msg.meta["secagg_shares"]
            }
            payload = payload_of(msg) if "payload" in msg.arrays else None
            request = encode_request(msg.kind, {**msg.meta, "secagg_shares": boxes}, payload)
        reply = send(cid, request)
        if cid == victim and msg.kind == "secagg_shares_ins":
            sealed.update(decode_request(reply).meta["shares"])
        return reply

    sim.transport.send = swapping_send
    try:
        result = sim.server.run_round(1)
    except ProtocolError:  # the sum fails once the shares were tampered with: the attacker has what it came for
        result = None
    return sim, result, mine, sealed


def _read_victim(sim, mine, sealed, victim="site0") -> list[int]:
    """Open the victim's sealed shares with the server's keys, rebuild its secrets, unmask its upload."""
    secagg = sim.server.exchange.secagg
    roster, ctx, n = secagg.roster, secagg.context, int(sim.server.exchange.public_key.n)
    share_key = bytes.fromhex(secagg._adverts[victim]["share_key"])
    shares = {}
    for peer, blob in sealed.items():
        box = agree(mine[peer].private_bytes(), share_key, _box_info(ctx, 1, victim, peer))
        shares[roster.index(peer)] = open_sealed(box, bytes.fromhex(blob), share_context(ctx, 1, victim, peer))
    seed = combine_secret({i: s[:16] for i, s in shares.items()}, 16)
    key = combine_secret({i: s[16:] for i, s in shares.items()}, 32)
    values = decrypt_upload(sim, dict(sim.uploads)[victim])
    label = update_label(1, secagg.shared)
    values = [(v - m) % n for v, m in zip(values, prg_ints(seed, label, len(values), n))]
    for peer in secagg.shared:
        if peer != victim:
            s = mask_seed(ctx, 1, key, victim, peer, bytes.fromhex(secagg._adverts[peer]["mask_key"]))
            sign = 1 if victim < peer else -1
            values = [(v - sign * m) % n for v, m in zip(values, prg_ints(s, label, len(values), n))]
    return [v - n if v > n // 2 else v for v in values]


def test_a_site_refuses_swapped_keys_naming_the_peer():
    sim, result, _, sealed = _swap_share_keys()
    assert sealed == {} and "site0" not in dict(sim.uploads)
    assert sim.refusals == ["the key or message relayed for site 'site1' does not carry its signature (swapped or forged)"]
    assert result["clients"] == ["site1", "site2"]  # the round goes on without the site that refused


def test_the_control_a_site_that_trusts_the_relay_gives_its_update_away(monkeypatch):
    """Shows the test above could fail: without the roster check the server opens site0's shares."""
    monkeypatch.setattr(Roster, "verify", lambda self, cid, message, signature: None)
    sim, _, mine, sealed = _swap_share_keys()
    assert set(sealed) == {"site1", "site2"}
    values = _read_victim(sim, mine, sealed)
    assert values[-1] == sim.clients[0].num_examples


def test_a_site_refuses_a_swapped_set_up_key():
    """The statistics' set-up keys are signed too: a swapped one stops the set-up; the site names the peer."""
    sim = hem_sim(3, setup=False)
    send = sim.transport.send
    fake = X25519Pair().public_bytes().hex()

    def swapping_send(cid, request):
        msg = decode_request(request)
        if cid == "site0" and msg.kind == "hem_peers_ins":
            peers = {c: dict(p, x25519=fake) if c == "site1" else p for c, p in msg.meta["peers"].items()}
            request = encode_request(msg.kind, {**msg.meta, "peers": peers})
        return send(cid, request)

    sim.transport.send = swapping_send
    with pytest.raises(ProtocolError, match="needs every site"):
        sim.server.setup()
    assert sim.refusals == ["the key or message relayed for site 'site1' does not carry its signature (swapped or forged)"]
