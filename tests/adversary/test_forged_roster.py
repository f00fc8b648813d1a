"""A roster the attacker made: a server (or whoever ships files to a site) that substitutes one
site's signing key in the roster, so that it can sign that site's share keys, survivor sets and
uploads itself.

Every party checks the roster file it loaded against run config ``roster-fingerprint``, the run's
list of sites, and (a site) its own identity's entry. A substituted key changes the fingerprint;
a roster whose fingerprint the attacker also set in the run config still lists another key for
the site than its own identity file; a stale roster of other sites lists the wrong sites. Each is
refused at start with one line naming the file, before any key is advertised.
"""

import pytest

from torchhefl.exceptions import ConfigError
from torchhefl.federated import TrainConfig
from torchhefl.flower.identities import load_server_roster, load_site_identity
from torchhefl.secure.identity import Roster, SiteIdentity

SITES = 3


@pytest.fixture
def deployment(tmp_path):
    """Three sites' identity files and the honest roster of their public keys."""
    identities = [SiteIdentity(f"site{i}") for i in range(SITES)]
    for identity in identities:
        (tmp_path / identity.cid).mkdir()
        identity.save(tmp_path / identity.cid / "identity.json")
    roster = Roster.of(identities)
    roster.save(tmp_path / "roster.json")
    config = TrainConfig(clients=SITES, key_holder="server")
    return tmp_path, identities, roster, config


def _forged(tmp_path, identities, victim: int) -> tuple[Roster, SiteIdentity]:
    """The roster with the victim's public key replaced by one the attacker holds the secret of."""
    attacker = SiteIdentity(f"site{victim}")
    forged = Roster.of([attacker if i == victim else identity for i, identity in enumerate(identities)])
    forged.save(tmp_path / "forged.json")
    return forged, attacker


def _node_config(tmp_path, index: int, roster_file: str) -> dict:
    return {"identity": str(tmp_path / f"site{index}" / "identity.json"), "roster": str(tmp_path / roster_file)}


def test_honest_roster_loads(deployment):
    """Control: the roster the sites made loads on every site and on the server."""
    tmp_path, identities, roster, config = deployment
    for i in range(SITES):
        identity, loaded = load_site_identity(config, _node_config(tmp_path, i, "roster.json"), i, roster.fingerprint)
        assert identity.public_bytes() == identities[i].public_bytes()
        assert loaded.fingerprint == roster.fingerprint
    server = load_server_roster(config, str(tmp_path / "roster.json"), roster.fingerprint, None)
    assert server.public_bytes("site1") == identities[1].public_bytes()


def test_forged_key_fails_the_fingerprint(deployment):
    """The attacker's roster under the honest run config: every party refuses it, naming the file."""
    tmp_path, identities, roster, config = deployment
    forged, attacker = _forged(tmp_path, identities, victim=1)
    assert forged.public_bytes("site1") == attacker.public_bytes() != identities[1].public_bytes()
    assert forged.fingerprint != roster.fingerprint
    for i in range(SITES):
        with pytest.raises(ConfigError, match=r"node config roster=.*forged\.json.*has fingerprint .*not the run config"):
            load_site_identity(config, _node_config(tmp_path, i, "forged.json"), i, roster.fingerprint)
    with pytest.raises(ConfigError, match=r"run config server-roster=.*forged\.json.*has fingerprint"):
        load_server_roster(config, str(tmp_path / "forged.json"), roster.fingerprint, None)


def test_forged_key_with_forged_fingerprint_is_refused_by_the_victim(deployment):
    """The attacker also sets the run config's fingerprint to its roster's (it ships the run
    config). The victim's own identity file is not the key the roster lists: it refuses to start,
    so the attacker cannot stand in for it towards the other sites while it runs."""
    tmp_path, identities, roster, config = deployment
    forged, _ = _forged(tmp_path, identities, victim=1)
    with pytest.raises(ConfigError, match=r"lists another signing key for site1 than its node config identity"):
        load_site_identity(config, _node_config(tmp_path, 1, "forged.json"), 1, forged.fingerprint)
    # The others' own entries are right; what protects them is that they keep their roster file
    # (a site trusts the roster on its own disk) and the forged fingerprint does not match it.
    for i in (0, 2):
        with pytest.raises(ConfigError, match=r"has fingerprint"):
            load_site_identity(config, _node_config(tmp_path, i, "roster.json"), i, forged.fingerprint)


def test_stale_or_foreign_roster_is_refused(deployment):
    """A roster of another run (four sites, or other sites' keys) is refused even with its own
    fingerprint in the run config: it does not list exactly this run's sites, or not this site."""
    tmp_path, identities, roster, config = deployment
    four = Roster.of(identities + [SiteIdentity("site3")])
    four.save(tmp_path / "four.json")
    with pytest.raises(ConfigError, match=r"lists site0, site1, site2, site3; the run has clients=3"):
        load_site_identity(config, _node_config(tmp_path, 0, "four.json"), 0, four.fingerprint)
    with pytest.raises(ConfigError, match=r"lists site0, site1, site2, site3"):
        load_server_roster(config, str(tmp_path / "four.json"), four.fingerprint, None)
    foreign = Roster.of(SiteIdentity(f"site{i}") for i in range(SITES))
    foreign.save(tmp_path / "foreign.json")
    for i in range(SITES):
        with pytest.raises(ConfigError, match=rf"lists another signing key for site{i}"):
            load_site_identity(config, _node_config(tmp_path, i, "foreign.json"), i, foreign.fingerprint)


def test_identity_of_another_site_is_refused(deployment):
    """A site handed another site's identity file (so that two nodes would sign as one) refuses it."""
    tmp_path, _, roster, config = deployment
    node_config = {"identity": str(tmp_path / "site2" / "identity.json"), "roster": str(tmp_path / "roster.json")}
    with pytest.raises(ConfigError, match=r"is the identity of site2, but partition-id=0 runs site0"):
        load_site_identity(config, node_config, 0, roster.fingerprint)
