"""The harness's import picture: a running wing (registry, runner, recipes, models, data) over a
reading wing (records to verdicts, maps and reports) that never imports it, not even inside a
function, not even through a shared module; and no import circle among the harness's modules."""

from __future__ import annotations

import sys
from pathlib import Path

import rdrop_experiments

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # import_graph
from import_graph import find_cycle, module_graph

SRC = Path(rdrop_experiments.__file__).resolve().parent
PACKAGE = "rdrop_experiments"

READING = {"verdict", "scale_map", "frontier", "report", "headline", "agreement", "advise",
           "predictor", "compare", "stats", "costs"}
RUNNING = {"registry", "runner", "scale", "training", "protocol", "task", "families", "launch",
           "resume", "seq2seq", "models", "data", "tryout"}
# what both wings may import: each of these imports neither wing's modules
SHARED = {"config", "storage", "compute", "progress", "design", "formatting"}
OTHER = {"cli"}  # the router: it hands the registry's design to the reports


def _graph() -> dict[str, set[str]]:
    return module_graph(SRC)


def _wing(module: str) -> str:
    """``reading``, ``running``, ``shared`` or ``other`` (the package, the CLI router, ...)."""
    top = module.removeprefix(f"{PACKAGE}.").split(".")[0]
    for wing, names in (("reading", READING), ("running", RUNNING), ("shared", SHARED)):
        if top in names:
            return wing
    return "other"


def _reach(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or through others, with one path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                todo.append(nxt)
    del paths[start]
    return paths




def _crossings(graph: dict[str, set[str]], wing: str, banned: set[str]) -> list[str]:
    out = []
    for name in sorted(m for m in graph if _wing(m) == wing):
        for target, path in sorted(_reach(graph, name).items()):
            if _wing(target) in banned:
                out.append(" -> ".join(path))
    return out


def test_every_module_belongs_to_one_wing():
    # a new module is placed on purpose: add it to the wing it belongs to
    tops = {m.removeprefix(f"{PACKAGE}.").split(".")[0] for m in _graph()} - {PACKAGE}
    placed = [READING, RUNNING, SHARED, OTHER]
    assert sorted(tops - set().union(*placed)) == []
    assert sum(len(w) for w in placed) == len(set().union(*placed))  # no module in two wings
    assert not (READING | SHARED) - tops


def test_the_reading_wing_never_imports_the_running_wing():
    crossings = _crossings(_graph(), "reading", {"running"})
    assert not crossings, "the reading wing reaches the running wing:\n" + "\n".join(crossings)


def test_the_shared_modules_import_neither_wing():
    crossings = _crossings(_graph(), "shared", {"running", "reading"})
    assert not crossings, "a shared module reaches a wing:\n" + "\n".join(crossings)


def test_no_import_circle_in_the_harness():
    cycle = find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_scan_sees_imports_inside_functions_and_through_other_modules():
    graph = _graph()
    # advise imports the scale map inside a function; the scale map reaches storage through
    # verdict's neighbours and directly
    assert f"{PACKAGE}.scale_map" in graph[f"{PACKAGE}.advise"]
    assert f"{PACKAGE}.registry" in graph[f"{PACKAGE}.cli"]  # the router, inside a function
    assert f"{PACKAGE}.stats" in _reach(graph, f"{PACKAGE}.scale_map")


def test_the_checks_can_fail():
    graph = {"p.verdict": {"p.design"}, "p.design": {"p.runner"}, "p.runner": set()}
    # a reading module reaching a running one through a shared module is found, with its path
    assert _reach(graph, "p.verdict")["p.runner"] == ["p.verdict", "p.design", "p.runner"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert _wing(f"{PACKAGE}.families.image") == "running"
    assert _wing(f"{PACKAGE}.scale_map") == "reading" and _wing(f"{PACKAGE}.cli") == "other"
