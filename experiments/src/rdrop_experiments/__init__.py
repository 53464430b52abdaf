"""The evidence suite: a registry of experiments (configs as data), a resumable runner, reports.

Install from a checkout with ``pip install -e ./experiments``. Command line: ``rdrop ls``,
``rdrop run``, ``rdrop report``. See ``docs/EXPERIMENTS.md`` for how a family registers.
"""

from __future__ import annotations

from rdrop_experiments.config import (
    CommonConfig,
    ConfigError,
    apply_overrides,
    config_key,
    parse_overrides,
)
from rdrop_experiments.registry import (
    ArmRun,
    Experiment,
    RunResult,
    discover,
    get_experiment,
    list_experiments,
    register,
)
from rdrop_experiments.runner import plan_runs, resolve_configs, run_experiment

__all__ = [
    "ArmRun",
    "CommonConfig",
    "ConfigError",
    "Experiment",
    "RunResult",
    "apply_overrides",
    "build_report",
    "config_key",
    "discover",
    "get_experiment",
    "list_experiments",
    "parse_overrides",
    "plan_runs",
    "register",
    "resolve_configs",
    "run_experiment",
]


def build_report(*args, **kwargs):  # type: ignore[no-untyped-def]
    """:func:`rdrop_experiments.report.build_report` (imported on use, with the reports it
    drives)."""
    from rdrop_experiments.report import build_report as _build

    return _build(*args, **kwargs)
