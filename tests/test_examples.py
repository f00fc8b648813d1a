"""The README's first example runs, and its encrypted FedAvg equals the plaintext one."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_drop_in_torch_example():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "drop_in_torch.py"), "--rounds", "4"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"test accuracy ([\d.]+) .*FedAvg\| ([\d.e+-]+)", proc.stdout)
    assert len(rows) == 4
    accuracy, diff = float(rows[-1][0]), float(rows[-1][1])
    assert accuracy >= 0.85
    assert diff <= 1e-6


def test_readme_first_code_example_is_the_drop_in_script():
    readme = (ROOT / "README.md").read_text()
    first_code = readme.split("```python", 1)[1].split("```", 1)[0]
    script = (ROOT / "examples" / "drop_in_torch.py").read_text()
    marked = [line.strip() for line in first_code.splitlines() if "# torchhefl" in line]
    assert marked, "the README's first example shows the torchhefl lines"
    for line in marked:
        assert line in script, line


@pytest.mark.parametrize(
    "script, args",
    [
        # an MLP on the 10-class digits over 3 sites holding a (test-sized, explicitly insecure)
        # 512-bit key, against the same model trained centrally with the same hyper-parameters (the
        # example's defaults: 10 rounds of 2 local epochs, lr 0.1, batch 16, one hidden layer of 32,
        # seed 0). Measured: 0.9750 vs 0.9778; seeds 1 and 2 gave gaps of 1.39 and 0.83 points.
        ("digits_mlp.py", ["--key-bits", "512", "--insecure-keys"]),
        # a CNN defined in the example (not in the engine), given to Federation as a model factory
        # with the sites' DataLoaders, a loss and an optimizer factory; 3 sites holding a real
        # 2048-bit key, against the same model, loss and optimizer trained centrally. Measured:
        # 0.9750 vs 0.9833 (seeds 1 and 2: gaps of 0.83 and 0.28 points).
        ("digits_cnn.py", []),
    ],
)
def test_digits_example_federated_matches_central(script, args):
    """The example's federated test accuracy is within 2 points of central training's."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"federated \(he, 3 sites\) ([\d.]+)  central ([\d.]+)", proc.stdout)
    assert found, proc.stdout
    federated, central = float(found[1]), float(found[2])
    assert central >= 0.95
    assert abs(federated - central) <= 0.02
