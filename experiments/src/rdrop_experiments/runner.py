"""Run an experiment: resolve its config, plan (setting, method, seed) runs, skip finished ones.

The runner owns everything around a recipe: config resolution, the run plan, seeding threads,
timing, versions and the atomic JSON write. A recipe only trains and evaluates one arm for one seed.
"""

from __future__ import annotations

import os
import shlex
import socket
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
from rdrop_experiments.io import (
    SCHEMA_VERSION,
    package_versions,
    read_json,
    result_path,
    write_json_atomic,
)
from rdrop_experiments.registry import Experiment, RunContext, RunResult, get_experiment

__all__ = ["PlannedRun", "plan_runs", "resolve_configs", "run_experiment"]


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


def _setting_label(setting: Mapping[str, Any]) -> str:
    if not setting:
        return "default"
    return ",".join(f"{k}={_fmt(v)}" for k, v in setting.items())


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "/".join(str(x) for x in v)
    return str(v)


def resolve_configs(
    experiment: Experiment,
    overrides: Mapping[str, Any] | None = None,
    *,
    variant: str | None = None,
) -> list[tuple[str, CommonConfig]]:
    """The ``(setting label, config)`` pairs an invocation runs.

    Order of application: the experiment's default config, then the variant's overrides (e.g.
    ``quick``), then the user's ``key=value`` overrides, then each grid setting.

    Raises:
        ConfigError: unknown variant, unknown key, invalid value.
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
    return [(_setting_label(s), apply_overrides(cfg, s)) for s in experiment.grid]


def plan_runs(
    experiment: Experiment,
    out: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    *,
    variant: str | None = None,
) -> list[PlannedRun]:
    """Every run an invocation needs, deduplicated (sweep points share baseline runs)."""
    plan: dict[Path, PlannedRun] = {}
    for label, cfg in resolve_configs(experiment, overrides, variant=variant):
        pair_key = config_key(cfg, "baseline")
        for seed in cfg.seed_list:
            for method in cfg.methods:
                key = config_key(cfg, method)
                path = result_path(out, experiment.name, method, seed, key)
                if path not in plan:  # a baseline shared by sweep points keeps the first label
                    plan[path] = PlannedRun(experiment.name, label, cfg, method, seed, key,
                                            pair_key, path)
    return list(plan.values())


def _command(name: str, variant: str | None, overrides: Mapping[str, Any] | None) -> str:
    parts = ["rdrop", "run", name]
    if variant == "quick":
        parts.append("--quick")
    elif variant:
        parts += ["--variant", variant]
    parts += [f"{k}={_fmt(v) if not isinstance(v, (tuple, list)) else ','.join(map(str, v))}"
              for k, v in (overrides or {}).items()]
    return shlex.join(parts)


def _execute(experiment: Experiment, run: PlannedRun, *, progress: bool) -> RunResult:
    import torch

    torch.set_num_threads(run.config.num_threads)
    ctx = RunContext(method=run.method, seed=run.seed, progress=progress,
                     label=f"{experiment.name} {run.method} s{run.seed}")
    result = experiment.recipe(run.config, ctx)
    if not isinstance(result, RunResult):
        raise TypeError(f"recipe of {experiment.name!r} returned {type(result).__name__}, "
                        "expected RunResult.")
    if experiment.metric not in result.metrics:
        raise KeyError(f"recipe of {experiment.name!r} returned no {experiment.metric!r} metric; "
                       f"got {sorted(result.metrics)}.")
    return result


def run_experiment(
    name: str,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    out: str | os.PathLike[str] = "results",
    variant: str | None = None,
    progress: bool = True,
    dry_run: bool = False,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Run (or resume) experiment ``name``; return the records of all its planned runs.

    Finished runs (a complete JSON at the planned path) are skipped, so rerunning the same
    command after a crash runs only what is missing. Each finished run is written at once,
    atomically, before the next starts.

    Args:
        name: a registered experiment.
        overrides: ``{key: value}`` or ``["key=value", ...]``.
        out: output root.
        variant: a named variant such as ``"quick"``.
        progress: tqdm bars.
        dry_run: only plan; return the records that exist (and print nothing).
        force: rerun and overwrite finished runs too.

    Raises:
        ConfigError: unknown experiment/variant/key or an invalid value.
    """
    from tqdm.auto import tqdm

    from rdrop_experiments.config import parse_overrides

    experiment = get_experiment(name)
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(type(experiment.config), overrides)
    plan = plan_runs(experiment, out, overrides, variant=variant)
    todo = [r for r in plan if force or read_json(r.path) is None]
    if dry_run:
        return _records(plan)
    command = _command(name, variant, overrides)
    versions = package_versions()
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc=name, unit="run",
               disable=not progress, dynamic_ncols=True)
    for run in todo:
        bar.set_postfix_str(f"{run.setting} {run.method} seed={run.seed}")
        start = time.perf_counter()
        result = _execute(experiment, run, progress=progress and run.config.progress)
        wall = time.perf_counter() - start
        primary = float(result.metrics[experiment.metric])
        record = {
            "schema": SCHEMA_VERSION,
            "experiment": experiment.name,
            "variant": variant or "default",
            "setting": run.setting,
            "method": run.method,
            "seed": run.seed,
            "metric": experiment.metric,
            "value": primary,
            "higher_is_better": experiment.higher_is_better,
            "metrics": {k: float(v) for k, v in result.metrics.items()},
            "curves": result.curves,
            "wall_time_s": round(wall, 3),
            "config": config_to_dict(run.config),
            "key": run.key,
            "pair_key": run.pair_key,
            "overrides": {k: _fmt(v) for k, v in (overrides or {}).items()},
            "command": command,
            "extra": result.extra,
            "info": {"description": experiment.description, "data": experiment.data,
                     "paper": experiment.paper},
            "versions": versions,
            "host": {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
                     "num_threads": run.config.num_threads},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(run.path, record)
        bar.update(1)
    bar.close()
    return _records(plan)


def _records(plan: list[PlannedRun]) -> list[dict[str, Any]]:
    out = []
    for run in plan:
        rec = read_json(run.path)
        if rec is not None:
            rec["_path"] = str(run.path)
            out.append(rec)
    return out
