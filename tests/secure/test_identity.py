import os
import stat

import pytest

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.secure.identity import Roster, SiteIdentity, signed_bytes


@pytest.fixture(scope="module")
def sites():
    return [SiteIdentity(f"site{i}") for i in range(3)]


def test_roster_verifies_each_sites_signature_and_names_a_forger(sites):
    roster = Roster.of(sites)
    msg = signed_bytes("test", round=1, key="00")
    roster.verify("site1", msg, sites[1].sign(msg))
    with pytest.raises(ProtocolError, match="site 'site1'.*swapped or forged"):
        roster.verify("site1", msg, sites[0].sign(msg))
    with pytest.raises(ProtocolError, match="site 'site1'.*swapped or forged"):
        roster.verify("site1", signed_bytes("test", round=2, key="00"), sites[1].sign(msg))
    with pytest.raises(ProtocolError, match="'ghost' is not on the roster"):
        roster.verify("ghost", msg, sites[1].sign(msg))
    with pytest.raises(ProtocolError, match="not 64 bytes"):
        roster.verify("site1", msg, b"\0" * 10)


def test_roster_fingerprint_is_order_free_and_round_trips(tmp_path, sites):
    a, b = Roster.of(sites), Roster.of(reversed(sites))
    assert a.fingerprint == b.fingerprint and a == b
    assert Roster.of(sites[:2]).fingerprint != a.fingerprint
    a.save(tmp_path / "roster.json")
    assert Roster.load(tmp_path / "roster.json", fingerprint=a.fingerprint) == a
    with pytest.raises(ValueError, match="fingerprint"):
        Roster.load(tmp_path / "roster.json", fingerprint="00" * 32)
    assert a.threshold == 2 and a.index("site0") == 1 and a.index("site2") == 3


def test_identity_file_is_private_and_loads_back(tmp_path, sites):
    path = tmp_path / "identity.json"
    sites[0].save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = SiteIdentity.load(path, "site0")
    assert again.public_bytes() == sites[0].public_bytes()
    with pytest.raises(ValueError, match="not 'site1'"):
        SiteIdentity.load(path, "site1")
    (tmp_path / "bad.json").write_text('{"kind": "torchhefl.roster", "version": 1, "sites": {}}')
    with pytest.raises(MalformedMessageError, match="torchhefl.identity.private"):
        SiteIdentity.load(tmp_path / "bad.json")


def test_roster_refuses_duplicates_and_bad_names(sites):
    with pytest.raises(ValueError, match="one public key for two sites"):
        Roster({"a": sites[0].public_bytes(), "b": sites[0].public_bytes()})
    with pytest.raises(ValueError, match="at least 2"):
        Roster({"a": sites[0].public_bytes()})
    with pytest.raises(ValueError, match="site name"):
        SiteIdentity("../x")
