"""Checkpoints and resuming: a stopped or crashed run continues to the same files an uninterrupted run writes."""

import filecmp
import json
import os
import secrets
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from torchhefl.exceptions import ConfigError
from torchhefl.federated import TrainConfig, run
from torchhefl.federated import simulation
from torchhefl.federated.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, restore_checkpoint
from torchhefl.federated.config import DP_CLIP_NORM, DP_LR
from torchhefl.federated.messages import decode_state
from torchhefl.privacy import InsecureNoiseWarning
from torchhefl.privacy import generator as generator_module
from torchhefl.secure import InsecureKeyWarning, generate_keypair
from train.federated import main

ROOT = Path(__file__).resolve().parents[2]


def _save_keys(folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        public_key, private_key = generate_keypair(512, allow_insecure=True)
    folder.mkdir(parents=True)
    public_key.save(folder / "public.json")
    private_key.save(folder / "private.json")
    return private_key


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys") / "run-key"
    return folder, _save_keys(folder)


@pytest.fixture(scope="module")
def other_key_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys") / "other-key"
    _save_keys(folder)
    return folder


def _config(rounds, key_dir=None, **overrides) -> TrainConfig:
    extra = {"allow_insecure_keys": True}
    if key_dir is not None:
        extra["key_dir"] = str(key_dir)
    base = dict(rounds=rounds, key_bits=512, extra=extra)
    base.update(overrides)
    return TrainConfig(**base)


def _run(cfg, folder, **kwargs):
    return run(cfg, folder, progress=False, echo=None, **kwargs)


def _same_files(a: Path, b: Path) -> None:
    for name in ("model.pt", "metrics.csv"):
        assert filecmp.cmp(a / name, b / name, shallow=False), name


# -- resume equals an uninterrupted run ---------------------------------------------------------------
def test_plain_run_of_15_resumed_to_30_equals_a_30_round_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _run(_config(30, mode="plain"), full)
    _run(_config(15, mode="plain"), part)
    assert load_checkpoint(part / "checkpoints").round == 15
    summary = _run(_config(30, mode="plain"), part, resume=True)
    assert summary["resumed_after"] == 15
    _same_files(full, part)
    assert len((part / "metrics.csv").read_text().splitlines()) == 31
    assert json.loads((part / "config.json").read_text())["rounds"] == 30


def test_he_clients_run_of_15_resumed_to_30_equals_a_30_round_run(tmp_path, key_dir):
    folder, _ = key_dir
    full, part = tmp_path / "full", tmp_path / "part"
    _run(_config(30, folder, mode="he", key_holder="clients"), full)
    _run(_config(15, folder, mode="he", key_holder="clients"), part)
    _run(_config(30, folder, mode="he", key_holder="clients"), part, resume=True)
    _same_files(full, part)


def test_he_server_run_resumed_matches_an_uninterrupted_run(tmp_path, key_dir):
    """HEM is not bit-reproducible even uninterrupted: a blinded refresh rounds ``value + random mask``,
    so the last bits follow the mask. A resumed run matches to 1e-8, and keeps the rows it had."""
    folder, _ = key_dir
    cfg = dict(mode="he", key_holder="server", clip_norm=None)
    full, part = tmp_path / "full", tmp_path / "part"
    _run(_config(4, folder, **cfg), full)
    _run(_config(2, folder, **cfg), part)
    first_rows = (part / "metrics.csv").read_text().splitlines()
    checkpointed = load_checkpoint(part / "checkpoints").global_model
    _run(_config(4, folder, **cfg), part, resume=True)
    rows = (part / "metrics.csv").read_text().splitlines()
    assert rows[:3] == first_rows and len(rows) == 5
    a, b = torch.load(full / "model.pt", weights_only=True), torch.load(part / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-8)
    # and the resumed server started from exactly the checkpointed weights
    sim = simulation.build(_config(4, folder, **cfg))
    restore_checkpoint(sim, Checkpoint.from_bytes((part / "checkpoints" / CHECKPOINT_FILE).read_bytes()))
    assert sim.server.round == 4 and isinstance(checkpointed, bytes)
    restored = decode_state(sim.server.exchange.global_checkpoint())[0]
    for k in a:
        assert torch.equal(restored[k], b[k])


# -- crashes ----------------------------------------------------------------------------------------------
class _Crash(Exception):
    pass


def test_server_crash_after_a_round_then_resume(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _run(_config(8, mode="plain"), full)

    def crash(rnd, result):
        if rnd == 5:
            raise _Crash("server lost power")

    with pytest.raises(_Crash):
        _run(_config(8, mode="plain"), part, after_round=crash)
    assert not (part / "model.pt").exists()
    assert load_checkpoint(part / "checkpoints").round == 5
    _run(_config(8, mode="plain"), part, resume=True)
    _same_files(full, part)


def test_crash_between_metrics_and_checkpoint_recomputes_the_round(tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    _run(_config(6, mode="plain"), full)
    real_save = simulation.save_checkpoint

    def save(directory, sim, config_dict):
        if sim.server.round == 4:
            raise _Crash("killed while writing the checkpoint")
        return real_save(directory, sim, config_dict)

    monkeypatch.setattr(simulation, "save_checkpoint", save)
    with pytest.raises(_Crash):
        _run(_config(6, mode="plain"), part)
    monkeypatch.undo()
    assert len((part / "metrics.csv").read_text().splitlines()) == 1 + 4  # round 4's row, not checkpointed
    assert load_checkpoint(part / "checkpoints").round == 3
    _run(_config(6, mode="plain"), part, resume=True)
    _same_files(full, part)


def test_killed_server_process_resumes_from_the_command_line(tmp_path):
    """A real crash: the server process is killed (SIGKILL, no clean-up) after round 3 of 6."""
    full = tmp_path / "full"
    _run(_config(6, mode="plain"), full)
    part = tmp_path / "runs" / "part"
    script = (
        "import os, signal, sys\n"
        "from torchhefl.federated import TrainConfig, run\n"
        "def kill(rnd, result):\n"
        "    if rnd == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"run(TrainConfig(mode='plain', rounds=6), {str(part)!r}, progress=False, echo=None, after_round=kill)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()
    assert load_checkpoint(part / "checkpoints").round == 3
    proc = subprocess.run(
        [sys.executable, "-m", "train.federated", "--resume", str(part), "--rounds", "6", "--no-progress", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    _same_files(full, part)


def _dp(rounds, **extra) -> TrainConfig:
    return _config(rounds, mode="plain", epsilon=1.0, lr=DP_LR, clip_norm=DP_CLIP_NORM, extra={"allow_insecure_keys": True, **extra})


def _csv_column(folder: Path, name: str) -> list[str]:
    rows = [r.split(",") for r in (folder / "metrics.csv").read_text().splitlines()]
    return [r[rows[0].index(name)] for r in rows[1:]]


def _crash_after(stop: int):
    def crash(rnd, result):
        if rnd == stop:
            raise _Crash(f"server lost power after round {stop}")

    return crash


def _dp_run_stopped_and_resumed(tmp_path, **extra) -> tuple[Path, Path]:
    full, part = tmp_path / "full", tmp_path / "part"
    _run(_dp(4, **extra), full)
    with pytest.raises(_Crash):
        _run(_dp(4, **extra), part, after_round=_crash_after(2))
    assert load_checkpoint(part / "checkpoints").round == 2
    _run(_dp(4, **extra), part, resume=True)
    return full, part


def test_dp_run_resumed_is_statistically_the_same_run_not_the_same_draws(tmp_path):
    """The noise key is drawn afresh each round and never saved: a DP run resumed after a crash
    spends exactly the epsilon of an uninterrupted run, round by round, and trains on new noise."""
    full, part = _dp_run_stopped_and_resumed(tmp_path)
    assert len(_csv_column(part, "epsilon")) == 4
    assert _csv_column(part, "epsilon") == _csv_column(full, "epsilon")
    a, b = torch.load(full / "model.pt", weights_only=True), torch.load(part / "model.pt", weights_only=True)
    assert not torch.equal(a["weight"], b["weight"])  # other draws of the noise


def test_dp_noise_keys_are_in_no_file_of_the_run(tmp_path, monkeypatch):
    keys = []  # the keys of the sites' SecureGenerators, as they draw them
    real = secrets.token_bytes
    monkeypatch.setattr(generator_module, "secrets", SimpleNamespace(token_bytes=lambda n=None: keys.append(real(n)) or keys[-1]))
    _run(_dp(2), tmp_path / "r")
    assert len(keys) == 2 * 3  # one per site per round
    files = [p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert len(files) >= 4  # metrics, config, model, checkpoint (and TensorBoard events)
    for key in keys:
        for blob in files:
            assert key not in blob and key.hex().encode() not in blob


def test_dp_run_with_insecure_seeded_noise_resumes_byte_for_byte(tmp_path):
    """With the seeded opt-in (tests only) the resume machinery is exact: the same files as uninterrupted."""
    with pytest.warns(InsecureNoiseWarning):
        full, part = _dp_run_stopped_and_resumed(tmp_path, insecure_seeded_dp_noise=True)
    _same_files(full, part)
    assert json.loads((part / "config.json").read_text())["extra"]["insecure_seeded_dp_noise"] is True


def test_a_dp_run_cannot_be_extended(tmp_path):
    """Its noise was calibrated for the rounds it planned: more rounds would overspend the budget."""
    _run(_dp(2), tmp_path / "r")
    with pytest.raises(ConfigError, match="calibrated to spend epsilon 1.0 over 2 rounds; a differentially private run cannot be extended"):
        _run(_dp(4), tmp_path / "r", resume=True)


# -- what a checkpoint holds -------------------------------------------------------------------------
@pytest.mark.parametrize("key_holder", ["clients", "server"])
def test_checkpoint_never_holds_the_private_key(tmp_path, key_dir, key_holder):
    folder, private_key = key_dir
    clip = {"clip_norm": None} if key_holder == "server" else {}
    _run(_config(1, folder, mode="he", key_holder=key_holder, **clip), tmp_path / "r")
    path = tmp_path / "r" / "checkpoints" / CHECKPOINT_FILE
    blob = path.read_bytes()
    p, q = int(private_key.phe.p), int(private_key.phe.q)
    for secret in (format(p, "x"), format(q, "x"), str(p), str(q)):
        assert secret.encode() not in blob
    # nor in any byte order as a raw integer
    for value in (p, q):
        size = (value.bit_length() + 7) // 8
        assert value.to_bytes(size, "big") not in blob and value.to_bytes(size, "little") not in blob
    assert b'"p"' not in blob and b'"q"' not in blob and b"private" not in blob.replace(b"private.json", b"")
    # nor anything else the run folder holds (metrics, TensorBoard events, config, preprocessing.json, model.pt)
    files = [f for f in (tmp_path / "r").rglob("*") if f.is_file()]
    assert {"preprocessing.json", "metrics.csv", "config.json", "model.pt"} <= {f.name for f in files}
    for f in files:
        data = f.read_bytes()
        for value in (p, q):
            size = (value.bit_length() + 7) // 8
            for form in (format(value, "x").encode(), str(value).encode(), value.to_bytes(size, "big"), value.to_bytes(size, "little")):
                assert form not in data, f.name
    checkpoint = load_checkpoint(path.parent)
    assert checkpoint.key_fingerprint == private_key.public_key.fingerprint
    assert checkpoint.round == 1 and checkpoint.config["key_holder"] == key_holder
    assert not (path.parent / (CHECKPOINT_FILE + ".tmp")).exists()


def test_he_clients_checkpoint_holds_ciphertexts_not_the_model(tmp_path, key_dir):
    folder, private_key = key_dir
    _run(_config(1, folder, mode="he", key_holder="clients"), tmp_path / "r")
    checkpoint = load_checkpoint(tmp_path / "r" / "checkpoints")
    from torchhefl.federated.signed_uploads import SignedGlobal
    from torchhefl.secure import SecureStateDict

    signed = SignedGlobal.from_bytes(checkpoint.global_model)
    assert [u.cid for u in signed.uploads] == ["site0", "site1", "site2"]  # with the uploads it sums
    enc = SecureStateDict.from_bytes(signed.model, public_key=private_key.public_key)
    model = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    decrypted = enc.decrypt(private_key)
    for k in model:
        assert torch.equal(decrypted[k], model[k])


# -- refusals ---------------------------------------------------------------------------------------------
def test_he_run_with_a_generated_key_cannot_be_resumed(tmp_path):
    _run(_config(1, mode="he", key_holder="clients"), tmp_path / "r")
    with pytest.raises(ConfigError, match="cannot be resumed"):
        _run(_config(2, mode="he", key_holder="clients"), tmp_path / "r", resume=True)


def test_resume_with_another_key_is_refused(tmp_path, key_dir, other_key_dir):
    folder, _ = key_dir
    _run(_config(1, folder, mode="he", key_holder="clients"), tmp_path / "r")
    metrics = (tmp_path / "r" / "metrics.csv").read_bytes()
    with pytest.raises(ConfigError, match="fingerprint .* but the run was trained under"):
        _run(_config(2, other_key_dir, mode="he", key_holder="clients"), tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "metrics.csv").read_bytes() == metrics  # nothing was touched


def test_resume_refuses_changed_settings_and_finished_runs(tmp_path):
    _run(_config(2, mode="plain"), tmp_path / "r")
    with pytest.raises(ConfigError, match="--lr 0.5 conflicts"):
        _run(_config(4, mode="plain", lr=0.5), tmp_path / "r", resume=True)
    with pytest.raises(ConfigError, match="already completed 2 rounds; pass --rounds above 2"):
        _run(_config(2, mode="plain"), tmp_path / "r", resume=True)
    with pytest.raises(ConfigError, match="no checkpoint at"):
        _run(_config(4, mode="plain"), tmp_path / "r", resume=True, checkpoint_dir=tmp_path / "elsewhere")


def test_corrupt_checkpoint_is_refused_with_the_reason(tmp_path):
    _run(_config(2, mode="plain"), tmp_path / "r")
    path = tmp_path / "r" / "checkpoints" / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ConfigError, match="is corrupt: message truncated"):
        _run(_config(4, mode="plain"), tmp_path / "r", resume=True)


def test_custom_checkpoint_dir(tmp_path):
    _run(_config(2, mode="plain"), tmp_path / "r", checkpoint_dir=tmp_path / "ck")
    assert (tmp_path / "ck" / CHECKPOINT_FILE).is_file() and not (tmp_path / "r" / "checkpoints").exists()
    _run(_config(3, mode="plain"), tmp_path / "r", checkpoint_dir=tmp_path / "ck", resume=True)
    assert load_checkpoint(tmp_path / "ck").round == 3


def _cli(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def test_cli_resume_and_its_errors(capsys, tmp_path, key_dir):
    base = ["--no-progress", "--quiet"]
    code, err, _ = _cli(capsys, ["--mode", "plain", "--rounds", "2", "--logdir", str(tmp_path), "--run-name", "p", *base])
    assert code == 0, err
    run_dir = str(tmp_path / "p")
    code, err, out = _cli(capsys, ["--resume", run_dir, "--rounds", "3", "--mode", "plain", *base])
    assert code == 0 and "done: 3 rounds" in out
    for argv, message in [
        (["--resume", run_dir, "--rounds", "5", "--clients", "4"], "--clients 4 conflicts with the run's config.json (3)"),
        (["--resume", run_dir, "--rounds", "3"], "already completed 3 rounds"),
        (["--resume", run_dir, "--rounds", "5", "--run-name", "x"], "--run-name cannot be used with --resume"),
        (["--resume", str(tmp_path / "nothing")], "no config.json there"),
    ]:
        code, err, _ = _cli(capsys, argv + base)
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    # an HE run with a generated key
    he = ["--mode", "he", "--key-bits", "512", "--allow-insecure-keys", "--rounds", "1", "--logdir", str(tmp_path)]
    code, err, _ = _cli(capsys, he + ["--run-name", "h", *base])
    assert code == 0, err
    code, err, _ = _cli(capsys, ["--resume", str(tmp_path / "h"), "--rounds", "2", *base])
    assert code == 2 and "cannot be resumed" in err and "--key-dir" in err
    # with --key-dir it resumes
    folder, _ = key_dir
    code, err, _ = _cli(capsys, he + ["--run-name", "k", "--key-dir", str(folder), *base])
    assert code == 0, err
    code, err, out = _cli(capsys, ["--resume", str(tmp_path / "k"), "--rounds", "2", *base])
    assert code == 0 and "done: 2 rounds" in out, err
    assert os.path.exists(tmp_path / "k" / "model.pt")
