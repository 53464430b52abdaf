"""How the data package is laid out: no import circle, one ``datasets`` guard, one cache folder."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rdrop_experiments.data as data_pkg
from rdrop_experiments.data.common import cache_dir, import_datasets

DATA = Path(data_pkg.__file__).parent


def _imports(path: Path) -> set[str]:
    """Modules of the data package that ``path`` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "rdrop_experiments.data."):
            found.add(node.module.rsplit(".", 1)[1])
    return found


def test_data_modules_import_without_a_circle():
    graph = {p.stem: _imports(p) for p in DATA.glob("*.py") if p.stem != "__init__"}
    assert "text" not in graph["sword"] and "parallel" not in graph["text"]

    def visit(node, path):
        assert node not in path, f"import circle: {' -> '.join([*path, node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, [*path, node])

    for module in graph:
        visit(module, [])


def test_one_datasets_guard_and_one_cache_dir():
    sources = {p.stem: p.read_text() for p in DATA.glob("*.py")}
    assert [m for m, s in sources.items() if "import datasets" in s] == ["common"]
    assert [m for m, s in sources.items() if "def cache_dir" in s] == ["common"]
    from rdrop_experiments.data import debian, parallel

    assert debian.cache_dir is cache_dir  # the old import path keeps working
    assert parallel.read_sword_module.__module__ == "rdrop_experiments.data.sword"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RDROP_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_missing_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import of it now fails
    with pytest.raises(ImportError, match="pip install datasets"):
        import_datasets()


def test_each_data_module_imports_alone():
    for module in sorted(p.stem for p in DATA.glob("*.py") if p.stem != "__init__"):
        subprocess.run([sys.executable, "-c", f"import rdrop_experiments.data.{module}"],
                       check=True, timeout=120)
