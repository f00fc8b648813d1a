"""A site that reveals altered Shamir shares in secure aggregation's unmasking step
(``--key-holder server``), to make the round fail for everyone or to corrupt the sum.

Every rebuilt secret is checked against its commitment (the self-mask seed's hash, the signed
X25519 public key); a bad share is outvoted by the other revealers' shares, the round sums exactly
the uploads that arrived, and the liar is named. With fewer than ``t`` good shares the round
stops (no decryption of a sum the masks were not taken off).
"""

import pytest

from torchhefl.exceptions import ProtocolError

from tests.federated.secagg.test_site import COUNT, HANDLERS, MODULUS, _round, make_federation


@pytest.fixture
def federation():
    return make_federation()


def _flip(hexes: dict) -> dict:
    """Each share with its second byte altered (the first byte's low bits of an X25519 key are
    clamped away, so an alteration there can rebuild an equivalent key)."""
    return {k: v[:2] + format(int(v[2:4], 16) ^ 1, "02x") + v[4:] for k, v in hexes.items()}


@pytest.mark.parametrize("drop", [(), ("site3",)])
def test_a_site_that_reveals_bad_shares_is_outvoted_and_named(federation, drop, monkeypatch):
    """One revealer's shares altered (a seed's, and a dropped site's key): the others rebuild every
    committed secret, the round sums exactly the uploads that arrived, and the liar is named."""
    roster, sites, server = federation

    def lying_reveal(site, meta):
        out = site.reveal(meta["round"], meta["survivors"], meta["signatures"])
        if site.identity.cid == "site0":
            out = {"seed_shares": _flip(out["seed_shares"]), "key_shares": _flip(out["key_shares"])}
        return out

    monkeypatch.setitem(HANDLERS, "secagg_unmask_ins", lying_reveal)
    total, inputs, uploads = _round(roster, sites, server, drop_before_upload=drop)
    assert total == [sum(inputs[c][j] for c in uploads) % MODULUS for j in range(COUNT)]
    assert server.last["bad_shares"] == ["site0"]


def test_too_many_bad_shares_still_stop_the_round(federation, monkeypatch):
    roster, sites, server = federation  # threshold 3 of 5: two honest revealers cannot rebuild

    def lying_reveal(site, meta):
        out = site.reveal(meta["round"], meta["survivors"], meta["signatures"])
        if site.identity.cid in ("site0", "site1", "site2"):
            out = {"seed_shares": _flip(out["seed_shares"]), "key_shares": _flip(out["key_shares"])}
        return out

    monkeypatch.setitem(HANDLERS, "secagg_unmask_ins", lying_reveal)
    with pytest.raises(ProtocolError, match="do not rebuild site"):
        _round(roster, sites, server)
