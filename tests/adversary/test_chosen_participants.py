"""A server that picks the participant set of a round, to shrink the masked sum to one site.

With the server's key, each upload is ``Enc(n_k * theta_k + mask_k)``; over one site the pairwise
masks are zero. A deviating server skips its own threshold and lists too few sites, or adds a ghost
site whose keys it made itself. Sites refuse any set that is not a subset of the roster, or that
is smaller than the threshold (a strict majority of the roster, never fewer than 2), at every step:
the keys they share towards, the upload's participants, the survivor set.
"""

import pytest

from torchhefl.exceptions import ProtocolError

from torchhefl.federated.secagg.site import advertisement_bytes
from torchhefl.secure.identity import SiteIdentity
from torchhefl.secure.masking import majority_threshold
from torchhefl.secure.share_box import X25519Pair

from tests.adversary.hem import aggregated, hem_sim


@pytest.mark.parametrize(("chosen", "clients"), [(["site0"], 3), (["site0", "site1"], 5)], ids=["one-of-3", "two-of-5"])
def test_sites_refuse_to_share_towards_too_few_sites(chosen, clients):
    sim = hem_sim(clients)
    sim.server.select = lambda server_round: list(chosen)  # the deviations: its own choice of sites,
    sim.server.exchange.secagg.threshold = 1  # and no threshold of its own
    with pytest.raises(ProtocolError):
        sim.server.run_round(1)
    t = majority_threshold(clients)
    assert sim.uploads == [] and len(sim.refusals) == len(chosen)
    assert all(f"at least {t} of the roster's {clients} must take part" in r for r in sim.refusals)
    assert aggregated(sim) == []


def test_sites_refuse_an_upload_under_a_participant_set_below_the_threshold():
    """The keys and shares go out honestly; then the fit request lists site0 alone."""
    sim = hem_sim(3)
    exchange = sim.server.exchange
    honest_open = exchange.open_round
    exchange.open_round = lambda server, r, selected: honest_open(server, r, selected)[:1]
    exchange.fit_meta = lambda cid: {"secagg_shares": {}}
    with pytest.raises(ProtocolError):
        sim.server.run_round(1)
    assert sim.uploads == []
    assert sim.refusals == ["site site0 refuses the upload's participant list of 1 site(s): at least 2 of the roster's 3 must take part, or the masks hide nothing"]
    assert aggregated(sim) == []


def test_sites_refuse_a_ghost_site_whose_keys_the_server_made():
    sim = hem_sim(3)
    secagg = sim.server.exchange.secagg
    ask = secagg._ask
    ghost = SiteIdentity("ghost")

    def ask_with_a_ghost(server, ids, kind, meta, reply_kind, server_round, read):
        if kind == "secagg_shares_ins":  # relay the honest keys plus a ghost's, signed by the server itself
            mask, share, commit = X25519Pair().public_bytes(), X25519Pair().public_bytes(), b"\0" * 32
            signature = ghost.sign(advertisement_bytes(secagg.context, server_round, "ghost", mask, share, commit))
            meta = {**meta, "keys": {**meta["keys"], "ghost": {
                "mask_key": mask.hex(), "share_key": share.hex(), "seed_commit": commit.hex(), "signature": signature.hex()}}}
        return ask(server, ids, kind, meta, reply_kind, server_round, read)

    secagg._ask = ask_with_a_ghost
    with pytest.raises(ProtocolError):
        sim.server.run_round(1)
    assert sim.uploads == [] and len(sim.refusals) == 3
    assert all("refuses the round's key list with sites not on the roster: ghost" in r for r in sim.refusals)


def test_a_majority_is_a_legitimate_round():
    """The control: a strict majority (2 of 3) is a round; the sum over it is what the server gets."""
    sim = hem_sim(3)
    sim.server.select = lambda server_round: ["site0", "site1"]
    result = sim.server.run_round(1)
    assert sim.refusals == [] and result["clients"] == ["site0", "site1"] and len(sim.uploads) == 2
    assert aggregated(sim) == ["count_sum", "update_sum"]
