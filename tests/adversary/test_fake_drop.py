"""A server that fakes a dropout after every upload arrived, to read the "dropped" site's update.

Before secure aggregation, a site treated as missing made the server re-run the round without it,
and (all uploads of attempt 1) minus (the re-run's sum) was that site's ``n_k * theta_k``. Now no
round is re-run: a site uploads once per round. The server's other move is to announce a survivor
set without the site, so that the others reveal the site's mask key, then remove its pairwise
masks from the upload it did receive. That upload still carries the site's self-mask, whose seed
is revealed only for survivors: never both for one site. A second survivor set, with the site in
it, is refused.
"""

import pytest

from torchhefl.exceptions import ProtocolError
from torchhefl.federated.secagg import SecAggSite
from torchhefl.federated.secagg.site import mask_seed, update_label
from torchhefl.federated.messages import decode_request
from torchhefl.secure.masking import prg_ints
from torchhefl.secure.shamir import combine_secret

from tests.adversary.hem import decrypt_upload, hem_sim


def _fake_drop(victim: str = "site1"):
    """Round 1 with every upload received, then a survivor set without ``victim``; returns the
    simulation, the victim's upload and the shares the others revealed."""
    sim = hem_sim(3)
    exchange = sim.server.exchange
    close = exchange.close_round
    revealed = {}
    send = sim.transport.send

    def keep_reveals(cid, request):
        reply = send(cid, request)
        msg = decode_request(reply)
        if msg.kind == "secagg_unmask_res":
            revealed[cid] = msg.meta
        return reply

    sim.transport.send = keep_reveals
    exchange.close_round = lambda server, r, uploaded: close(server, r, [c for c in uploaded if c != victim])  # the lie
    with pytest.raises(ProtocolError):  # the honest sum of three does not unmask with the masks of two
        sim.server.run_round(1)
    upload = dict(sim.uploads)[victim]
    return sim, upload, revealed


def _strip_pairwise(sim, upload: bytes, revealed: dict, victim: str) -> list[int]:
    """The attacker's best: the victim's upload decrypted alone, less the pairwise masks it can now
    rebuild from the victim's revealed mask key (and less its self-mask, if that seed was revealed too)."""
    secagg = sim.server.exchange.secagg
    roster, n = secagg.roster, int(sim.server.exchange.public_key.n)
    values = decrypt_upload(sim, upload)
    count = len(values)
    label = update_label(1, secagg.shared)
    key = combine_secret({roster.index(c): bytes.fromhex(m["key_shares"][victim]) for c, m in revealed.items()}, 32)
    for peer in secagg.shared:
        if peer == victim:
            continue
        seed = mask_seed(secagg.context, 1, key, victim, peer, bytes.fromhex(secagg._adverts[peer]["mask_key"]))
        sign = 1 if victim < peer else -1
        values = [(v - sign * m) % n for v, m in zip(values, prg_ints(seed, label, count, n))]
    seed_shares = {roster.index(c): bytes.fromhex(m["seed_shares"][victim]) for c, m in revealed.items() if victim in m["seed_shares"]}
    if len(seed_shares) >= secagg.threshold:
        seed = combine_secret(seed_shares, 16)
        values = [(v - m) % n for v, m in zip(values, prg_ints(seed, label, count, n))]
    return [v - n if v > n // 2 else v for v in values]


def test_a_faked_drop_leaves_the_sites_update_under_its_self_mask():
    sim, upload, revealed = _fake_drop()
    assert set(revealed) == {"site0", "site2"} and all("site1" in m["key_shares"] for m in revealed.values())
    assert all("site1" not in m["seed_shares"] for m in revealed.values())  # never both for one site
    values = _strip_pairwise(sim, upload, revealed, "site1")
    bits = sim.server.exchange.public_key.bits
    assert min(abs(v) for v in values) > 1 << (bits - 40)  # uniform in Z_n: no closer than chance
    assert values[-1] != sim.clients[1].num_examples


def test_the_control_both_shares_of_one_site_give_its_update_away(monkeypatch):
    """Shows the test above could fail: sites that also revealed the dropped site's self-mask seed
    would hand the server that site's exact row count."""
    honest = SecAggSite.reveal

    def reveal_both(self, server_round, survivors, signatures):
        out = honest(self, server_round, survivors, signatures)
        c = self.current
        out["seed_shares"].update({u: c.held[u][:16].hex() for u in c.participants if u not in survivors})
        return out

    monkeypatch.setattr(SecAggSite, "reveal", reveal_both)
    sim, upload, revealed = _fake_drop()
    values = _strip_pairwise(sim, upload, revealed, "site1")
    assert values[-1] == sim.clients[1].num_examples


def test_no_second_survivor_set_and_no_second_upload_for_the_round():
    sim, _, _ = _fake_drop()
    server, secagg = sim.server, sim.server.exchange.secagg
    with pytest.raises(ProtocolError):  # a survivor set with site1 back in: both signers refuse, too few remain
        secagg.close_round(server, 1, ["site0", "site1", "site2"], 31, int(server.exchange.public_key.n))
    assert any("already signed another survivor set for round 1" in r for r in sim.refusals)
    before = len(sim.uploads)
    with pytest.raises(ProtocolError):  # and a re-run of round 1: no site keys it again
        server.run_round(1)
    assert len(sim.uploads) == before
    assert sum("already uploaded in round 1" in r for r in sim.refusals) == 3
