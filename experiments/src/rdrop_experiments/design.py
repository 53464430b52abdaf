"""What the registry says about each experiment, as data the reports can take.

The reading wing (verdict, frontier, scale map, report, advise) reads run records and never
imports the running wing (registry, runner, scale, families). A few of its answers still depend
on how an experiment was *designed*: a tie on validation goes to the first point of the
registered grid, a reproduce command omits ``seeds=`` at the experiment's default, a scale
cell counts the runs it still lacks. The caller that holds the registry (the CLI) builds one
:class:`Design` with :meth:`Design.of` and hands it in; without one, the reports read the
records alone (ties by label, 3 seeds by default, no cell incomplete).

This module imports nothing from the harness: both wings may use it.

Example:
    >>> from types import SimpleNamespace as NS
    >>> image = NS(name="image", grid=({"methods": ("baseline",), "dropout": 0.1},
    ...                                {"methods": ("rdrop",), "alpha": 1.0}),
    ...            config=NS(seeds=5, dataset="fashion-mnist", alpha=0.6),
    ...            variants={"quick": {"seeds": 2}}, paper="")
    >>> d = Design.of([image]).experiment("image")
    >>> d.grid, d.dropout_key, d.seeds_for("quick")
    (('dropout=0.1', 'alpha=1.0'), 'dropout', 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Design", "ExperimentDesign", "dropout_key", "point_label", "setting_label",
           "value_label"]

Records = Sequence[Mapping[str, Any]]


def setting_label(setting: Mapping[str, Any]) -> str:
    """A grid setting as the ``setting`` label of its records (``key=value``, comma-joined;
    tuples joined by ``/``; ``default`` when empty).

    Example:
        >>> setting_label({"methods": ("rdrop",), "alpha": 0.5})
        'methods=rdrop,alpha=0.5'
    """
    if not setting:
        return "default"
    return ",".join(f"{k}={value_label(v)}" for k, v in setting.items())


def value_label(v: Any) -> str:
    """One setting value as its records write it (a tuple's items joined by ``/``).

    Example:
        >>> value_label(("baseline", "rdrop")), value_label(0.5)
        ('baseline/rdrop', '0.5')
    """
    return "/".join(str(x) for x in v) if isinstance(v, (tuple, list)) else str(v)


def point_label(setting: str) -> str:
    """A record's grid point: its ``setting`` label without the arms it ran (``methods=``).

    Example:
        >>> point_label("methods=rdrop,alpha=3.0"), point_label("methods=baseline")
        ('alpha=3.0', 'default')
    """
    parts = [p for p in str(setting).split(",") if not p.startswith("methods=")]
    return ",".join(parts) or "default"


def dropout_key(grid: Sequence[Mapping[str, Any]]) -> str:
    """The config field the baseline's grid varies (its dropout knob).

    Raises:
        ValueError: the grid has no baseline setting with exactly one such field.

    Example:
        >>> dropout_key([{"methods": ("baseline",), "pass_dropout": 0.1}])
        'pass_dropout'
    """
    for setting in grid:
        if tuple(setting.get("methods", ())) == ("baseline",):
            keys = [k for k in setting if k != "methods"]
            if len(keys) == 1:
                return keys[0]
    raise ValueError("the family's grid has no baseline dropout dimension.")


@dataclass(frozen=True)
class ExperimentDesign:
    """One registered experiment, as the reports need it.

    Attributes:
        grid: the point labels of its registered grid, in grid order (:func:`point_label`).
        dropout_key: the baseline's grid knob (None without one).
        seeds: seeds per run by default; variant_seeds: a variant's own default.
        dataset, alpha: the config's defaults; paper: the paper's figure, if any.
    """

    grid: tuple[str, ...] = ()
    dropout_key: str | None = None
    seeds: int = 3
    variant_seeds: Mapping[str, int] = field(default_factory=dict)
    dataset: str | None = None
    alpha: float | None = None
    paper: str = ""

    def seeds_for(self, variant: str) -> int:
        """The default number of seeds of a run of ``variant``."""
        return self.variant_seeds.get(variant, self.seeds)


@dataclass(frozen=True)
class Design:
    """Every registered experiment (by name) and how many runs a scale cell still lacks.

    Attributes:
        experiments: ``{name: ExperimentDesign}``.
        missing_runs: ``(cell name, the cell's records) -> runs still to go`` (0 for a folder
            that is no registered cell); None: every cell counts as complete.
    """

    experiments: Mapping[str, ExperimentDesign] = field(default_factory=dict)
    missing_runs: Callable[[str, Records], int] | None = None

    def experiment(self, name: str) -> ExperimentDesign | None:
        """The design of experiment ``name`` (None when it is not registered)."""
        return self.experiments.get(name)

    def grid(self, name: str) -> tuple[str, ...]:
        """The registered grid's point labels of ``name``, in grid order (``()`` if unknown)."""
        exp = self.experiment(name)
        return exp.grid if exp is not None else ()

    def missing(self, cell: str, records: Records) -> int:
        """Runs the scale cell ``cell`` still lacks, given its ``records``."""
        return self.missing_runs(cell, records) if self.missing_runs is not None else 0

    @classmethod
    def of(cls, experiments: Iterable[Any], *, cells: Iterable[Any] = (),
           missing_runs: Callable[[Any, Records], int] | None = None) -> Design:
        """The design of registered experiments (objects with ``name``, ``grid``, ``config``,
        ``variants`` and ``paper``, as the registry holds them) and of scale ``cells``
        (objects with ``name``), whose missing runs ``missing_runs(cell, records)`` counts."""
        designs = {}
        for exp in experiments:
            grid = [dict(s) for s in exp.grid]
            try:
                key: str | None = dropout_key(grid)
            except ValueError:
                key = None
            config = exp.config
            designs[exp.name] = ExperimentDesign(
                grid=tuple(point_label(setting_label(s)) for s in grid), dropout_key=key,
                seeds=int(getattr(config, "seeds", 3)),
                variant_seeds={v: int(o["seeds"]) for v, o in exp.variants.items()
                               if "seeds" in o},
                dataset=getattr(config, "dataset", None), alpha=getattr(config, "alpha", None),
                paper=str(getattr(exp, "paper", "") or ""))
        by_name = {c.name: c for c in cells}
        count = None
        if missing_runs is not None and by_name:
            def count(name: str, records: Records) -> int:
                return missing_runs(by_name[name], records) if name in by_name else 0
        return cls(designs, count)
