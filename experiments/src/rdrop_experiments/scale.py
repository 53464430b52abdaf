r"""The scale map: each family at several training-set (and model) sizes, under one stopping rule.

A *cell* is a family at one size: the family's registered second-protocol grid (both arms),
with the cell's size overrides and the epoch stopping rule of :data:`STOPPING`, at the cell's
seeds, written under ``<root>/<cell>/<family>/``. Cells are registered in :data:`CELLS` (and in
docs/EXPERIMENTS.md, before their runs).

After a cell's grid has run, each arm's grid point is chosen on validation only (the mean over
seeds of the best validation value, :func:`rdrop_experiments.verdict.build_verdicts`). A choice
at an edge of its grid is extended, one point at a time, until the optimum is interior or the
knob's range ends (:func:`extension`):

* baseline dropout: below the lowest rate by :data:`DROPOUT_STEP` down to 0; above the highest
  by the same step up to :data:`DROPOUT_MAX`;
* R-Drop alpha: times 3 above the highest, divided by 3 below the lowest, at most
  :data:`MAX_EXTENSIONS` times per direction (alpha has no upper end, so the report marks a
  choice still at an edge after that).

Every run of a cell is an ordinary ``rdrop run`` record (resumable from its checkpoint), so a
killed cell is continued by running the same command again.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rdrop_experiments.config import SCHEDULE_TAGS, ConfigError
from rdrop_experiments.design import Design
from rdrop_experiments.design import dropout_key as _dropout_key
from rdrop_experiments.frontier import unscheduled

__all__ = ["CELLS", "STOPPING", "Cell", "UnknownCellError", "busy_runs", "cheaper_settings",
           "edge_state", "extension", "get_cell", "map_grid", "missing_runs", "pending_extensions",
           "run_cell", "run_extra_arms", "tuned_dropout_settings", "unscheduled"]

DROPOUT_STEP = 0.1
DROPOUT_MAX = 0.7
ALPHA_FACTOR = 3.0
MAX_EXTENSIONS = 3

# The stopping rule that holds at every size (docs/EXPERIMENTS.md, "Scale map"): evaluation
# every epoch, patience in epochs, stop only once validation has turned by the margin, and a
# compute cap in epochs of sample passes (the same for every arm). At the smallest cells it
# matches the second protocol's step rule (one evaluation per epoch there).
STOPPING: dict[str, dict[str, Any]] = {
    "language-modeling": {"eval_every_epochs": 1.0, "patience_epochs": 4.0,
                          "stop_margin": 0.005, "max_sample_pass_epochs": 100.0,
                          "max_steps": 1_000_000},
    "image": {"eval_every_epochs": 1.0, "patience_epochs": 5.0, "stop_margin": 0.005,
              "max_sample_pass_epochs": 100.0, "max_steps": 1_000_000},
    "text-classification": {"eval_every_epochs": 1.0, "patience_epochs": 3.0,
                            "stop_margin": 0.005, "max_sample_pass_epochs": 40.0,
                            "max_steps": 1_000_000},
    "summarization": {"eval_every_epochs": 1.0, "patience_epochs": 3.0, "stop_margin": 0.005,
                      "max_sample_pass_epochs": 64.0, "max_steps": 1_000_000},
    # patience 5 (R-Drop's validation NLL at alpha 3 still improved after ~100 epochs in the
    # 637-pair second-protocol cell; its smallest cell has 8 steps an epoch), cap 100 epochs
    "translation": {"eval_every_epochs": 1.0, "patience_epochs": 5.0, "stop_margin": 0.005,
                    "max_sample_pass_epochs": 100.0, "max_steps": 1_000_000},
}

D32 = {"dim": 32, "ffn": 64, "heads": 2}
D64 = {"dim": 64, "ffn": 128, "heads": 2}
D128 = {"dim": 128, "ffn": 256, "heads": 4}


@dataclass(frozen=True)
class Cell:
    """One family at one size.

    Attributes:
        family: a registered family (``rdrop ls``).
        size: training examples (``train_size``) or tokens (``train_tokens`` for language
            modeling): the actual count, never 0.
        model: a short name of the model size (``d64``).
        seeds: seeds per arm and grid point.
        overrides: the cell's config overrides beyond the size and the stopping rule.
    """

    family: str
    size: int
    model: str
    seeds: int
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<family>-<size>-<model>``, e.g. ``language-modeling-60000-d64``."""
        return f"{self.family}-{self.size}-{self.model}"

    @property
    def size_key(self) -> str:
        """The config field that holds the size."""
        return "train_tokens" if self.family == "language-modeling" else "train_size"

    def config_overrides(self) -> dict[str, Any]:
        """The overrides of every run of this cell (size, stopping rule, model, seeds)."""
        return {**STOPPING[self.family], self.size_key: self.size, "seeds": self.seeds,
                **self.overrides}


CELLS: tuple[Cell, ...] = (
    Cell("language-modeling", 15000, "d64", 5, D64),
    Cell("language-modeling", 60000, "d64", 3, D64),
    Cell("language-modeling", 240000, "d64", 3, D64),
    Cell("language-modeling", 15000, "d128", 3, D128),
    Cell("language-modeling", 60000, "d128", 3, D128),
    Cell("image", 500, "vit-d32", 5),
    Cell("image", 2000, "vit-d32", 3),
    Cell("image", 8000, "vit-d32", 3),
    # registered 2026-12-04 (docs/EXPERIMENTS.md, "Scale map: text classification and
    # summarization axes"), before any of their runs
    Cell("text-classification", 240, "minilm-l2", 5),
    Cell("text-classification", 1000, "minilm-l2", 3),
    Cell("text-classification", 4000, "minilm-l2", 3),
    Cell("summarization", 1500, "d64", 5),
    Cell("summarization", 6000, "d64", 3),
    Cell("summarization", 24000, "d64", 3),
    # registered 2026-12-04 (docs/EXPERIMENTS.md, "Scale map: translation axis", and its
    # amendment of 20:25 UTC), before any of their runs; 28714 = every raw training pair
    # (4,000 / 12,000 / 28,714 raw -> 637 / 1,916 / 4,600 kept by the 24-subword filter)
    Cell("translation", 4000, "d64", 5, D64),
    Cell("translation", 12000, "d64", 3, D64),
    Cell("translation", 28714, "d64", 3, D64),
    Cell("translation", 4000, "d32", 3, D32),
    Cell("translation", 12000, "d32", 3, D32),
)


class UnknownCellError(ConfigError, KeyError):
    """A name that is no registered cell: a :class:`~rdrop_experiments.config.ConfigError`
    (the CLI prints its one line) and a ``KeyError`` (a lookup that failed)."""

    __str__ = ConfigError.__str__  # KeyError's would quote the message


def get_cell(name: str) -> Cell:
    """The registered cell called ``name``.

    Raises:
        UnknownCellError: unknown name, with the closest cells and how to list them all.
    """
    for cell in CELLS:
        if cell.name == name:
            return cell
    names = [c.name for c in CELLS]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownCellError(f"unknown cell {name!r}.{hint} Cells: {', '.join(names)} "
                           "(`rdrop scale --list` shows each with its config).")


def extension(knob: str, values: Sequence[float], chosen: float,
              extended: int = 0) -> float | None:
    """The next grid value when ``chosen`` is at an edge of ``values``, else None.

    Args:
        knob: ``"dropout"`` (steps of :data:`DROPOUT_STEP` within [0, :data:`DROPOUT_MAX`]) or
            ``"alpha"`` (factors of :data:`ALPHA_FACTOR`).
        values: the grid's values so far; chosen: the value chosen on validation.
        extended: extensions already made in this direction (at most :data:`MAX_EXTENSIONS`).

    Example:
        >>> extension("dropout", [0.1, 0.3], 0.1), extension("dropout", [0.0, 0.1, 0.3], 0.0)
        (0.0, None)
        >>> extension("alpha", [0.5, 2.0], 2.0), extension("alpha", [0.5, 2.0], 0.5)
        (6.0, 0.167)
        >>> extension("alpha", [0.5, 2.0, 6.0], 2.0) is None
        True
    """
    lo, hi = min(values), max(values)
    if lo < chosen < hi or len(values) < 2 or extended >= MAX_EXTENSIONS:
        return None
    if knob == "dropout":
        nxt = chosen - DROPOUT_STEP if chosen == lo else chosen + DROPOUT_STEP
        nxt = round(nxt, 3)
        return nxt if 0.0 <= nxt <= DROPOUT_MAX and nxt not in values else None
    nxt = chosen * ALPHA_FACTOR if chosen == hi else chosen / ALPHA_FACTOR
    return round(nxt, 3)


def map_grid(grid: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A cell's first grid: the family's grid without the stop-gradient arm and the cheaper
    schedules (their question is issue 20's frontier, run by :func:`run_extra_arms`).

    Example:
        >>> map_grid([{"methods": ("baseline",), "dropout": 0.1},
        ...           {"methods": ("rdrop_stop_gradient",), "alpha": 1.0},
        ...           {"methods": ("rdrop",), "alpha": 1.0, "second_pass_fraction": 0.5}])
        [{'methods': ('baseline',), 'dropout': 0.1}]
    """
    schedules = [key for key, _, _ in SCHEDULE_TAGS]
    return [dict(s) for s in grid if "rdrop_stop_gradient" not in s.get("methods", ())
            and not any(k in s for k in schedules)]


def missing_runs(cell: Cell, records: Sequence[dict[str, Any]]) -> int:
    """Runs ``cell`` still lacks: for every grid point of its first grid and every point its
    records hold (extensions included), ``cell.seeds`` minus the distinct seeds finished there.
    Records of other arms (the cheaper schedules) are not counted.

    Example:
        >>> cell = Cell("image", 500, "vit-d32", 2)
        >>> rec = {"method": "baseline", "seed": 0, "config": {"dropout": 0.1}}
        >>> missing_runs(cell, [rec])  # 5 first-grid points x 2 seeds, one finished
        9
    """
    from rdrop_experiments.registry import get_experiment

    grid = map_grid(get_experiment(cell.family).grid)
    key = _dropout_key(grid)
    knobs = {"baseline": key, "rdrop": "alpha"}

    def point(method: str, values: Mapping[str, Any]) -> tuple[str, float | None]:
        knob = knobs.get(method)
        return method, (round(float(values[knob]), 6) if knob else None)

    seeds: dict[tuple[str, float | None], set[int]] = {
        point(s["methods"][0], s): set() for s in grid}
    mapped = unscheduled(records)
    for rec in mapped:
        method = rec["method"]
        if method in ("baseline", "rdrop", "rdrop_alpha0"):
            seeds.setdefault(point(method, rec["config"]), set()).add(int(rec["seed"]))
    missing = sum(max(0, cell.seeds - len(s)) for s in seeds.values())
    # a choice still at an edge that the rules extend: the next point's runs are to go too
    state = edge_state(mapped, key)
    return missing + cell.seeds * len(pending_extensions(grid, state))


def pending_extensions(first_grid: Sequence[Mapping[str, Any]],
                       state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The grid settings the extension rule adds next: for each arm of ``state`` (what
    :func:`edge_state` read from the cell's records) whose choice on validation is at an edge
    of its values, :func:`extension` in that direction, counting the extensions already made as
    the values beyond ``first_grid``'s range (alpha never extends down to 0). Empty once every
    choice is interior or its range has ended.

    Example:
        >>> pending_extensions([], {})
        []
    """
    out = []
    for method, s in state.items():
        first = [float(g[s["knob"]]) for g in first_grid
                 if tuple(g.get("methods", ())) == (method,) and s["knob"] in g]
        up = s["chosen"] == s["values"][-1]
        made = sum(1 for v in s["values"]
                   if first and (v > max(first) if up else v < min(first)))
        nxt = extension("dropout" if method == "baseline" else "alpha", s["values"],
                        s["chosen"], made)
        if nxt is None or (math.isclose(nxt, 0.0) and method == "rdrop"):
            continue
        out.append({"methods": (method,), s["knob"]: nxt})
    return out


def edge_state(records: Sequence[dict[str, Any]], dropout_key: str) -> dict[str, Any]:
    """:func:`rdrop_experiments.verdict.edge_state` with the registry's grid order for ties
    (per arm: its grid values, the value chosen on validation, whether it is at an edge).

    Example:
        >>> edge_state([], "dropout")
        {}
    """
    from rdrop_experiments.registry import discover
    from rdrop_experiments.verdict import edge_state as read

    return read(records, dropout_key, Design.of(discover().values()))


def busy_runs(folder: str | Path) -> list[Path]:
    """Records under ``folder`` that a live process is training now (their lock is held and
    not stale).

    Example:
        >>> import tempfile
        >>> busy_runs(tempfile.mkdtemp())
        []
    """
    from rdrop_experiments.storage import RecordLock

    return [lock.with_suffix("") for lock in sorted(Path(folder).rglob("*.json.lock"))
            if not RecordLock(lock.with_suffix("")).is_stale()]


def grid_finished(folder: str | Path, grid: Sequence[Mapping[str, Any]], seeds: int) -> bool:
    """Whether every setting of ``grid`` has a finished record under ``folder`` for each of
    ``seeds`` seeds (seeds 0 .. seeds - 1).

    Example:
        >>> import tempfile
        >>> grid_finished(tempfile.mkdtemp(), [{"methods": ("baseline",), "dropout": 0.1}], 2)
        False
    """
    from rdrop_experiments.runner import setting_label
    from rdrop_experiments.storage import load_results

    labels = {setting_label(s) for s in grid}
    done = {(r["setting"], int(r["seed"])) for r in load_results(folder)
            if r["setting"] in labels and int(r["seed"]) < seeds}
    return len(done) >= len(labels) * seeds


def run_cell(cell: Cell, root: str | Path = "results/scale", *, progress: bool = True,
             dry_run: bool = False, wait_s: float = 20.0,
             launcher: Any = None) -> list[dict[str, Any]]:
    """Run (or resume) every run of ``cell``, extending an edge choice until it is interior.

    Two runners may share a cell (``rdrop scale CELL`` twice): each skips the runs the other
    holds, and decides an extension only once every run of its grid has finished (polling
    every ``wait_s`` seconds while the other runner trains one), so both decide on the same
    finished records; a runner then shares the runs of an extension the other one is already
    training instead of waiting for all of them. With a ``launcher`` (``--launcher ray``) each
    grid's runs train at once, and an extension is sent as soon as its grid's runs are back.

    Returns:
        The cell's records.
    """
    from rdrop_experiments.registry import get_experiment
    from rdrop_experiments.runner import run_experiment

    family = get_experiment(cell.family)
    grid = map_grid(family.grid)
    first = list(grid)
    key = _dropout_key(grid)
    out = Path(root) / cell.name
    while True:
        experiment = replace(family, grid=grid)
        records = run_experiment(cell.family, cell.config_overrides(), out=out,
                                 progress=progress, dry_run=dry_run, experiment=experiment,
                                 launcher=launcher)
        if dry_run:
            print(_plan(cell, experiment, out))
            return records
        busy = busy_runs(out)
        # another runner training a run of this grid: decide on its finished runs too. Its
        # runs beyond this grid are an extension it decided on these same finished records
        # (the one rule), so this runner decides it as well and shares its runs.
        if busy and not grid_finished(out, grid, cell.seeds):
            print(f"{cell.name}: waiting for {len(busy)} run(s) another runner is training "
                  "before deciding on the grid's edges")
            while busy_runs(out) and not grid_finished(out, grid, cell.seeds):
                time.sleep(wait_s)
            continue
        state = edge_state(unscheduled(records), key)
        added = pending_extensions(first, state)
        for setting in added:
            method = setting["methods"][0]
            knob = state[method]["knob"]
            grid.append(setting)
            print(f"{cell.name}: {method} chose {knob}={state[method]['chosen']} at the edge of "
                  f"{state[method]['values']}; extending with {knob}={setting[knob]}")
        if not added:
            return records


def _plan(cell: Cell, experiment: Any, out: Path) -> str:
    """What ``rdrop scale --dry-run CELL`` prints: the runs of the cell's first grid."""
    from rdrop_experiments.runner import format_plan, plan_runs

    plan = plan_runs(experiment, out, cell.config_overrides())
    return (f"{cell.name}: the first grid (an edge choice is extended once its runs have "
            f"finished)\n{format_plan(plan)}")


def cheaper_settings(records: Sequence[dict[str, Any]], dropout_key: str,
                     fractions: tuple[float, ...] = (0.25, 0.5)) -> list[dict[str, Any]]:
    """The fraction arms of issue 20 for a finished cell: ``rdrop+fraction`` and
    ``rdrop_stop_gradient+fraction`` at each rate of ``fractions``, at the cell's R-Drop alpha
    chosen on validation (docs/EXPERIMENTS.md, "Cheaper schedules at a larger cell").

    Args:
        records: the cell's records (its R-Drop arm among them).
        dropout_key: the config field of the baseline's dropout grid.
        fractions: the grid of ``second_pass_fraction``.

    Raises:
        ValueError: the records hold no R-Drop arm to take the alpha from.

    Example:
        >>> try:
        ...     cheaper_settings([], "dropout")
        ... except ValueError as exc:
        ...     print(str(exc).split(";")[0])
        the cell has no R-Drop arm yet: run `rdrop scale CELL` first
    """
    from rdrop_experiments.protocol import cheaper_grid

    state = edge_state(records, dropout_key)
    if "rdrop" not in state:
        raise ValueError("the cell has no R-Drop arm yet: run `rdrop scale CELL` first; the "
                         "cheaper arms take its alpha chosen on validation.")
    alpha = state["rdrop"]["chosen"]
    return [s for s in cheaper_grid(alpha=alpha, alpha_grid=(alpha,), fractions=fractions)
            if "auto_start_patience" not in s]


def tuned_dropout_settings(records: Sequence[dict[str, Any]],
                           dropout_key: str) -> list[dict[str, Any]]:
    """The arm "R-Drop at the tuned baseline's dropout" (``rdrop+tuned_dropout``) for a
    finished cell: R-Drop at the cell's alpha chosen on validation, with the baseline's dropout
    field (``dropout_key``) at the rate the baseline chose on validation, every other field as
    the cell's. The registered R-Drop arm runs at the family's dropout; a user who adds R-Drop
    to a run they tuned keeps their own (docs/EXPERIMENTS.md, "R-Drop at the tuned baseline's
    dropout").

    Args:
        records: the cell's registered records (both arms among them).
        dropout_key: the config field of the baseline's dropout grid.

    Raises:
        ValueError: the records hold no baseline or no R-Drop arm yet; the baseline chose
            dropout 0; or R-Drop already runs at the rate the baseline chose (its registered
            arm is then this comparison).

    Example:
        >>> try:
        ...     tuned_dropout_settings([], "dropout")
        ... except ValueError as exc:
        ...     print(str(exc).split(";")[0])
        the cell has no baseline and R-Drop arms yet: run `rdrop scale CELL` first
    """
    state = edge_state(records, dropout_key)
    if not {"baseline", "rdrop"} <= set(state):
        raise ValueError("the cell has no baseline and R-Drop arms yet: run `rdrop scale CELL` "
                         "first; this arm takes both choices on validation.")
    rate, alpha = state["baseline"]["chosen"], state["rdrop"]["chosen"]
    if rate == 0.0:
        raise ValueError(f"the baseline chose {dropout_key}=0: R-Drop there would compare "
                         "passes that differ only through the model's other dropout slots, if "
                         "any; this arm is not defined for it.")
    rdrop_rate = next(float(r["config"][dropout_key]) for r in records if r["method"] == "rdrop")
    if math.isclose(rdrop_rate, rate):
        raise ValueError(f"R-Drop already runs at the baseline's chosen {dropout_key}={rate:g}; "
                         "its registered arm is this comparison.")
    return [{"methods": ("rdrop",), "alpha": alpha, dropout_key: rate,
             "arm_tag": "tuned_dropout"}]


def plateau_settings(records: Sequence[dict[str, Any]], dropout_key: str,
                     alphas: tuple[float, ...] | None = None,
                     max_extensions: int = 2) -> list[dict[str, Any]]:
    """The plateau-start arm (``rdrop+plateau``, issue 32; docs/EXPERIMENTS.md, "Plateau
    start") for a cell: R-Drop from where the registered plateau rule fires, at each alpha of
    the registered grid, extended by a factor 3 at the edge validation chooses (once the grid's
    runs are in ``records``), up to ``max_extensions`` times, until validation turns. Rerun
    ``rdrop scale CELL --plateau`` until it has nothing left to run.

    Example:
        >>> [s["alpha"] for s in plateau_settings([], "dropout")]
        [1.0, 10.0]
    """
    from rdrop_experiments.protocol import PLATEAU_ALPHAS, is_better, plateau_grid

    grid = sorted(alphas or PLATEAU_ALPHAS)
    seeds = {r["seed"] for r in records if r.get("method") == "baseline"}
    runs: dict[float, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("method") == "rdrop" and r.get("config", {}).get("start_rule") == "plateau":
            runs.setdefault(float(r["config"]["alpha"]), []).append(r)
    for _ in range(max_extensions):
        if any(not seeds or {r["seed"] for r in runs.get(a, [])} < seeds for a in grid):
            break  # the grid's runs are not all in yet
        higher = bool(runs[grid[0]][0]["extra"]["selection_higher_is_better"])
        mean = {a: sum(r["extra"]["best_valid"] for r in runs[a]) / len(runs[a]) for a in grid}
        best = grid[0]
        for a in grid[1:]:
            best = a if is_better(mean[a], mean[best], higher) else best
        if best == grid[-1]:
            grid.append(best * 3)
        elif best == grid[0]:
            grid.insert(0, best / 3)
        else:
            break
    return plateau_grid(tuple(grid))


EXTRA_ARMS = {"cheaper": ("the fraction arms", cheaper_settings),
              "tuned_dropout": ("R-Drop at the tuned baseline's dropout", tuned_dropout_settings),
              "plateau": ("the plateau-start arm", plateau_settings)}


def run_extra_arms(cell: Cell, root: str | Path = "results/scale", *, progress: bool = True,
                   dry_run: bool = False, arms: str = "cheaper",
                   launcher: Any = None) -> list[dict[str, Any]]:
    """Run (or resume) the extra arms of a finished ``cell`` under the cell's overrides, into
    the cell's folder: ``arms="cheaper"``, the fraction arms of :func:`cheaper_settings`;
    ``"tuned_dropout"``, the arm of :func:`tuned_dropout_settings`. Both are read in the cell's
    own frontier table, never in its map row.

    Raises:
        ValueError: the settings function refuses the cell (not run yet, ...), or the cell
            still has registered runs to go (its choices on validation may still move).
        KeyError: ``arms`` is not a key of :data:`EXTRA_ARMS`.
    """
    from rdrop_experiments.registry import get_experiment
    from rdrop_experiments.runner import run_experiment
    from rdrop_experiments.storage import load_results

    family = get_experiment(cell.family)
    out = Path(root) / cell.name
    what, settings = EXTRA_ARMS[arms]
    everything = load_results(out)
    records = unscheduled(everything)
    # the plateau arm reads its own runs (its edge extensions); the others the registered arms
    grid = settings(everything if arms == "plateau" else records, _dropout_key(family.grid))
    if (missing := missing_runs(cell, records)) > 0:
        raise ValueError(f"the cell is not finished ({missing} registered runs to go): run "
                         f"`rdrop scale {cell.name}` first; its choices may still move.")
    alphas = ", ".join(f"{s['alpha']:g}" for s in grid)
    print(f"{cell.name}: {what} at alpha {alphas}, {len(grid)} setting(s) x {cell.seeds} seeds")
    return run_experiment(cell.family, cell.config_overrides(), out=out, progress=progress,
                          dry_run=dry_run, experiment=replace(family, grid=grid),
                          launcher=launcher)
