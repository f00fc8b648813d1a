"""Secret files: exact modes whatever the umask, atomic replacement, nothing left behind on errors."""

import os
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from torchhefl.federated.checkpoint import CHECKPOINT_FILE
from torchhefl.secure import files
from torchhefl.secure.files import private_directory, write_private_file, write_public_file
from train.keys import main as keys_main


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():
    """A umask that takes nothing away (every file the process makes would be world-writable)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_modes_are_exact_with_a_permissive_umask(tmp_path, open_umask, keypair):
    folder = private_directory(tmp_path / "keys")
    assert _mode(folder) == 0o700
    write_private_file(folder / "secret", b"s")
    write_public_file(folder / "public", b"p")
    write_public_file(folder / "script", b"x", mode=0o755)
    assert (_mode(folder / "secret"), _mode(folder / "public"), _mode(folder / "script")) == (0o600, 0o644, 0o755)
    pk, sk = keypair
    sk.save(folder / "private.json")
    pk.save(folder / "public.json")
    assert (_mode(folder / "private.json"), _mode(folder / "public.json")) == (0o600, 0o644)
    # the command-line tool makes its folder the same way
    assert keys_main(["generate", "--bits", "512", "--out", str(tmp_path / "cli"), "--allow-insecure"]) == 0
    assert (_mode(tmp_path / "cli"), _mode(tmp_path / "cli" / "private.json")) == (0o700, 0o600)


def test_certificate_files_with_a_permissive_umask(tmp_path, open_umask):
    pytest.importorskip("flwr")  # torchhefl.flower needs it, though the certificates do not
    from torchhefl.flower.certificates import generate_certificates

    paths = generate_certificates(tmp_path / "certs")
    assert _mode(tmp_path / "certs") == 0o700
    assert (_mode(paths.ca_key), _mode(paths.server_key), _mode(paths.ca_cert), _mode(paths.server_cert)) == (
        0o600, 0o600, 0o644, 0o644,
    )


def test_a_restrictive_umask_does_not_narrow_the_modes(tmp_path):
    old = os.umask(0o277)  # would leave the owner unable to write, and the public file unreadable
    try:
        folder = private_directory(tmp_path / "keys")
        write_public_file(folder / "public", b"p")
    finally:
        os.umask(old)
    assert (_mode(folder), _mode(folder / "public")) == (0o700, 0o644)


def test_an_existing_file_takes_the_new_mode_and_contents(tmp_path):
    target = tmp_path / "private.json"
    target.write_bytes(b"old contents, longer than the new ones")
    os.chmod(target, 0o666)
    write_private_file(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "private.json"
    target.write_bytes(b"the old key")

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fail)
    with pytest.raises(OSError, match="No space left on device"):
        write_private_file(target, b"the new key")
    assert target.read_bytes() == b"the old key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.json"]
    monkeypatch.undo()

    def fail_replace(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(files.os, "replace", fail_replace)
    with pytest.raises(OSError, match="Invalid cross-device link"):
        write_private_file(target, b"the new key")
    assert target.read_bytes() == b"the old key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.json"]


@pytest.mark.parametrize("old", [b'{"the": "old key"}\n', None], ids=["old-file", "no-file"])
def test_a_crash_mid_write_leaves_the_old_file_or_none(tmp_path, old):
    # the process dies (no cleanup runs) after writing the new bytes but before they are in place
    target = tmp_path / "private.json"
    if old is not None:
        target.write_bytes(old)
    script = textwrap.dedent(
        f"""
        import os
        from torchhefl.secure import files
        files.os.fsync = lambda fd: os._exit(3)
        files.write_private_file({str(target)!r}, b'{{"the": "new key"}}\\n' * 1000)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    if old is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == old
    left = [p for p in tmp_path.iterdir() if p.name != "private.json"]
    # only the dead writer's temporary file, private, under a name no reader looks for
    assert len(left) == 1 and left[0].name.startswith(".private.json.") and left[0].name.endswith(".tmp")
    assert _mode(left[0]) == 0o600


def test_a_checkpoint_is_private(tmp_path, open_umask):
    from torchhefl.federated.checkpoint import save_checkpoint
    from torchhefl.federated.config import TrainConfig
    from torchhefl.federated.simulation import build

    sim = build(TrainConfig(mode="plain", rounds=1))
    path = save_checkpoint(tmp_path / "checkpoints", sim, {"mode": "plain"})
    assert path.name == CHECKPOINT_FILE and _mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [CHECKPOINT_FILE]


def test_an_existing_folder_is_checked_not_changed(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    with pytest.raises(PermissionError, match=r"writable by group or others \(mode 0775\).*chmod 700"):
        private_directory(shared)
    os.chmod(shared, 0o757)
    with pytest.raises(PermissionError, match="writable by group or others"):
        private_directory(shared)
    os.chmod(shared, 0o755)
    with pytest.warns(UserWarning, match=r"readable by group or others \(mode 0755\)"):
        private_directory(shared)
    assert _mode(shared) == 0o755  # the user's folder: warned about, not chmod-ed
    os.chmod(shared, 0o700)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        private_directory(shared)
    assert caught == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        private_directory(tmp_path / "file")


def test_the_key_tool_refuses_a_folder_others_can_write(tmp_path, capsys):
    out = tmp_path / "keys"
    out.mkdir()
    os.chmod(out, 0o777)
    assert keys_main(["generate", "--bits", "512", "--out", str(out), "--allow-insecure"]) == 2
    assert "writable by group or others (mode 0777)" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    os.chmod(out, 0o750)
    assert keys_main(["generate", "--bits", "512", "--out", str(out), "--allow-insecure"]) == 0
    assert "warning: " in capsys.readouterr().err and _mode(out / "private.json") == 0o600
