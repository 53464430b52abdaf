"""Run an experiment: resolve its config, plan (setting, method, seed) runs, skip finished ones.

The runner owns everything around a recipe: config resolution, the run plan, the checks that
must pass before any training (device, writable output, not the committed results), one lock per
record, seeding threads, timing, provenance (versions, git commit, data hash) and the atomic JSON
write. A recipe only trains and evaluates one arm for one seed.

Three steps, each done once per command: :func:`plan_runs` (every value validated),
:func:`preflight` (devices, folders), :func:`execute_plan` (training);
:func:`run_experiment` chains them for one experiment, the CLI for several.

A user's ``key=value`` never loses silently to the grid: ``methods=`` picks arms of the grid
(settings for other arms are left out), and any other key that a grid setting sets is refused
with the command that runs one setting with the user's values (``grid=False``, ``--no-grid``).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdrop_experiments.config import (
    CommonConfig,
    ConfigError,
    apply_overrides,
    config_key,
    config_to_dict,
)
from rdrop_experiments.progress import progress_bar
from rdrop_experiments.registry import ArmRun, Experiment, RunResult, get_experiment
from rdrop_experiments.storage import (
    SCHEMA_VERSION,
    RecordLock,
    check_writable,
    clean_stale_tmp,
    git_state,
    package_versions,
    read_json,
    result_path,
    write_json_atomic,
)

__all__ = [
    "DEFAULT_OUT",
    "PlannedRun",
    "check_device",
    "checkpoint_path",
    "execute_plan",
    "format_plan",
    "is_committed_folder",
    "plan_runs",
    "preflight",
    "resolve_configs",
    "run_experiment",
    "run_name",
    "setting_label",
]

# Where `rdrop run` writes by default: ignored by git, never the committed results/ folder.
DEFAULT_OUT = "runs"
# Fields a recipe reports in ``RunResult.extra`` that scripts read at the top of a record (the
# second protocol's selection rule); copied there, and left in ``extra`` too.
TOP_LEVEL_FIELDS = ("selection", "best_step", "best_sample_passes", "sample_passes")


@dataclass(frozen=True)
class PlannedRun:
    """One (setting, method, seed) run and where its JSON goes."""

    experiment: str
    setting: str
    config: CommonConfig
    method: str
    seed: int
    key: str
    pair_key: str
    path: Path
    label: str = ""  # the experiment's name with its data set where a variant swaps it


def setting_label(setting: Mapping[str, Any]) -> str:
    """A grid setting as the ``setting`` label of its records (``key=value``, comma-joined;
    tuples joined by ``/``; ``default`` when empty).

    Example:
        >>> setting_label({"methods": ("rdrop",), "alpha": 0.5})
        'methods=rdrop,alpha=0.5'
    """
    if not setting:
        return "default"
    return ",".join(f"{k}={_fmt(v)}" for k, v in setting.items())


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "/".join(str(x) for x in v)
    return str(v)


def _grid_settings(experiment: Experiment, overrides: Mapping[str, Any], *, variant: str | None,
                   grid: bool) -> list[dict[str, Any]]:
    """The grid settings an invocation runs, with the user's ``overrides`` taken into account.

    ``grid=False``: one setting, labelled by the user's values of the keys the grid sets.
    Otherwise ``methods`` picks the grid's arms (each setting keeps the arms the user named; a
    setting left with none is dropped), and another key the user set that a setting also sets
    is an error: the grid's value would replace the user's.
    """
    settings = [dict(s) for s in experiment.grid]
    grid_keys = list(dict.fromkeys(k for s in settings for k in s))  # first-seen order
    if not grid:
        return [{k: overrides[k] for k in grid_keys if k in overrides}]
    clash = [k for k in overrides if k in grid_keys and k != "methods"]
    if clash:
        mine = " ".join(f"{k}={_fmt(overrides[k])}" for k in clash)
        raise ConfigError(
            f"{experiment.name} runs a grid of {len(settings)} settings that sets "
            f"{', '.join(sorted(set(grid_keys) - {'methods'}))} per setting, so your {mine} "
            f"would be replaced by the grid's values (`rdrop ls -v` lists them). To run one "
            f"setting with your values, add --no-grid: "
            f"{_command(experiment.name, variant, overrides, grid=False)}")
    if "methods" in overrides and "methods" in grid_keys:
        wanted = tuple(overrides["methods"])
        picked = []
        for s in settings:
            if "methods" in s:
                s["methods"] = tuple(m for m in s["methods"] if m in wanted)
                if not s["methods"]:
                    continue
            picked.append(s)
        if not picked:
            arms = sorted({m for s in experiment.grid for m in s.get("methods", ())})
            raise ConfigError(
                f"{experiment.name}'s grid runs no setting of methods={','.join(wanted)}; its "
                f"arms: {', '.join(arms)}. To run that arm on its own, add --no-grid: "
                f"{_command(experiment.name, variant, overrides, grid=False)}")
        settings = picked
    return settings


def resolve_configs(
    experiment: Experiment,
    overrides: Mapping[str, Any] | None = None,
    *,
    variant: str | None = None,
    grid: bool = True,
) -> list[tuple[str, CommonConfig]]:
    """The ``(setting label, config)`` pairs an invocation runs.

    Order of application: the experiment's default config, then the variant's overrides (e.g.
    ``quick``), then the user's ``key=value`` overrides, then each grid setting. A grid key the
    user set is never overridden in silence: ``methods`` picks the grid's arms, any other such
    key is an error (``grid=False`` runs the one setting the user's values make).

    Raises:
        ConfigError: unknown variant, unknown key, invalid value, a key the grid sets.
    """
    cfg = experiment.config
    if variant is not None:
        if variant not in experiment.variants:
            raise ConfigError(
                f"experiment {experiment.name!r} has no variant {variant!r}; "
                f"variants: {', '.join(sorted(experiment.variants))}."
            )
        cfg = apply_overrides(cfg, experiment.variants[variant])
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    settings = _grid_settings(experiment, overrides or {}, variant=variant, grid=grid)
    return [(setting_label(s), apply_overrides(cfg, s)) for s in settings]


def plan_runs(
    experiment: Experiment,
    out: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    *,
    variant: str | None = None,
    grid: bool = True,
) -> list[PlannedRun]:
    """Every run an invocation needs, deduplicated (sweep points share baseline runs); every
    config value is validated here (:func:`resolve_configs`)."""
    plan: dict[Path, PlannedRun] = {}
    for label, cfg in resolve_configs(experiment, overrides, variant=variant, grid=grid):
        pair_key = config_key(cfg, "baseline")
        for seed in cfg.seed_list:
            for method in cfg.methods:
                key = config_key(cfg, method)
                path = result_path(out, experiment.name, method, seed, key)
                if path not in plan:  # a baseline shared by sweep points keeps the first label
                    plan[path] = PlannedRun(experiment.name, label, cfg, method, seed, key,
                                            pair_key, path, run_name(experiment, cfg))
    return list(plan.values())


def _command(name: str, variant: str | None, overrides: Mapping[str, Any] | None, *,
             grid: bool = True) -> str:
    parts = ["rdrop", "run", name]
    if variant == "quick":
        parts.append("--quick")
    elif variant:
        parts += ["--variant", variant]
    if not grid:
        parts.append("--no-grid")
    parts += [f"{k}={_fmt(v) if not isinstance(v, (tuple, list)) else ','.join(map(str, v))}"
              for k, v in (overrides or {}).items()]
    return shlex.join(parts)


def run_name(experiment: Experiment, cfg: CommonConfig) -> str:
    """The experiment's name, with the data set where a variant swaps it (``image (digits)``:
    the quick image run trains on scikit-learn's digits, not Fashion-MNIST)."""
    data = getattr(cfg, "dataset", None)
    if data is not None and data != getattr(experiment.config, "dataset", data):
        return f"{experiment.name} ({data})"
    return experiment.name


def _budget(cfg: CommonConfig) -> str:
    """The run's length in the config's own terms: steps, and any compute cap or patience."""
    parts = [f"steps={cfg.max_steps}"]
    for name in sorted(vars(cfg)):
        if name != "max_steps" and any(w in name for w in ("budget", "sample_passes", "patience")):
            parts.append(f"{name}={getattr(cfg, name)}")
    return " ".join(parts)


def format_plan(plan: Sequence[PlannedRun], *, force: bool = False) -> str:
    """One line per planned run (experiment, setting, method, seed, length, to do or done).

    Example:
        >>> print(format_plan([]))
        (nothing planned)
    """
    if not plan:
        return "(nothing planned)"
    lines = []
    for run in plan:
        name = run.label or run.experiment
        done = read_json(run.path) is not None
        state = "redo" if done and force else "done" if done else "todo"
        lines.append(f"{state}  {name}  [{run.setting}]  {run.method}  seed={run.seed}  "
                     f"{_budget(run.config)}  device={run.config.device}  -> {run.path}")
    todo = sum(1 for line in lines if not line.startswith("done"))
    lines.append(f"{len(plan)} run(s) planned, {todo} to run.")
    return "\n".join(lines)


def check_device(name: str) -> None:
    """Refuse a device this machine does not have, before any training.

    Raises:
        ConfigError: ``device`` names a missing CUDA/MPS device or is not a device string.

    Example:
        >>> check_device("cpu"); check_device("auto")
    """
    if name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device; use cpu, cuda, cuda:N or auto.")\
            from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name!r} but CUDA is not available on this machine; "
                              "use device=cpu (or device=auto).")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name!r} but this machine has {count} CUDA device(s) "
                              f"(cuda:0 .. cuda:{count - 1}).")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} but MPS is not available; use device=cpu.")


def is_committed_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is, or would be created inside, a folder that holds files tracked by
    git (the committed ``results/``, or ``results/quick`` below it), the checkout's root aside.

    Example:
        >>> import tempfile
        >>> is_committed_folder(tempfile.mkdtemp())
        False
    """
    path = Path(folder).resolve()
    existing = next((p for p in (path, *path.parents) if p.is_dir()), None)
    if existing is None:
        return False

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(existing), *args], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top:
        return False
    root = Path(top).resolve()
    for p in (path, *path.parents):
        if p == root or root not in p.parents:
            return False
        if p.is_dir() and git("ls-files", "--", str(p)):
            return True
    return False


def preflight(plan: Sequence[PlannedRun], out: str | os.PathLike[str], *,
              variant: str | None = None, allow_committed: bool = False,
              write: bool = True) -> None:
    """Every check that must pass before any training starts (the CLI runs it for all the
    experiments of a command first): each planned device exists; with ``write``, a ``quick``
    run does not target a git-tracked folder and each experiment's folder is writable.

    Raises:
        ConfigError: a missing device, or a quick run into a committed folder.
        PermissionError: an output folder that cannot be written.
    """
    for device in sorted({r.config.device for r in plan}):
        check_device(device)
    if not write:
        return
    if variant == "quick" and not allow_committed and is_committed_folder(out):
        raise ConfigError(
            f"--out {str(out)!r} holds files tracked by git (committed results); quick runs are "
            f"smoke tests, not evidence. Use the default --out {DEFAULT_OUT} or another folder "
            "(or pass --allow-committed if you really mean it)."
        )
    for experiment in sorted({r.experiment for r in plan}):
        check_writable(Path(out) / experiment)


def checkpoint_path(record: Path) -> Path:
    """Where a run keeps its resumable state while it trains: beside its record
    (``baseline-seed0-<key>.ckpt.pt``); deleted once the record is written, so a rerun of the
    same command after a kill resumes every unfinished run from its last checkpoint.

    Example:
        >>> checkpoint_path(Path("runs/lm/baseline-seed0-abc.json")).name
        'baseline-seed0-abc.ckpt.pt'
    """
    return record.with_name(record.stem + ".ckpt.pt")


def _execute(experiment: Experiment, run: PlannedRun, *, progress: bool) -> tuple[RunResult,
                                                                                    ArmRun]:
    import torch

    torch.set_num_threads(run.config.num_threads)
    arm = ArmRun(method=run.method, seed=run.seed, progress=progress,
                 label=f"{run.label or experiment.name} {run.method} s{run.seed}",
                 checkpoint=checkpoint_path(run.path))
    result = experiment.recipe(run.config, arm)
    if not isinstance(result, RunResult):
        raise TypeError(f"recipe of {experiment.name!r} returned {type(result).__name__}, "
                        "expected RunResult.")
    if experiment.metric not in result.metrics:
        raise KeyError(f"recipe of {experiment.name!r} returned no {experiment.metric!r} metric; "
                       f"got {sorted(result.metrics)}.")
    return result, arm


def run_experiment(
    name: str,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    out: str | os.PathLike[str] = DEFAULT_OUT,
    variant: str | None = None,
    grid: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    force: bool = False,
    allow_committed: bool = False,
    experiment: Experiment | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) experiment ``name``; return the records of all its planned runs.

    Finished runs (a complete JSON at the planned path) are skipped, so rerunning the same
    command after a crash runs only what is missing. Each finished run is written at once,
    atomically, before the next starts. Before any training: every config value is validated,
    the device must exist, ``out`` must be writable, and a ``quick`` run may not write into a
    folder tracked by git (the committed results). While a run trains, its record is locked
    (``<record>.lock``), so a second process on the same folder skips it instead of redoing it.

    Args:
        name: a registered experiment.
        overrides: ``{key: value}`` or ``["key=value", ...]``. ``methods`` picks arms of the
            experiment's grid; another key that a grid setting sets is refused (see ``grid``).
        out: output root (default ``runs``, ignored by git).
        variant: a named variant such as ``"quick"``.
        grid: run the experiment's grid; ``False`` runs one setting: the config with the
            variant and ``overrides`` applied (``rdrop run --no-grid``).
        progress: progress bars (plain lines when stderr is not a terminal).
        dry_run: only validate and plan; return the records that exist (see :func:`format_plan`).
        force: rerun and overwrite finished runs too.
        allow_committed: let a ``quick`` run write into a git-tracked folder.
        experiment: the registered experiment ``name`` with changes (a longer grid: the scale
            map's extensions, :mod:`rdrop_experiments.scale`); default: as registered.

    Raises:
        ConfigError: unknown experiment/variant/key, an invalid value, a key the grid sets, a
            missing device, or a quick run into a committed folder.
        PermissionError: ``out`` is not writable.
    """
    from rdrop_experiments.config import parse_overrides

    experiment = experiment if experiment is not None else get_experiment(name)
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(type(experiment.config), overrides)
    plan = plan_runs(experiment, out, overrides, variant=variant, grid=grid)
    preflight(plan, out, variant=variant, allow_committed=allow_committed, write=not dry_run)
    if dry_run:
        return _records(plan)
    return execute_plan(experiment, plan, out=out, variant=variant, overrides=overrides,
                        grid=grid, progress=progress, force=force)


def execute_plan(
    experiment: Experiment,
    plan: Sequence[PlannedRun],
    *,
    out: str | os.PathLike[str],
    variant: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    grid: bool = True,
    progress: bool = True,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Train the runs of a :func:`plan_runs` plan that are not finished (all with ``force``),
    each under its record's lock; return the records of all planned runs. Checks nothing that
    :func:`plan_runs` and :func:`preflight` check: call them first (:func:`run_experiment` does).

    ``variant``, ``overrides`` and ``grid`` are those the plan was made with; they go into each
    record (``overrides``, and ``command``, which reproduces the run).
    """
    from rdrop_experiments.resume import resumed_elapsed

    name = experiment.name
    folder = Path(out) / name
    clean_stale_tmp(folder)
    todo = [r for r in plan if force or read_json(r.path) is None]
    command = _command(name, variant, overrides, grid=grid)
    versions = package_versions()
    git = git_state()
    bar = progress_bar(total=len(plan), initial=len(plan) - len(todo),
                       desc=plan[0].label if plan else name, unit="run",
                       disable=not progress)
    for run in todo:
        bar.set_postfix_str(f"{run.setting} {run.method} seed={run.seed}")
        with RecordLock(run.path) as lock:
            if not lock.acquire():
                host, pid = lock.owner() or ("?", "?")
                print(f"{run.label or name}: {run.method} seed={run.seed} [{run.setting}] is "
                      f"being run by another process (pid {pid} on {host}); skipped here.",
                      file=sys.stderr)
                continue
            if not force and read_json(run.path) is not None:  # finished by another process
                bar.update(1)
                continue
            if progress:  # a visible line as each run sets up (data, tokenizer, model)
                bar.write(f"{run.label or name} {run.method} seed={run.seed} [{run.setting}]: "
                          f"starting ({_budget(run.config)})")
            if force:  # a forced rerun starts afresh, not from an earlier run's checkpoint
                checkpoint_path(run.path).unlink(missing_ok=True)
            # a resumed run: the training time of the processes before the kill counts too
            before = resumed_elapsed(checkpoint_path(run.path))
            start = time.perf_counter()
            result, arm = _execute(experiment, run, progress=progress and run.config.progress)
            wall = time.perf_counter() - start + before
            write_json_atomic(run.path, _record(experiment, run, result, arm, wall=wall,
                                                variant=variant, overrides=overrides,
                                                command=command, versions=versions, git=git))
            checkpoint_path(run.path).unlink(missing_ok=True)
        bar.update(1)
    bar.close()
    return _records(plan)


def _record(experiment: Experiment, run: PlannedRun, result: RunResult, arm: ArmRun, *,
            wall: float, variant: str | None, overrides: Mapping[str, Any] | None, command: str,
            versions: dict[str, str], git: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "experiment": experiment.name,
        "variant": variant or "default",
        "setting": run.setting,
        "method": run.method,
        "seed": run.seed,
        "metric": experiment.metric,
        "value": float(result.metrics[experiment.metric]),
        "higher_is_better": experiment.higher_is_better,
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "curves": result.curves,
        "wall_time_s": round(wall, 3),
        "config": config_to_dict(run.config),
        "key": run.key,
        "pair_key": run.pair_key,
        "overrides": {k: _fmt(v) for k, v in (overrides or {}).items()},
        "command": command,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "data_hash": arm.data_hash,
        **{k: result.extra[k] for k in TOP_LEVEL_FIELDS if k in result.extra},
        "extra": result.extra,
        "info": {"description": experiment.description, "data": experiment.data,
                 "paper": experiment.paper},
        "versions": versions,
        "host": {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
                 "num_threads": run.config.num_threads},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _records(plan: list[PlannedRun]) -> list[dict[str, Any]]:
    out = []
    for run in plan:
        rec = read_json(run.path)
        if rec is not None:
            rec["_path"] = str(run.path)
            out.append(rec)
    return out
