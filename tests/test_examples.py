"""The README's first example runs, and its encrypted FedAvg equals the plaintext one."""

import re
import subprocess
import sys
from pathlib import Path

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
