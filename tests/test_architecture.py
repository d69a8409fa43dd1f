"""The package's layout rules, checked on the source: core/ stays pure, no import cycles, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pdbatch"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, known: set) -> set:
    """Every pdbatch module ``name`` imports, at the top or inside a function (lazy imports count)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t.startswith("pdbatch") and t != name:
                out.add(t)
    return out


def _graph() -> dict:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_core_imports_only_core_and_errors():
    bad = {name: sorted(d for d in deps if not (d.startswith("pdbatch.core") or d == "pdbatch.errors"))
           for name, deps in _graph().items() if name.startswith("pdbatch.core")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ re-exporting its own modules is not a cycle of the architecture.
    edges = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_is_under_the_size_cap(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by responsibility"


def test_library_never_prints():
    offenders = []
    for name, path in _modules().items():
        if name == "pdbatch.__main__" or name.startswith("pdbatch.cli"):  # the command line prints
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_backends_report_through_the_ledger_and_never_write_the_job():
    """Backends see a job through backends/base.Ledger: no store, no job field written, no private job name."""
    forbidden = {"store", "record", "hashes", "skipped", "host", "overwrite"}
    found = []
    for path in sorted((PKG / "backends").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "job":
                if node.attr in forbidden or node.attr.startswith("_"):
                    found.append(f"{path.name}:{node.lineno} job.{node.attr}")
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "job":
                    found.append(f"{path.name}:{t.lineno} assigns job.{t.attr}")
    assert not found, found
