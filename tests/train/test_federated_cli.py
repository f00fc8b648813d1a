"""python -m train.federated: bad input gets one line naming the problem and exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from train.federated import main


@pytest.fixture
def csv_dir(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    df["label"] = ["yes", "no"] * 20
    df.to_csv(tmp_path / "good.csv", index=False)
    bad = df.copy()
    bad["b"] = bad["b"].astype(object)
    bad.loc[7, "b"] = "x"  # a typo among numbers
    bad.to_csv(tmp_path / "text.csv", index=False)
    nan = df.copy()
    nan.loc[3, "a"] = np.nan
    nan.to_csv(tmp_path / "nan.csv", index=False)
    inf = df.copy()
    inf.loc[5, "c"] = np.inf
    inf.to_csv(tmp_path / "inf.csv", index=False)
    one = df.copy()
    one["label"] = "yes"
    one.to_csv(tmp_path / "one.csv", index=False)
    three = df.copy()
    three["label"] = ["a", "b", "c", "d"] * 10
    three.to_csv(tmp_path / "three.csv", index=False)
    return tmp_path


def _err(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


BASE = ["--mode", "plain", "--rounds", "1", "--no-progress", "--quiet"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{d}/missing.csv", "--label", "label"], "missing.csv"),
        (["--data", "{d}/text.csv", "--label", "label"], "feature column 'b' mixes numbers and text (e.g. 'x' in row 8)"),
        (["--data", "{d}/nan.csv", "--label", "label", "--impute", "none"], "feature column 'a' has 1 missing (NaN) value"),
        (["--data", "{d}/good.csv", "--label", "label", "--features", "a,zz,yy"], "unknown feature columns 'zz', 'yy'"),
        (["--data", "{d}/good.csv", "--label", "label", "--drop", "zz"], "cannot drop unknown column 'zz'"),
        (["--data", "{d}/good.csv", "--label", "label", "--features", "a", "--drop", "b"], "give --features or --drop, not both"),
        (["--data", "{d}/good.csv", "--label", "label", "--features", "a,label"], "the label column 'label' cannot also be a feature"),
        (["--data", "{d}/good.csv", "--label", "label", "--features", "a,,b"], "expected comma-separated column names"),
        (["--features", "a"], "--features needs --data"),
        (["--data", "{d}/good.csv", "--label", "label", "--impute", "mode"], "--impute"),
        (["--data", "{d}/inf.csv", "--label", "label"], "infinite"),
        (["--data", "{d}/one.csv", "--label", "label"], "at least 2 distinct values, got 1"),
        (["--data", "{d}/good.csv", "--label", "outcome"], "outcome"),
        (["--data", "{d}/good.csv", "--label", "label", "--clients", "40"], "more than the 32 training rows"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lr", "-0.1"], "--lr must be a positive number"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--aggregator", "fedsgd"], "unknown aggregator 'fedsgd'"),
        (["--clip-norm", "-1"], "--clip-norm"),
        (["--data", "{d}/good.csv"], "--data and --label go together"),
        (["--data", "digits", "--label", "digit"], "--data digits is bundled with scikit-learn and has its own label"),
        (["--hidden", "16"], "--hidden sets the layers of --model mlp; this run's model is logreg"),
        (["--model", "mlp", "--hidden", "16,0"], "--hidden: layer sizes must be positive integers"),
        (["--model", "mlp", "--hidden", "a"], "--hidden: expected comma-separated layer sizes"),
        (["--model", "mlp", "--mode", "he", "--key-holder", "server", "--clip-norm", "none"],
         "--model mlp cannot train with --key-holder server"),
        (["--data", "digits", "--mode", "he", "--key-holder", "server"],
         "softmax regression on 10 classes cannot train with --key-holder server"),
        (["--lr", "abc"], "--lr"),
        (["--he-resolution", "0"], "--he-resolution: must be a positive number"),
        (["--he-rounding", "up"], "--he-rounding: invalid choice: 'up'"),
        (["--he-resolution", "1e-3"], "only --mode he --key-holder clients has; leave them out of a plain run"),
        (["--he-rounding", "stochastic"], "only --mode he --key-holder clients has"),
        (["--mode", "he", "--he-resolution", "2"], "--he-resolution must be a number in (0, 1], got 2.0"),
        (["--mode", "he", "--he-resolution", "1e-9"], "leaving 25 after the binary point: give at least 2^-25 (2.98e-08)"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, csv_dir, tmp_path, args, message):
    argv = BASE + ["--logdir", str(tmp_path / "runs")] + [a.format(d=csv_dir) for a in args]
    code, err = _err(capsys, argv)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err


def test_user_csv_trains_and_reports_label_mapping(capsys, csv_dir, tmp_path):
    code = main(BASE + ["--data", str(csv_dir / "good.csv"), "--label", "label", "--logdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "label 'label': no -> 0, yes -> 1" in out


def test_multiclass_csv_with_an_mlp_reports_multiclass_metrics(capsys, csv_dir, tmp_path):
    argv = BASE + ["--data", str(csv_dir / "three.csv"), "--label", "label", "--model", "mlp", "--hidden", "8,4",
                   "--logdir", str(tmp_path), "--run-name", "r"]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0
    assert "label 'label': a -> 0, b -> 1, c -> 2, d -> 3" in out
    assert "one-vs-rest AUC" in out and "macro F1" in out
    assert "test rows per class:  0:2 1:2 2:2 3:2" in out  # 8 test rows, stratified
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["model"], config["hidden"]) == ("mlp", [8, 4])


def test_insecure_key_needs_explicit_flag(capsys, tmp_path):
    code, err = _err(capsys, ["--key-bits", "512", "--rounds", "1", "--logdir", str(tmp_path)])
    assert code == 2 and "insecure" in err


def test_no_traceback_from_the_real_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train.federated", "--mode", "plain", "--data", str(tmp_path / "nope.csv"), "--label", "y"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "nope.csv" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_hem_step_limit_goes_to_the_run_config_and_is_bounded(capsys):
    from torchhefl.nn.functional import SAFE_STEP
    from train.federated import build_parser, config_from_args

    def config(*argv):
        return config_from_args(build_parser().parse_args(["--mode", "he", "--key-holder", "server", *argv]))

    assert "hem_step_limit" not in config().extra  # the default, SAFE_STEP, is not written out
    assert config("--hem-step-limit", "1.5").extra["hem_step_limit"] == 1.5
    assert config("--hem-step-limit", "none").extra["hem_step_limit"] is None
    assert SAFE_STEP == 1.9
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--hem-step-limit", "2.5"])
    assert "must be at most 2" in capsys.readouterr().err
