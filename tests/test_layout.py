"""The package's import picture: two wings as folders (``rdrop/losses``, ``rdrop/training``), the
losses never importing the training machinery, and no module of ``rdrop`` importing, directly or
through others, a module that imports it back (the kernels depend on the row math, never on the
public layer)."""

from __future__ import annotations

from pathlib import Path

import rdrop
from import_graph import find_cycle, module_graph

SRC = Path(rdrop.__file__).resolve().parent


def _graph() -> dict[str, set[str]]:
    return module_graph(SRC)




def test_no_import_circle_in_the_package():
    graph = _graph()
    assert "rdrop.losses.kernels.chunked" in graph and "rdrop.training.step" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


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
