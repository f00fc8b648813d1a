"""One round of secure aggregation between SecAggSite objects and the server's unmasking, without a
network: the masks of the uploads that arrived come off exactly, and each rule a site keeps is
refused by its message."""

import random

import pytest

from torchhefl.exceptions import ProtocolError
from torchhefl.federated.secagg import SecAggServer, SecAggSite
from torchhefl.secure.identity import Roster, SiteIdentity

MODULUS = (1 << 127) - 1  # a prime standing in for the Paillier n
CONTEXT = "ab" * 32
COUNT = 5


class _Reply:
    def __init__(self, meta):
        self.meta = meta


class _Relay:
    """The part of ``Server`` that SecAggServer uses: ``broadcast`` to the sites' handlers."""

    def __init__(self, sites, handlers):
        self.sites, self.handlers, self.gone = sites, handlers, set()

    def broadcast(self, ids, request, reply_kind, *, server_round=None):
        from torchhefl.federated.messages import decode_request

        msg = decode_request(request)
        out = {}
        for cid in ids:
            if cid in self.gone:
                continue
            try:
                out[cid] = _Reply({"round": msg.meta["round"], **self.handlers[msg.kind](self.sites[cid], msg.meta)})
            except ProtocolError:
                continue
        return out


HANDLERS = {
    "secagg_keys_ins": lambda s, m: s.advertise(m["round"]),
    "secagg_shares_ins": lambda s, m: {"shares": s.share(m["round"], m["keys"])},
    "secagg_check_ins": lambda s, m: {"signature": s.sign_survivors(m["round"], m["survivors"])},
    "secagg_unmask_ins": lambda s, m: s.reveal(m["round"], m["survivors"], m["signatures"]),
}


def make_federation(count: int = 5):
    """A roster of ``count`` sites, their SecAggSite objects and the server's SecAggServer."""
    identities = [SiteIdentity(f"site{i}") for i in range(count)]
    roster = Roster.of(identities)
    sites = {i.cid: SecAggSite(i, roster, context=CONTEXT) for i in identities}
    return roster, sites, SecAggServer(roster, context=CONTEXT)


@pytest.fixture
def federation():
    return make_federation()


def _round(roster, sites, server, *, drop_before_upload=(), drop_after_upload=(), server_round=1):
    relay = _Relay(sites, HANDLERS)
    rng = random.Random(server_round)
    inputs = {cid: [rng.randrange(1 << 40) for _ in range(COUNT)] for cid in sites}
    participants = server.open_round(relay, server_round, list(sites))
    uploads = {}
    for cid in participants:
        if cid in drop_before_upload:
            continue
        sites[cid].take_shares(server_round, participants, server.fit_meta(cid)["secagg_shares"])
        mask = sites[cid].mask(server_round, COUNT, MODULUS)
        uploads[cid] = [(x + m) % MODULUS for x, m in zip(inputs[cid], mask)]
    relay.gone = set(drop_after_upload)
    correction = server.close_round(relay, server_round, list(uploads), COUNT, MODULUS)
    total = [(sum(col) - m) % MODULUS for col, m in zip(zip(*uploads.values()), correction)]
    return total, inputs, uploads


@pytest.mark.parametrize(
    ("before", "after"), [((), ()), (("site1",), ()), (("site1", "site3"), ()), ((), ("site2", "site4")), (("site0",), ("site4",))]
)
def test_the_sum_is_exactly_the_inputs_of_the_uploads_that_arrived(federation, before, after):
    roster, sites, server = federation
    total, inputs, uploads = _round(roster, sites, server, drop_before_upload=before, drop_after_upload=after)
    assert set(uploads) == set(sites) - set(before)
    assert total == [sum(inputs[c][j] for c in uploads) % MODULUS for j in range(COUNT)]
    # and each upload alone is masked: no entry equals its input
    assert all(u != inputs[c] for c, u in uploads.items())


def test_masks_without_the_correction_do_not_cancel(federation):
    """Each upload carries a self-mask: the plain sum of all uploads is not the sum of the inputs."""
    roster, sites, server = federation
    total, inputs, uploads = _round(roster, sites, server)
    plain = [sum(col) % MODULUS for col in zip(*uploads.values())]
    assert plain != total


def test_a_site_keeps_its_state_across_a_restart(federation):
    roster, sites, server = federation
    relay = _Relay(sites, HANDLERS)
    participants = server.open_round(relay, 1, list(sites))
    for cid, site in list(sites.items()):  # each site rebuilt from its saved state, as a Flower site is
        again = SecAggSite(site.identity, roster, context=CONTEXT)
        again.restore(site.to_bytes())
        sites[cid] = relay.sites[cid] = again
    for cid in participants:
        sites[cid].take_shares(1, participants, server.fit_meta(cid)["secagg_shares"])
    masks = {cid: sites[cid].mask(1, COUNT, MODULUS) for cid in participants}
    correction = server.close_round(relay, 1, participants, COUNT, MODULUS)
    assert [(sum(col) - m) % MODULUS for col, m in zip(zip(*masks.values()), correction)] == [0] * COUNT


def test_the_rules_a_site_keeps(federation):
    roster, sites, server = federation
    site = sites["site0"]
    relay = _Relay(sites, HANDLERS)
    participants = server.open_round(relay, 1, list(sites))
    shares = server.fit_meta("site0")["secagg_shares"]
    with pytest.raises(ProtocolError, match="upload's participant list of 2 site"):
        site.take_shares(1, participants[:2], {"site1": shares["site1"]})
    with pytest.raises(ProtocolError, match="sites not on the roster: ghost"):
        site.take_shares(1, participants + ["ghost"], shares)
    with pytest.raises(ProtocolError, match="does not open"):
        site.take_shares(1, participants, {**shares, "site1": shares["site2"]})
    with pytest.raises(ProtocolError, match="did not upload in round 1"):
        site.sign_survivors(1, participants)
    site.take_shares(1, participants, shares)
    site.mask(1, COUNT, MODULUS)
    with pytest.raises(ProtocolError, match="never uploads twice for one round"):
        site.mask(1, COUNT, MODULUS)
    with pytest.raises(ProtocolError, match="already uploaded in round 1"):
        site.advertise(1)
    with pytest.raises(ProtocolError, match="signed no survivor set"):
        site.reveal(1, participants, {})
    signature = site.sign_survivors(1, participants[:3])
    with pytest.raises(ProtocolError, match="already signed another survivor set"):
        site.sign_survivors(1, participants)
    with pytest.raises(ProtocolError, match="sees 1 signature"):
        site.reveal(1, participants[:3], {"site0": signature})
    with pytest.raises(ProtocolError, match="does not carry its signature"):
        site.reveal(1, participants[:3], {"site0": signature, "site1": signature, "site2": signature})
    with pytest.raises(ProtocolError, match="signatures include sites outside it"):
        site.reveal(1, participants[:3], {"site0": signature, "site4": signature})
    with pytest.raises(ProtocolError, match="signed another survivor set"):
        site.reveal(1, participants[:4], {"site0": signature})
    with pytest.raises(ProtocolError, match="its keys are for round 1"):
        site.sign_survivors(2, participants[:3])
    with pytest.raises(ValueError, match="a threshold of 1"):
        SecAggSite(site.identity, roster, context=CONTEXT, threshold=1)

