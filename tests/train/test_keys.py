import json
import os
import stat
import subprocess
import sys

import pytest

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
