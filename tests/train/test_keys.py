import json
import os
import stat
import subprocess
import sys

import pytest

from torchhefl.secure.identity import Roster, SiteIdentity
from train.keys import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_generate_and_show(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["generate", "--bits", "512", "--out", str(out), "--allow-insecure"]) == 0
    text = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(out / "private.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out / "public.json").st_mode) == 0o644
    priv = json.loads((out / "private.json").read_text())
    fingerprint = text.split("fingerprint: ")[1].split()[0]
    for f in ("public.json", "private.json"):
        assert main(["show", str(out / f)]) == 0
        shown = capsys.readouterr().out
        assert fingerprint in shown and "bits: 512" in shown
        assert priv["p"] not in shown and priv["q"] not in shown and str(int(priv["p"], 16)) not in shown
    # refuses to overwrite without --force
    assert main(["generate", "--bits", "512", "--out", str(out), "--allow-insecure"]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--bits", "1024", "--out", "OUT"], "allow_insecure"),
        (["generate", "--bits", "abc", "--out", "OUT"], "invalid int value"),
        (["show", "MISSING"], "No such file"),
        (["show", "GARBAGE"], "not a torchhefl key file"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "GARBAGE").write_text("{}")
    argv = [str(tmp_path / a) if a in ("OUT", "MISSING", "GARBAGE") else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_has_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "train.keys", "show", str(tmp_path / "missing.json")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert r.returncode == 2 and "No such file" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _public_hex(text: str) -> str:
    return text.split("public key: ")[1].split()[0]


def test_identity_then_roster_as_the_sites_and_the_assembler_run_them(tmp_path, capsys):
    """Each site makes its own identity and sends the line it prints; the roster is assembled from
    those lines (given as flags or collected in a file) and its fingerprint printed."""
    lines = []
    for i in range(3):
        out = tmp_path / "keys" / f"site{i}"
        assert main(["identity", "--cid", f"site{i}", "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(out / "identity.json").st_mode) == 0o600
        secret = json.loads((out / "identity.json").read_text())["ed25519"]
        assert secret not in text
        lines.append(text.strip().splitlines()[-1])
        assert lines[-1] == f"site{i}={_public_hex(text)}"
    # refuses to overwrite a signing key without --force
    assert main(["identity", "--cid", "site0", "--out", str(tmp_path / "keys" / "site0")]) == 2
    assert "--force" in capsys.readouterr().err

    (tmp_path / "sent.txt").write_text("# from the sites\n" + lines[1] + "\n\n" + lines[2] + "\n")
    roster_path = tmp_path / "roster.json"
    assert main(["roster", "--site", lines[0], "--sites-file", str(tmp_path / "sent.txt"), "--out", str(roster_path)]) == 0
    text = capsys.readouterr().out
    roster = Roster.load(roster_path)
    assert roster.sites == ["site0", "site1", "site2"]
    assert f"fingerprint: {roster.fingerprint}" in text and f'roster-fingerprint="{roster.fingerprint}"' in text
    for i in range(3):
        identity = SiteIdentity.load(tmp_path / "keys" / f"site{i}" / "identity.json", cid=f"site{i}")
        assert roster.public_bytes(f"site{i}") == identity.public_bytes()
    # the same lines in another order give the same roster (sorted names)
    again = tmp_path / "again.json"
    assert main(["roster", "--site", lines[2], "--site", lines[0], "--site", lines[1], "--out", str(again)]) == 0
    assert Roster.load(again).fingerprint == roster.fingerprint
    capsys.readouterr()
    assert main(["roster", "--site", lines[0], "--site", lines[1], "--out", str(roster_path)]) == 2
    assert "--force" in capsys.readouterr().err


def test_identities_makes_every_site_and_the_roster(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["identities", "--clients", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    roster = Roster.load(out / "roster.json")
    assert roster.sites == ["site0", "site1", "site2"] and f"fingerprint: {roster.fingerprint}" in text
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(out / "roster.json").st_mode) == 0o644
    for i in range(3):
        path = out / f"site{i}" / "identity.json"
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert roster.public_bytes(f"site{i}") == SiteIdentity.load(path, cid=f"site{i}").public_bytes()
        assert json.loads(path.read_text())["ed25519"] not in text
    assert main(["identities", "--clients", "3", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    before = roster.fingerprint
    assert main(["identities", "--clients", "3", "--out", str(out), "--force"]) == 0
    assert Roster.load(out / "roster.json").fingerprint != before  # fresh keys


def test_show_identity_and_roster_never_prints_the_private_key(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["identities", "--clients", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    roster = Roster.load(out / "roster.json")
    path = out / "site1" / "identity.json"
    secret = json.loads(path.read_text())["ed25519"]
    assert main(["show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[0] == "kind: identity (private key not shown)"
    assert "site: site1" in shown and _public_hex(shown) == roster.public_bytes("site1").hex()
    assert secret not in shown and secret.upper() not in shown
    assert main(["show", str(out / "roster.json")]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[0] == "kind: roster"
    assert "sites: site0, site1" in shown and f"fingerprint: {roster.fingerprint}" in shown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["identity", "--cid", "site 0", "--out", "OUT"], "site name 'site 0' must be"),
        (["identity", "--out", "OUT"], "--cid"),
        (["roster", "--site", "site0=abc", "--out", "OUT"], "--site: expected NAME=HEX"),
        (["roster", "--site", "site0=" + "ab" * 32, "--out", "OUT"], "a roster lists at least 2 sites, got 1"),
        (["roster", "--site", "site0=" + "ab" * 32, "--site", "site1=" + "ab" * 32, "--out", "OUT"], "one public key for two sites"),
        (["roster", "--site", "site0=" + "ab" * 32, "--site", "site0=" + "cd" * 32, "--out", "OUT"], "site site0 is given twice"),
        (["roster", "--sites-file", "MISSING", "--out", "OUT"], "No such file"),
        (["roster", "--sites-file", "GARBAGE", "--out", "OUT"], "GARBAGE:1: expected NAME=HEX"),
        (["identities", "--clients", "1", "--out", "OUT"], "--clients 1: a roster lists at least 2 sites"),
        (["show", "IDENTITY"], "'ed25519' must be 64 lowercase hexadecimal digits"),
        (["show", "ROSTER"], "'sites' must map site names to 64 hexadecimal digits"),
    ],
)
def test_identity_and_roster_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "GARBAGE").write_text("{}")
    (tmp_path / "IDENTITY").write_text(json.dumps({"kind": "torchhefl.identity.private", "version": 1, "cid": "site0", "ed25519": "00"}))
    (tmp_path / "ROSTER").write_text(json.dumps({"kind": "torchhefl.roster", "version": 1, "sites": {"site0": "xyz"}}))
    argv = [str(tmp_path / a) if a in ("OUT", "MISSING", "GARBAGE", "IDENTITY", "ROSTER") else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "OUT").exists()
