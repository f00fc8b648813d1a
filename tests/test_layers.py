"""Imports point downwards: secure/ and nn/ stand alone (DESIGN.md, "The layers")."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "torchhefl"

#: package -> the torchhefl packages it must never import (at any depth, lazily or not)
FORBIDDEN = {
    "secure": ("torchhefl.federated", "torchhefl.nn", "torchhefl.flower", "torchhefl.privacy", "torchhefl.data"),
    "nn": ("torchhefl.secure", "torchhefl.federated", "torchhefl.flower"),
}


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = [
        f"{path.relative_to(ROOT.parent)} imports {name}"
        for path in files
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert bad == []


def test_the_check_sees_an_upward_import(tmp_path):
    # the check can fail: a file that imports the protocol layer is reported
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from torchhefl.federated.messages import encode_request\n")
    assert _imports(bad) == ["torchhefl.federated.messages"]
