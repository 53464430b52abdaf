"""The package's import picture: two wings as folders (``rdrop/losses``, ``rdrop/training``), the
losses never importing the training machinery, and no module of ``rdrop`` importing, directly or
through others, a module that imports it back (the kernels depend on the row math, never on the
public layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import rdrop

SRC = Path(rdrop.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every ``rdrop`` module a file imports, at module level or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_in_the_package():
    graph = _graph()
    assert "rdrop.losses.kernels.chunked" in graph and "rdrop.training.step" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_two_wings_are_folders_and_the_top_level_is_small():
    for wing in ("losses", "training", "integrations"):
        assert (SRC / wing / "__init__.py").is_file(), wing
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert top == ["__init__.py", "wrapper.py"], top


def test_the_losses_import_nothing_from_training_or_the_wrapper():
    graph = _graph()
    losses = {name for name in graph if name == "rdrop.losses" or name.startswith("rdrop.losses.")}
    assert "rdrop.losses.functional" in losses and "rdrop.losses.kernels.fused" in losses
    for name in sorted(losses):
        outside = {m for m in graph[name] if m not in losses}
        assert not outside, f"{name} imports {sorted(outside)}: the losses wing stands alone"


def test_the_finder_sees_imports_inside_functions():
    # A function-level import counts: functional.py imports its kernels inside a function.
    assert "rdrop.losses.kernels.chunked" in _graph()["rdrop.losses.functional"]


def test_kernels_depend_on_the_row_math_not_on_the_public_layer():
    graph = _graph()
    public = {"rdrop", "rdrop.losses.functional", "rdrop.losses.fused_linear", "rdrop.wrapper",
              "rdrop.training.step"}
    kernels = ("chunked", "compiled", "fused")
    for name in (f"rdrop.losses.kernels.{k}" for k in kernels):
        assert not graph[name] & public, (name, graph[name])
    assert graph["rdrop.losses._rows"] == set()
