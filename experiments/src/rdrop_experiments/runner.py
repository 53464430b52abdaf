"""Run an experiment: resolve its config, plan (setting, method, seed) runs, skip finished ones.

The runner owns everything around a recipe: config resolution, the run plan, the checks that
must pass before any training (device, writable output, not the committed results), one lock per
record, seeding threads, timing, provenance (versions, git commit, data hash) and the atomic JSON
write. A recipe only trains and evaluates one arm for one seed.

Three steps, each done once per command: :func:`plan_runs` (every value validated),
:func:`preflight` (devices, folders), :func:`execute_plan` (training);
:func:`run_experiment` chains them for one experiment, the CLI for several. Runs train in this
process, one after another, unless a launcher sends them elsewhere (``--launcher ray``: one Ray
task per run, :mod:`rdrop_experiments.launch`); either way this process writes every record.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rdrop_experiments.config import (
    SCHEDULE_TAGS,
    CommonConfig,
    ConfigError,
    apply_overrides,
    config_key,
    config_to_dict,
)
from rdrop_experiments.design import setting_label, value_label
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
    "Launcher",
    "PlannedRun",
    "RunsFailedError",
    "TrainedRun",
    "check_device",
    "checkpoint_path",
    "execute_plan",
    "failure_path",
    "format_plan",
    "is_committed_folder",
    "plan_runs",
    "preflight",
    "resolve_configs",
    "run_experiment",
    "run_name",
    "setting_label",
    "train_run",
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


class Launcher(Protocol):
    """Where the runs of a plan train when not here (:mod:`rdrop_experiments.launch`)."""

    name: str

    def check_resources(self, plan: Sequence[PlannedRun]) -> None:
        """Refuse (``ConfigError``) a plan whose devices or threads no worker has."""

    def run(self, experiment: Experiment, runs: Sequence[PlannedRun], *,
            progress: bool) -> Iterator[tuple[PlannedRun, TrainedRun | BaseException]]:
        """Train ``runs`` (each with :func:`train_run`); yield each with its outcome as it
        finishes: a :class:`TrainedRun`, or the exception that ended it for good."""
        ...


def _grid_settings(experiment: Experiment, overrides: Mapping[str, Any], *, variant: str | None,
                   grid: bool) -> list[dict[str, Any]]:
    """The grid settings an invocation runs, with the user's ``overrides`` taken into account.

    ``grid=False``: one setting, labelled by the user's values of the keys the grid sets and of
    the schedule options that make an arm (``config.SCHEDULE_TAGS``).
    Otherwise ``methods`` picks the grid's arms (each setting keeps the arms the user named; a
    setting left with none is dropped), and another key the user set that a setting also sets
    is an error: the grid's value would replace the user's.
    """
    settings = [dict(s) for s in experiment.grid]
    grid_keys = list(dict.fromkeys(k for s in settings for k in s))  # first-seen order
    if not grid:
        # the arm's own schedule options label it too, so that two start steps (say) of one
        # arm are two points of it and not one point with mixed records
        arm_keys = [key for key, _, _ in SCHEDULE_TAGS if key not in grid_keys]
        return [{k: overrides[k] for k in [*grid_keys, *arm_keys] if k in overrides}]
    clash = [k for k in overrides if k in grid_keys and k != "methods"]
    if clash:
        mine = " ".join(f"{k}={value_label(overrides[k])}" for k in clash)
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
    parts += [f"{k}={value_label(v) if not isinstance(v, (tuple, list)) else ','.join(map(str, v))}"
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
              write: bool = True, launcher: Launcher | None = None) -> None:
    """Every check that must pass before any training starts (the CLI runs it for all the
    experiments of a command first): each planned device exists (on this machine, or with a
    ``launcher`` where it sends the runs: a GPU in the Ray cluster); with ``write``, a ``quick``
    run does not target a git-tracked folder and each experiment's folder is writable.

    Raises:
        ConfigError: a missing device, or a quick run into a committed folder.
        PermissionError: an output folder that cannot be written.
    """
    if launcher is not None:
        launcher.check_resources(plan)
    else:
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


@dataclass
class TrainedRun:
    """What training one planned run hands to the process that writes its record.

    Attributes:
        result: the recipe's :class:`RunResult`.
        data_hash: the hash of the data the run saw (:meth:`ArmRun.record_data`).
        wall: seconds of this process's run plus the training time held by the checkpoint
            it resumed from (a killed run's earlier processes count too).
        resumed_from_step: the optimizer step of that checkpoint; 0 when trained from scratch.
        host: the machine that trained it (hostname, CPUs, torch threads).
    """

    result: RunResult
    data_hash: str | None
    wall: float
    resumed_from_step: int
    host: dict[str, Any]


def train_run(experiment: Experiment, run: PlannedRun, *, progress: bool) -> TrainedRun:
    """Train one planned run (resuming from its checkpoint when one is there); write nothing
    but the checkpoint. Called by :func:`execute_plan` here, and by a Ray worker for
    ``--launcher ray``.

    Raises:
        TypeError, KeyError: the recipe returned no :class:`RunResult` or lacks the metric.
    """
    import torch

    from rdrop_experiments.resume import load_checkpoint

    saved = load_checkpoint(checkpoint_path(run.path))
    loop = saved["loop"] if saved is not None else {}
    start = time.perf_counter()
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
    wall = time.perf_counter() - start + float(loop.get("elapsed", 0.0))
    return TrainedRun(result, arm.data_hash, wall, int(loop.get("step", 0)),
                      {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
                       "num_threads": run.config.num_threads})


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
    launcher: Launcher | None = None,
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
        launcher: where the runs train (see :func:`execute_plan`); default: this process.

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
    preflight(plan, out, variant=variant, allow_committed=allow_committed, write=not dry_run,
              launcher=launcher)
    if dry_run:
        return _records(plan)
    return execute_plan(experiment, plan, out=out, variant=variant, overrides=overrides,
                        grid=grid, progress=progress, force=force, launcher=launcher)


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
    launcher: Launcher | None = None,
) -> list[dict[str, Any]]:
    """Train the runs of a :func:`plan_runs` plan that are not finished (all with ``force``),
    each under its record's lock; return the records of all planned runs. Checks nothing that
    :func:`plan_runs` and :func:`preflight` check: call them first (:func:`run_experiment` does).

    ``variant``, ``overrides`` and ``grid`` are those the plan was made with; they go into each
    record (``overrides``, and ``command``, which reproduces the run).

    Without a ``launcher`` the runs train here, one after another, and a run that raises stops
    the command. With one (:class:`rdrop_experiments.launch.RayLauncher`) they train where it
    sends them, all at once; this process takes every lock first and writes each record as its
    run comes back, and a run that fails is written to :func:`failure_path` instead, the others
    go on, and :class:`RunsFailedError` names the failures at the end.
    """
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

    def record(run: PlannedRun, trained: TrainedRun) -> dict[str, Any]:
        return _record(experiment, run, trained, variant=variant, overrides=overrides,
                       command=command, versions=versions, git=git)

    if launcher is not None:
        try:
            _launch(experiment, todo, launcher, record=record, bar=bar, progress=progress,
                    force=force, command=command)
        finally:
            bar.close()
        return _records(plan)
    for run in todo:
        bar.set_postfix_str(f"{run.setting} {run.method} seed={run.seed}")
        with RecordLock(run.path) as lock:
            if not lock.acquire():
                _skipped(name, run, lock)
                continue
            if not force and read_json(run.path) is not None:  # finished by another process
                bar.update(1)
                continue
            if progress:  # a visible line as each run sets up (data, tokenizer, model)
                bar.write(f"{run.label or name} {run.method} seed={run.seed} [{run.setting}]: "
                          f"starting ({_budget(run.config)})")
            if force:  # a forced rerun starts afresh, not from an earlier run's checkpoint
                checkpoint_path(run.path).unlink(missing_ok=True)
            trained = train_run(experiment, run, progress=progress and run.config.progress)
            write_json_atomic(run.path, record(run, trained))
            checkpoint_path(run.path).unlink(missing_ok=True)
        bar.update(1)
    bar.close()
    return _records(plan)


def _skipped(name: str, run: PlannedRun, lock: RecordLock) -> None:
    host, pid = lock.owner() or ("?", "?")
    print(f"{run.label or name}: {run.method} seed={run.seed} [{run.setting}] is being run by "
          f"another process (pid {pid} on {host}); skipped here.", file=sys.stderr)


def _launch(experiment: Experiment, todo: Sequence[PlannedRun], launcher: Launcher, *,
            record: Callable[[PlannedRun, TrainedRun], dict[str, Any]], bar: Any,
            progress: bool, force: bool, command: str) -> None:
    """:func:`execute_plan` through a launcher. Every lock is taken here before the first run
    is sent and held until its record is written, by this process: a worker lost mid-run leaves
    no lock behind, and its retry (the launcher's) resumes from the run's checkpoint."""
    locks: dict[Path, RecordLock] = {}
    failed: list[tuple[PlannedRun, Path]] = []
    try:
        runs = []
        for run in todo:
            lock = RecordLock(run.path)
            if not lock.acquire():
                _skipped(experiment.name, run, lock)
                continue
            locks[run.path] = lock
            if not force and read_json(run.path) is not None:  # finished by another process
                locks.pop(run.path).release()
                bar.update(1)
                continue
            if force:  # a forced rerun starts afresh, not from an earlier run's checkpoint
                checkpoint_path(run.path).unlink(missing_ok=True)
            runs.append(run)
        for run, outcome in launcher.run(experiment, runs, progress=progress):
            if isinstance(outcome, TrainedRun):
                rec = record(run, outcome)
                rec["launcher"] = {"name": launcher.name,
                                   "resumed_from_step": outcome.resumed_from_step}
                write_json_atomic(run.path, rec)
                checkpoint_path(run.path).unlink(missing_ok=True)
                failure_path(run.path).unlink(missing_ok=True)
            else:  # beside the record, which stays missing: a rerun tries the run again
                write_json_atomic(failure_path(run.path), _failure(experiment, run, outcome,
                                                                  command=command))
                failed.append((run, failure_path(run.path)))
                bar.write(f"{run.label or experiment.name} {run.method} seed={run.seed} "
                          f"[{run.setting}] failed: {_first_line(outcome)}")
            locks.pop(run.path).release()
            bar.update(1)
    finally:
        for lock in locks.values():
            lock.release()
    if failed:
        raise RunsFailedError(failed)


class RunsFailedError(RuntimeError):
    """Runs of a launched plan failed (each written to its :func:`failure_path`); the others
    finished and were written. Rerunning the command tries the failed ones once more."""

    def __init__(self, failed: Sequence[tuple[PlannedRun, Path]]) -> None:
        self.failed = list(failed)
        lines = [f"  {run.label or run.experiment} {run.method} seed={run.seed} "
                 f"[{run.setting}]: {path}" for run, path in self.failed]
        super().__init__(f"{len(self.failed)} run(s) failed, the others were written; why, in "
                         "each failure file:\n" + "\n".join(lines))


def failure_path(record: Path) -> Path:
    """Where a launched run that failed says why, in JSON (``<record>.json.failed``, beside the
    record as its lock is): not a ``*.json`` file, so no report or rerun takes it for a record.

    Example:
        >>> failure_path(Path("runs/lm/baseline-seed0-abc.json")).name
        'baseline-seed0-abc.json.failed'
    """
    return record.with_name(record.name + ".failed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _failure(experiment: Experiment, run: PlannedRun, exc: BaseException, *,
             command: str) -> dict[str, Any]:
    return {"experiment": experiment.name, "setting": run.setting, "method": run.method,
            "seed": run.seed, "key": run.key, "command": command,
            "error": type(exc).__name__, "message": str(exc),
            "lost_worker": bool(getattr(exc, "lost_worker", False)),
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _record(experiment: Experiment, run: PlannedRun, trained: TrainedRun, *,
            variant: str | None, overrides: Mapping[str, Any] | None, command: str,
            versions: dict[str, str], git: dict[str, Any]) -> dict[str, Any]:
    result = trained.result
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
        "wall_time_s": round(trained.wall, 3),
        "config": config_to_dict(run.config),
        "key": run.key,
        "pair_key": run.pair_key,
        "overrides": {k: value_label(v) for k, v in (overrides or {}).items()},
        "command": command,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "data_hash": trained.data_hash,
        **{k: result.extra[k] for k in TOP_LEVEL_FIELDS if k in result.extra},
        "extra": result.extra,
        "info": {"description": experiment.description, "data": experiment.data,
                 "paper": experiment.paper},
        "versions": versions,
        "host": trained.host,
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
