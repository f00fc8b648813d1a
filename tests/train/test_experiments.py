import subprocess
import sys
from pathlib import Path

import pytest

from torchhefl.experiments import SWEEPS, ExperimentSettings, get_sweeps, plan
from torchhefl.experiments.report import read_results_csv, spread
from train.experiments import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments")
    code = main(["--quick", "--out", str(out), "--seeds", "1", "--he-mode", "clients", "--workers", "1", "--no-progress"])
    assert code == 0
    return out


def test_quick_run_writes_a_row_per_sweep_mode_setting_and_seed(quick_run):
    rows = read_results_csv(quick_run / "results.csv")
    expected = sum(len(s.settings) for s in SWEEPS.values()) * 2  # two modes, one seed
    assert len(rows) == expected
    assert {r["sweep"] for r in rows} == set(SWEEPS)
    for r in rows:
        assert len(r["curve"]) == r["rounds"]
        assert r["accuracy"] == pytest.approx(r["curve"][-1], abs=1e-6)
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["auc"] <= 1.0
    # the paper's hyper-parameters, not our defaults
    t4 = {r["setting"]: r for r in rows if r["sweep"] == "table4" and r["mode"] == "plain"}
    assert [t4[k]["lr"] for k in ("lr 0.01", "lr 0.02", "lr 0.03")] == [0.01, 0.02, 0.03]
    assert all(r["batch_size"] == 64 and r["local_epochs"] == 1 for r in t4.values())
    t6 = [r for r in rows if r["sweep"] == "table6"]
    assert all(r["aggregator"] == "fedprox" and r["lr"] == 0.02 and r["batch_size"] == 128 for r in t6)
    assert {r["partition"] for r in rows if r["sweep"] == "table5"} == {"iid", "dirichlet"}


def test_fewer_rounds_are_the_prefix_of_the_longer_run(quick_run):
    rows = read_results_csv(quick_run / "results.csv")
    t2 = {r["setting"]: r["curve"] for r in rows if r["sweep"] == "table2" and r["mode"] == "he"}
    assert t2["10 rounds"] == t2["30 rounds"][:10]
    assert t2["20 rounds"] == t2["30 rounds"][:20]
    # Table 2's 30 rounds, Table 3's batch 64 and Table 4's lr 0.01 are one configuration
    t3 = next(r for r in rows if r["sweep"] == "table3" and r["mode"] == "he" and r["setting"] == "batch 64")
    assert t3["curve"] == t2["30 rounds"]


def test_encrypted_exchange_matches_plain_training(quick_run):
    rows = read_results_csv(quick_run / "results.csv")
    plain = {(r["sweep"], r["setting"], r["seed"]): r for r in rows if r["mode"] == "plain"}
    for r in rows:
        if r["mode"] == "he":
            p = plain[(r["sweep"], r["setting"], r["seed"])]
            assert r["curve"] == pytest.approx(p["curve"], abs=1e-9)
            assert r["loss"] == pytest.approx(p["loss"], rel=1e-5)


def test_quick_run_draws_every_paper_figure_and_writes_the_report(quick_run):
    for n in (3, 4, 5, 6, 7):
        pngs = list(quick_run.glob(f"fig{n}_*.png"))
        assert len(pngs) == 1, n
        assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (quick_run / "report.md").read_text()
    for n in (3, 4, 5, 6, 7):
        assert f"Figure {n}" in report
    assert "89.528" in report and "67.5" in report  # the paper's numbers beside ours
    assert "no differential-privacy noise" in report
    assert "fig7_comparison.png" in report


def test_plan_runs_each_configuration_once_for_its_longest_setting():
    settings = ExperimentSettings(modes=("plain",), seeds=(0,))
    jobs = plan(get_sweeps("table2,table3,table4"), settings)
    # lr 0.01 batch 64 is shared; batch 128, 192 and lr 0.02, 0.03 are their own
    assert len(jobs) == 5
    assert all(j.config["rounds"] == 30 for j in jobs)
    jobs = plan(get_sweeps("table2,table5"), ExperimentSettings(modes=("plain",), seeds=(0, 1)))
    # per seed: the 30-round FedAvg IID run covers Table 5's FedAvg IID; 3 more Table 5 runs
    assert len(jobs) == 2 * 4
    assert sorted(j.config["rounds"] for j in jobs) == [10] * 6 + [30] * 2


def test_spread_formats_mean_std_and_range():
    assert spread([0.9, 0.92]) == "91.0 ± 1.0 [90.0-92.0]"
    assert spread([0.5]) == "50.0"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sweeps", "table9"], "unknown sweep 'table9'"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--modes", "fast"], "--modes takes plain and he"),
        (["--key-bits", "512", "--he-mode", "clients"], "insecure"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len([line for line in err.strip().splitlines() if not line.startswith("note:")]) == 1


def test_server_key_scheme_runs_a_sweep(tmp_path):
    assert main(["--quick", "--sweeps", "table5", "--seeds", "1", "--he-mode", "server", "--workers", "1",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    rows = read_results_csv(tmp_path / "results.csv")
    he = [r for r in rows if r["mode"] == "he"]
    assert he and all(r["key_holder"] == "server" for r in he)
    plain = {r["setting"]: r["curve"] for r in rows if r["mode"] == "plain"}
    for r in he:  # training on encrypted weights follows plain training (at most one test row apart)
        assert max(abs(a - b) for a, b in zip(r["curve"], plain[r["setting"]])) <= 0.01
    assert (tmp_path / "fig6_convergence.png").exists()


def test_module_entry_point_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "train.experiments", "--sweeps", "nope", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown sweep" in r.stderr and "Traceback" not in r.stderr


def test_replot_redraws_figures_and_report_from_results_csv(quick_run, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("results.csv", "run.json"):
        (out / name).write_bytes((quick_run / name).read_bytes())
    assert main(["--replot", "--out", str(out), "--no-progress"]) == 0
    assert len(list(out.glob("fig*.png"))) == len(SWEEPS)
    report = (out / "report.md").read_text()
    assert report == (quick_run / "report.md").read_text()
    assert "--quick" in report  # the original command, from run.json


def test_replot_without_results_is_a_one_line_error(tmp_path, capsys):
    assert main(["--replot", "--out", str(tmp_path)]) == 2
    assert "results.csv" in capsys.readouterr().err
