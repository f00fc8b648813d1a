"""The import graph of torchhefl: no cycles, the layer rule of DESIGN.md, no private names across modules.

The graph is read from the source (``ast``), not by importing: every ``import`` and ``from ...
import`` anywhere in a module counts, function-level ones included. Imports under ``if
TYPE_CHECKING:`` never run, so they count for the layer rule but not for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "torchhefl"

# cycles allowed for now, each as its sorted modules: none
KNOWN_CYCLES: set[tuple[str, ...]] = set()

# (importing module, imported module, name) of underscore names allowed across modules: none
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, bool]]:
    """``(imported module, imported name or None, typing only)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: list[tuple[str, str | None, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, None, typing_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:  # ``from package import module``
                    out.append((sub, None, typing_only))
                else:
                    out.append((target, alias.name, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(tree, False)
    return out


def _graph(*, runtime_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for target, _, typing_only in _imports(m, path, modules):
            if runtime_only and typing_only:
                continue
            # the module itself, or the nearest package holding the name imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != m and target.startswith(PACKAGE):
                graph[m].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[tuple[str, ...]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(out)


def test_the_checker_sees_cycles_and_function_level_imports(tmp_path):
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from torchhefl.secure.keys import PublicKey\n"
        "def f():\n    from torchhefl.secure import wire, _parallel\n    from torchhefl.secure.tensor import _prod\n"
    )
    modules = _modules()
    found = _imports("torchhefl.secure.m", source, modules)
    assert ("torchhefl.secure.keys", "PublicKey", True) in found
    assert ("torchhefl.secure.wire", None, False) in found
    assert ("torchhefl.secure._parallel", None, False) in found
    assert ("torchhefl.secure.tensor", "_prod", False) in found


def test_no_import_cycles():
    cycles = find_cycles(_graph(runtime_only=True))
    unknown = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not unknown, f"import cycles among torchhefl modules: {unknown}"


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violations(graph: dict[str, set[str]], layer: str, forbidden: set[str]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, ts in graph.items() if _layer(m) == layer for t in ts if _layer(t) in forbidden)


def test_layer_rule_of_the_design():
    graph = _graph(runtime_only=False)
    # nn and secure stand alone: they import neither each other nor anything above them
    above = {"data", "privacy", "federated", "flower", "experiments", ""}
    assert _violations(graph, "nn", above | {"secure"}) == []
    assert _violations(graph, "secure", above | {"nn"}) == []
    # nothing in torchhefl imports flower (the package) except torchhefl/flower itself
    modules = _modules()
    flower_users = sorted(
        m
        for m, path in modules.items()
        if _layer(m) != "flower"
        for target, _, _ in _imports(m, path, modules)
        if target == "flwr" or target.startswith("flwr.") or _layer(target) == "flower" and target.startswith(PACKAGE)
    )
    assert flower_users == []


def private_imports() -> list[tuple[str, str, str]]:
    """``(module, imported module, name)`` for every underscore name imported from another torchhefl
    module (a private submodule of the importer's own package, such as ``secure._parallel``, is
    allowed: it is private to the package, not to a module)."""
    modules = _modules()
    out = []
    for m, path in modules.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for target, name, _ in _imports(m, path, modules):
            if not target.startswith(PACKAGE) or target == m:
                continue
            if name is None:  # ``import a._b`` or ``from a import _b`` of a module
                last = target.rpartition(".")
                if last[2].startswith("_") and not last[2].startswith("__") and last[0] != package:
                    out.append((m, last[0], last[2]))
            elif name.startswith("_") and not name.startswith("__"):
                out.append((m, target, name))
    return sorted(out)


def test_no_private_names_imported_across_modules():
    found = [p for p in private_imports() if p not in KNOWN_PRIVATE_IMPORTS]
    assert found == [], f"underscore names imported from another module: {found}"


if __name__ == "__main__":
    for cycle in find_cycles(_graph(runtime_only=True)):
        print("cycle:", " <-> ".join(cycle))
    for item in private_imports():
        print("private import:", item)
