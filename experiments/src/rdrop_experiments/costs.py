r"""What each scale-map cell cost, from its records' measured times, and what a larger cell
would cost: the numbers a user sizes a cluster with (``rdrop scale --costs``).

A cell's cost is the sum over its records of ``wall_time_s x num_threads`` (CPU-seconds; a
GPU record's ``wall_time_s`` counts as GPU-seconds). A cell the map does not have is
extrapolated from the largest measured cell of its family and model,

.. math::
    \hat c(n') = c(n) \, \frac{n'}{n},

linear in the training-set size ``n`` (the protocol's patience and budget are in epochs, so the
steps, and with them the time, grow with the data): a rough size, marked as extrapolated, never
a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdrop_experiments.storage import scan_results

__all__ = ["CellCost", "cell_costs", "costs_markdown", "extrapolate", "larger_cells"]


@dataclass(frozen=True)
class CellCost:
    """One cell's compute.

    Attributes:
        cell: the cell's name (``<family>-<size>-<model>``).
        family, size, model: what the name says (``size`` in examples, or tokens for LM).
        runs: records (every arm, grid point and seed).
        hours: CPU-hours (or GPU-hours where ``device`` is ``cuda``), summed over the runs.
        longest_minutes: the longest run's wall time.
        device: ``cpu`` or ``cuda`` (the runs' device).
        extrapolated: ``True`` for an estimate of a cell not run (:func:`extrapolate`).
    """

    cell: str
    family: str
    size: int
    model: str
    runs: int
    hours: float
    longest_minutes: float
    device: str = "cpu"
    extrapolated: bool = False


def _parse(name: str) -> tuple[str, int, str] | None:
    """``language-modeling-240000-d64`` -> ``("language-modeling", 240000, "d64")``."""
    parts = name.split("-")
    for i, part in enumerate(parts):
        if part.isdigit() and 0 < i < len(parts) - 1:
            return "-".join(parts[:i]), int(part), "-".join(parts[i + 1:])
    return None


def cell_costs(root: str | Path, cells: Iterable[str] | None = None) -> list[CellCost]:
    """The measured cost of every cell folder under ``root`` (``results/scale``), or of the
    named ``cells``, in name order; a cell without records is left out.

    Raises:
        FileNotFoundError: ``root`` is not a folder.

    Example:
        >>> import json, tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> folder = root / "image-500-vit-d32" / "image"
        >>> folder.mkdir(parents=True)
        >>> for seed, seconds in ((0, 1800.0), (1, 5400.0)):
        ...     rec = {"experiment": "image", "method": "baseline", "seed": seed,
        ...            "metric": "accuracy", "value": 0.5, "wall_time_s": seconds, "curves": [],
        ...            "config": {"num_threads": 1, "device": "cpu"}}
        ...     _ = (folder / f"baseline-seed{seed}-x.json").write_text(json.dumps(rec))
        >>> cost = cell_costs(root)[0]
        >>> cost.runs, cost.hours, cost.longest_minutes
        (2, 2.0, 90.0)
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (the scale map's records, "
                                "results/scale).")
    wanted = None if cells is None else set(cells)
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        parsed = _parse(folder.name)
        if parsed is None or (wanted is not None and folder.name not in wanted):
            continue
        records, _ = scan_results(folder)
        if not records:
            continue
        out.append(_cost(folder.name, parsed, records))
    return out


def _cost(name: str, parsed: tuple[str, int, str], records: Sequence[Mapping[str, Any]]
          ) -> CellCost:
    seconds, longest, devices = 0.0, 0.0, set()
    for rec in records:
        wall = float(rec.get("wall_time_s") or 0.0)
        config = rec.get("config", {})
        gpu = str(config.get("device", "cpu")).startswith("cuda")
        seconds += wall * (1 if gpu else int(config.get("num_threads") or 1))
        longest = max(longest, wall)
        devices.add("cuda" if gpu else "cpu")
    family, size, model = parsed
    return CellCost(name, family, size, model, len(records), seconds / 3600, longest / 60,
                    "+".join(sorted(devices)))


def extrapolate(measured: Sequence[CellCost], family: str, model: str, size: int) -> CellCost:
    """The cost of a cell not run, from the largest measured cell of ``family`` and ``model``
    (linear in size, see the module docstring).

    Raises:
        ValueError: no measured cell of that family and model.

    Example:
        >>> base = CellCost("lm-1000-d64", "lm", 1000, "d64", 10, 2.0, 5.0)
        >>> guess = extrapolate([base], "lm", "d64", 4000)
        >>> guess.cell, guess.hours, guess.longest_minutes, guess.extrapolated
        ('lm-4000-d64', 8.0, 20.0, True)
    """
    same = [c for c in measured if c.family == family and c.model == model
            and not c.extrapolated]
    if not same:
        raise ValueError(f"no measured cell of {family} with model {model} to extrapolate "
                         f"from; measured: {sorted(c.cell for c in measured)}.")
    base = max(same, key=lambda c: c.size)
    ratio = size / base.size
    return CellCost(f"{family}-{size}-{model}", family, size, model, base.runs,
                    base.hours * ratio, base.longest_minutes * ratio, base.device,
                    extrapolated=True)


def larger_cells(measured: Sequence[CellCost], factor: int = 4) -> list[CellCost]:
    """One cell ``factor`` times the largest measured one of each family and model,
    extrapolated (:func:`extrapolate`), in family and model order.

    Example:
        >>> small = CellCost("lm-1000-d64", "lm", 1000, "d64", 10, 2.0, 5.0)
        >>> large = CellCost("lm-4000-d64", "lm", 4000, "d64", 10, 6.0, 9.0)
        >>> [(c.cell, c.hours) for c in larger_cells([small, large])]
        [('lm-16000-d64', 24.0)]
    """
    largest: dict[tuple[str, str], int] = {}
    for c in measured:
        if not c.extrapolated:
            key = (c.family, c.model)
            largest[key] = max(largest.get(key, 0), c.size)
    return [extrapolate(measured, family, model, factor * size)
            for (family, model), size in sorted(largest.items())]


def costs_markdown(costs: Sequence[CellCost]) -> str:
    """A markdown table of :class:`CellCost` rows (estimates marked ``~``).

    Example:
        >>> print(costs_markdown([CellCost("lm-1000-d64", "lm", 1000, "d64", 10, 2.0, 5.0)]))
        | cell | runs | device | hours | longest run (min) |
        |---|---|---|---|---|
        | lm-1000-d64 | 10 | cpu | 2.0 | 5.0 |
    """
    lines = ["| cell | runs | device | hours | longest run (min) |", "|---|---|---|---|---|"]
    for c in costs:
        mark = "~" if c.extrapolated else ""
        hours = f"{mark}{c.hours:.1f}" if math.isfinite(c.hours) else "n/a"
        cell = f"{c.cell} (extrapolated)" if c.extrapolated else c.cell
        lines.append(f"| {cell} | {mark}{c.runs} | {c.device} | {hours} | "
                     f"{mark}{c.longest_minutes:.1f} |")
    return "\n".join(lines)
