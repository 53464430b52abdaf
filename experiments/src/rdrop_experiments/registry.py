"""The experiment registry: families register themselves; ablations are named variants (data).

A family module (any module in :mod:`rdrop_experiments.families`) calls :func:`register` at import
time. :func:`discover` imports every module of that package, so a new family file needs no edit
here. A *variant* is a named set of overrides (``quick`` is required: the <= 60 s smoke run); a
*grid* variant lists several settings (an alpha sweep), each run with both arms unless the
setting differs only in R-Drop fields, in which case the baseline is shared (see
:func:`rdrop_experiments.config.config_key`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rdrop_experiments.config import CommonConfig, ConfigError

__all__ = [
    "ArmRun",
    "Experiment",
    "Recipe",
    "RunResult",
    "discover",
    "get_experiment",
    "list_experiments",
    "register",
]


@dataclass
class ArmRun:
    """One arm (method) for one seed: what the runner asks a recipe to run, and the recipe's
    handle back to the runner (progress display, which data it used).

    Attributes:
        method: an arm of :data:`rdrop_experiments.config.ARMS` (``"baseline"``, ``"rdrop"``,
            ...).
        seed: the run's seed (the recipe seeds torch with it before building the model).
        progress: whether to show progress (a bar on a terminal, plain lines in a log).
        label: short text for progress, e.g. ``"image rdrop s0"``.
        data_hash: set by :meth:`record_data`; the runner stores it in the record.
        checkpoint: where the recipe's training loop keeps its resumable state (the runner
            sets it beside the record and deletes it once the record is written; None = the
            run is not resumable).
    """

    method: str
    seed: int
    progress: bool = True
    label: str = ""
    data_hash: str | None = None
    checkpoint: Path | None = None

    def record_data(self, *splits: Any) -> str:
        """Hash the exact splits this run trains and evaluates on (tensors, arrays, texts, or
        containers of them; see :func:`rdrop_experiments.storage.data_hash`) for the record.
        Call it once, after loading the data; returns the hash."""
        from rdrop_experiments.storage import data_hash

        self.data_hash = data_hash(*splits)
        return self.data_hash

    def bar(self, iterable: Any = None, **kwargs: Any) -> Any:
        """A progress bar over ``iterable`` (``desc`` defaults to :attr:`label`; ``kwargs`` as
        for tqdm): a tqdm bar on a terminal, one plain line per interval in a log, nothing when
        :attr:`progress` is off. See :func:`rdrop_experiments.progress.progress_bar`."""
        from rdrop_experiments.progress import progress_bar

        kwargs.setdefault("desc", self.label)
        kwargs.setdefault("disable", not self.progress)
        return progress_bar(iterable, **kwargs)



@dataclass
class RunResult:
    """What a recipe returns; the runner adds config, timing, versions and writes the JSON.

    Attributes:
        metrics: final test metrics, ``{name: value}``; must contain the experiment's ``metric``.
        curves: one dict per evaluation point, with at least ``step``, ``train_loss``,
            ``valid_loss`` and the primary metric on the validation split (``valid_<metric>``).
        extra: anything else worth keeping (data sizes, parameter count, decoding mode, ...).
    """

    metrics: dict[str, float]
    curves: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


Recipe = Callable[[Any, ArmRun], RunResult]


@dataclass(frozen=True)
class Experiment:
    """One registered experiment (a family, or an ablation built on a family's recipe).

    Attributes:
        name: CLI name (``rdrop run <name>``).
        config: the default config instance (a frozen :class:`CommonConfig` subclass).
        recipe: ``recipe(config, run) -> RunResult`` (``run``: an :class:`ArmRun`): one seed
            of one arm, start to finish.
        metric: primary metric name (a key of ``RunResult.metrics``).
        higher_is_better: direction of ``metric``.
        metrics: all metric names to tabulate (primary first).
        description: one line for ``rdrop ls``.
        data: one line on the data set (package and split) for ``rdrop ls`` and reports.
        variants: ``{name: overrides}``; ``"quick"`` must exist. A variant's overrides apply on
            top of ``config``; user ``key=value`` overrides apply last.
        grid: settings run by this experiment, each a dict of overrides applied after the
            user's (``({},)`` = the config itself). An ablation is an experiment with a grid.
        paper: the paper's figure for this family, for the report (free text).
        tags: ``("family",)`` for the main experiment of a family (``rdrop run --all``),
            ``("ablation",)`` for ablations.
    """

    name: str
    config: CommonConfig
    recipe: Recipe
    metric: str
    higher_is_better: bool = True
    metrics: tuple[str, ...] = ()
    description: str = ""
    data: str = ""
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grid: Sequence[Mapping[str, Any]] = ({},)
    paper: str = ""
    tags: tuple[str, ...] = ("family",)

    def __post_init__(self) -> None:
        if "quick" not in self.variants:
            raise ConfigError(f"experiment {self.name!r} must declare a 'quick' variant.")
        if not self.metrics:
            object.__setattr__(self, "metrics", (self.metric,))
        elif self.metrics[0] != self.metric:
            raise ConfigError(f"experiment {self.name!r}: metrics must start with {self.metric!r}.")

    def derive(self, name: str, **changes: Any) -> Experiment:
        """A copy under a new name with some attributes changed (how ablations are declared).

        Example:
            ``register(get_experiment("translation").derive("translation-alpha",
            grid=[{"alpha": a} for a in (1, 3, 5, 7, 10)], description="alpha sweep"))``
        """
        from dataclasses import replace

        return replace(self, name=name, **changes)


_REGISTRY: dict[str, Experiment] = {}
_DISCOVERED = False


def register(experiment: Experiment, *, replace: bool = False) -> Experiment:
    """Add ``experiment`` to the registry (call at import time of a family module).

    Raises:
        ConfigError: the name is taken (pass ``replace=True`` to overwrite on purpose).
    """
    if experiment.name in _REGISTRY and not replace:
        raise ConfigError(f"experiment {experiment.name!r} is already registered.")
    _REGISTRY[experiment.name] = experiment
    return experiment


def discover() -> dict[str, Experiment]:
    """Import every module in :mod:`rdrop_experiments.families` once; return the registry.

    A family module that fails to import because an optional dependency is missing is skipped
    with a warning (its experiments are then absent from ``rdrop ls``); other errors propagate.
    """
    global _DISCOVERED
    if not _DISCOVERED:
        import warnings

        from rdrop_experiments import families

        for info in sorted(pkgutil.iter_modules(families.__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            try:
                importlib.import_module(f"{families.__name__}.{info.name}")
            except ModuleNotFoundError as exc:
                warnings.warn(
                    f"experiment family {info.name!r} skipped: missing module {exc.name!r} "
                    "(pip install -e ./experiments).",
                    RuntimeWarning,
                    stacklevel=2,
                )
        _DISCOVERED = True
    return dict(_REGISTRY)


def list_experiments() -> list[Experiment]:
    """All registered experiments, by name."""
    return [e for _, e in sorted(discover().items())]


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        ConfigError: unknown name, listing the known ones.
    """
    reg = discover()
    if name not in reg:
        import difflib

        close = difflib.get_close_matches(name, list(reg), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown experiment {name!r}.{hint} Known: {', '.join(sorted(reg))}.")
    return reg[name]
