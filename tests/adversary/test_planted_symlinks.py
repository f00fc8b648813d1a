"""A local attacker plants symlinks where torchhefl will write a secret, hoping it writes through them.

The attacker knows every path (they are in the docs and the run config) and, here, even the
temporary file's name: the link points at a file the attacker can read, or at a file of the
victim's the attacker wants overwritten. The attack fails if the pointed-to file is unchanged
(or, for a dangling link, never created) and the secret lands in a new mode-0600 file at the path.
"""

import os
import stat
import warnings
from pathlib import Path

import pytest

from torchhefl.federated.checkpoint import CHECKPOINT_FILE, save_checkpoint
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.simulation import build
from torchhefl.secure import InsecureKeyWarning, files, generate_keypair
from torchhefl.secure.files import write_private_file


@pytest.fixture(scope="module")
def keypair():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(512, allow_insecure=True)


def _plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def _is_private_regular_file(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


@pytest.fixture
def bait(tmp_path) -> Path:
    """A file the attacker reads (or the victim's file the attacker wants clobbered)."""
    path = tmp_path / "attacker" / "bait"
    path.parent.mkdir()
    path.write_bytes(b"untouched")
    return path


def test_a_private_key_is_not_written_through_a_link_at_its_path(tmp_path, bait, keypair):
    _, sk = keypair
    target = tmp_path / "keys" / "private.json"
    _plant(target, bait)
    sk.save(target)
    assert bait.read_bytes() == b"untouched"
    assert _is_private_regular_file(target) and b'"p"' in target.read_bytes()
    # a dangling link: nothing is created where it points
    dangling = tmp_path / "attacker" / "would-be-created"
    other = tmp_path / "keys2" / "private.json"
    _plant(other, dangling)
    sk.save(other)
    assert not os.path.lexists(dangling) and _is_private_regular_file(other)


def test_a_checkpoint_is_not_written_through_links(tmp_path, bait):
    sim = build(TrainConfig(mode="plain", rounds=1))
    folder = tmp_path / "checkpoints"
    _plant(folder / CHECKPOINT_FILE, bait)
    _plant(folder / (CHECKPOINT_FILE + ".tmp"), bait)  # the fixed temporary name of earlier versions
    path = save_checkpoint(folder, sim, {"mode": "plain"})
    assert bait.read_bytes() == b"untouched" and _is_private_regular_file(path)


def test_tls_keys_are_not_written_through_links(tmp_path, bait):
    pytest.importorskip("flwr")
    from torchhefl.flower.certificates import generate_certificates

    out = tmp_path / "certs"
    out.mkdir(mode=0o700)
    for name in ("ca.key", "server.key", "ca.crt"):
        _plant(out / name, bait)
    paths = generate_certificates(out)
    assert bait.read_bytes() == b"untouched"
    assert _is_private_regular_file(paths.ca_key) and _is_private_regular_file(paths.server_key)
    assert b"BEGIN CERTIFICATE" in paths.ca_cert.read_bytes() and not paths.ca_cert.is_symlink()


def test_a_link_at_the_temporary_name_is_not_followed(tmp_path, bait, monkeypatch):
    # the attacker knows the next temporary name (here we hand it to them) and plants a link there
    target = tmp_path / "keys" / "private.json"
    target.parent.mkdir()
    names = iter(["guessed", "fresh"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda nbytes: next(names))
    _plant(target.with_name(".private.json.guessed.tmp"), bait)
    write_private_file(target, b"secret")
    assert bait.read_bytes() == b"untouched"
    assert target.read_bytes() == b"secret" and _is_private_regular_file(target)
    # the planted link is left alone (not ours to remove), and nothing else stays behind
    assert sorted(p.name for p in target.parent.iterdir()) == [".private.json.guessed.tmp", "private.json"]
    assert os.readlink(target.with_name(".private.json.guessed.tmp")) == str(bait)


def test_when_every_temporary_name_is_taken_nothing_is_written(tmp_path, bait, monkeypatch):
    target = tmp_path / "keys" / "private.json"
    _plant(target.with_name(".private.json.guessed.tmp"), bait)
    monkeypatch.setattr(files.secrets, "token_hex", lambda nbytes: "guessed")
    with pytest.raises(FileExistsError, match=r"could not create a temporary file beside .*private.json \(16 names were taken\)"):
        write_private_file(target, b"secret")
    assert bait.read_bytes() == b"untouched" and not os.path.lexists(target)
