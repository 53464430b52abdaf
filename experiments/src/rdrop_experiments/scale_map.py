r"""The scale map's report: R-Drop's gain per cell, against training-set size and overfitting.

A *cell* is one family at one size with its arms chosen on validation: the second protocol's
family cells under ``results/<family>/`` and the scale map's cells under
``results/scale/<cell>/`` (:mod:`rdrop_experiments.scale`). For each cell, from
:func:`rdrop_experiments.verdict.build_verdicts`:

* the best-quality difference ``rdrop - baseline`` and the difference at the baseline's
  compute, in the metric's report units, with 95% t intervals and Holm p over the cell;
* the relative gain ``rel`` (positive = R-Drop better): :math:`(b - r)/b` for lower-is-better
  metrics, :math:`(r - b)/b` otherwise, from the means over seeds;
* the tuned baseline's overfitting ``gap``: validation loss minus training loss (both in eval
  mode; per example or per token; the family's fixed training slice) at its best-validation
  step, mean over seeds; and how far its validation metric moved after that best point
  (``after_best``: relative change from the best to the last evaluation, positive = worse);
* whether the chosen baseline overfit: it stopped on patience (past its optimum) in a majority
  of seeds. A cell where it did not is reported as such, not as a verdict;
* whether every registered run of a scale cell has finished (``rdrop_experiments.scale.
  missing_runs``, handed in through a :class:`~rdrop_experiments.design.Design`): a cell with
  runs still to go is marked incomplete, carries no verdict and stays out of the predictor's
  fit.

The map is collected first (:func:`collect_map`, reading only) and written second
(:func:`write_map`); ``map.md``'s main table keeps seven columns, ``map.csv`` holds every field.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rdrop_experiments.design import Design
from rdrop_experiments.formatting import ci, number, p_value, ratio
from rdrop_experiments.frontier import (
    frontier_markdown,
    improves,
    plot_frontier,
    unscheduled,
)
from rdrop_experiments.predictor import Predictor, fit_predictor, predictor_markdown
from rdrop_experiments.storage import check_one_record_per_run, load_results
from rdrop_experiments.verdict import FamilyVerdict, build_verdicts, edge_state
from rdrop_experiments.verdict import field as rfield

__all__ = ["MapCell", "ScaleMap", "cell_from_records", "collect_map", "extra_verdicts",
           "map_cells", "map_markdown", "span_markdown", "tuned_dropout_markdown", "write_map"]

SIZE_KEYS = ("train_tokens", "train_size")


@dataclass
class MapCell:
    """One cell of the map (values in the metric's report units; see the module docstring)."""

    name: str
    family: str
    source: str
    size: int
    model: str
    metric: str
    higher_is_better: bool
    seeds: int
    chosen_baseline: str
    chosen_rdrop: str
    baseline: float
    rdrop: float
    best: float
    best_low: float
    best_high: float
    best_holm: float
    equal: float
    equal_low: float
    equal_high: float
    equal_holm: float
    compute_to_best: float
    rel: float
    gap: float
    after_best: float
    overfit: bool
    stopped_past_optimum: str
    at_edge: list[str] = field(default_factory=list)
    alpha: float = math.nan
    missing_runs: int = 0

    @property
    def verdict_ok(self) -> bool:
        """Whether the cell can carry a verdict (every registered run finished, and its
        baseline passed its optimum)."""
        return self.overfit and self.missing_runs == 0

    @property
    def verdict(self) -> str:
        """Whether the cell carries a verdict, and why not: ``yes``, or ``no: ...``; then the
        choices still at a grid edge."""
        if self.missing_runs:
            text = f"no: INCOMPLETE: {self.missing_runs} runs to go"
        elif not self.overfit:
            text = f"no: the baseline passed its optimum in {self.stopped_past_optimum} seeds"
        else:
            text = "yes"
        return text + (f"; at a grid edge: {', '.join(self.at_edge)}" if self.at_edge else "")


def _size(rec: dict[str, Any]) -> int:
    """The training set's actual size: tokens for language modeling; otherwise the examples
    the run trained on (``extra.sizes.train``: a seq2seq family caps its raw pairs with
    ``train_size`` and then drops pairs over its length limits), else the config's count."""
    cfg = rec.get("config", {})
    extra = rec.get("extra", {})
    if cfg.get("train_tokens"):
        return int(cfg["train_tokens"])
    sizes = extra.get("sizes") or {}
    if sizes.get("train"):
        return int(sizes["train"])
    for key in SIZE_KEYS:
        if cfg.get(key):
            return int(cfg[key])
    for key in ("n_train", "train_examples"):
        if key in extra:
            return int(extra[key])
    return 0


def _model_name(rec: dict[str, Any]) -> str:
    """``d<dim>`` of a record's model, or its encoder's name (``pretrained``)."""
    dim = rec.get("config", {}).get("dim")
    return f"d{dim}" if dim else "pretrained"


def _best_point(rec: dict[str, Any]) -> dict[str, Any]:
    step = rfield(rec, "best_step")
    return next((c for c in rec["curves"] if c["step"] == step), rec["curves"][-1])


def _after_best(rec: dict[str, Any]) -> float:
    """Relative change of the selection metric from the best to the last evaluation
    (positive = worse)."""
    metric = str(rfield(rec, "selection_metric", ""))
    higher = bool(rfield(rec, "selection_higher_is_better", rec["higher_is_better"]))
    best = float(rfield(rec, "best_valid", math.nan))
    last = float(rec["curves"][-1].get(metric, math.nan)) if metric else math.nan
    if not (math.isfinite(best) and math.isfinite(last)) or best == 0:
        return math.nan
    return (best - last) / abs(best) if higher else (last - best) / abs(best)


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def cell_from_records(records: Sequence[dict[str, Any]], *, name: str, source: str,
                      model: str = "", design: Design | None = None) -> MapCell | None:
    """The :class:`MapCell` of one cell's records (None without both baseline and R-Drop);
    ``design`` breaks ties on validation and names the family's dropout knob (for the choices
    still at a grid edge)."""
    verdicts = [v for v in build_verdicts(records, design) if "rdrop" in v.arms]
    if not verdicts:
        return None
    v = verdicts[0]
    cmp = {c.name: c for c in v.comparisons}
    best, equal = cmp["rdrop - baseline, best"], cmp.get("rdrop - baseline, equal compute")
    base_runs = list(v.arms["baseline"].runs.values())
    rdrop_runs = list(v.arms["rdrop"].runs.values())
    b = _mean([v.scale * float(r["value"]) for r in base_runs])
    r = _mean([v.scale * float(x["value"]) for x in rdrop_runs])
    rel = (b - r) / b if not v.higher_is_better else (r - b) / b
    gap = _mean([float(_best_point(x).get("valid_loss", math.nan))
                 - float(_best_point(x).get("train_loss", math.nan)) for x in base_runs])
    past = sum(x.get("stop_reason", x.get("extra", {}).get("stop_reason")) == "patience"
               for x in base_runs)
    registered = design.experiment(v.experiment) if design is not None else None
    edges = []
    if registered is not None and registered.dropout_key:
        state = edge_state(records, registered.dropout_key, design)
        edges = [f"{m} {s['knob']}={s['chosen']:g}" for m, s in state.items() if s["at_edge"]]
    nan = math.nan
    return MapCell(
        name=name, family=v.experiment, source=source, size=_size(base_runs[0]),
        model=model or _model_name(base_runs[0]), metric=v.metric,
        higher_is_better=v.higher_is_better, seeds=best.diff.n,
        chosen_baseline=v.arms["baseline"].chosen, chosen_rdrop=v.arms["rdrop"].chosen,
        baseline=b, rdrop=r, best=best.diff.mean, best_low=best.diff.low,
        best_high=best.diff.high, best_holm=best.p_holm,
        equal=equal.diff.mean if equal else nan, equal_low=equal.diff.low if equal else nan,
        equal_high=equal.diff.high if equal else nan,
        equal_holm=equal.p_holm if equal else nan,
        compute_to_best=v.compute_to_best.get("rdrop", nan), rel=rel, gap=gap,
        after_best=_mean([_after_best(x) for x in base_runs]),
        overfit=past * 2 > len(base_runs), stopped_past_optimum=f"{past}/{len(base_runs)}",
        at_edge=edges, alpha=float(rdrop_runs[0].get("config", {}).get("alpha", nan)))


def map_cells(root: str | Path = "results", design: Design | None = None) -> list[MapCell]:
    """Every cell under ``root``: the second-protocol family cells (``root/<family>/``) and the
    scale map's cells (``root/scale/<cell>/``), sorted by family, model and size."""
    return _cells_and_records(root, design)[0]


def _cells_and_records(
    root: str | Path, design: Design | None = None,
) -> tuple[list[MapCell], dict[str, list[dict[str, Any]]]]:
    design = design or Design()
    root = Path(root)
    scale_root = (root / "scale").resolve()
    cells: list[MapCell] = []
    by_cell: dict[str, list[dict[str, Any]]] = {}
    protocol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in load_results(root):
        path = Path(rec["_path"]).resolve()
        if scale_root in path.parents:
            continue
        protocol[rec["experiment"]].append(rec)
    for family, recs in protocol.items():
        cell = cell_from_records(recs, name=f"{family} (second protocol)", source="protocol",
                                 design=design)
        if cell is not None:
            cells.append(cell)
    if scale_root.is_dir():
        for folder in sorted(p for p in scale_root.iterdir() if p.is_dir()):
            recs = load_results(folder)
            check_one_record_per_run(recs, where=str(folder))
            # the map row keeps the cell's registered comparisons: arms with a schedule option
            # (issue 20's cheaper arms) are read in their own frontier table
            cell = cell_from_records(unscheduled(recs), name=folder.name, source="scale",
                                     design=design)
            if cell is not None:
                cell.missing_runs = design.missing(folder.name, recs)
                cells.append(cell)
                by_cell[folder.name] = recs
    cells.sort(key=lambda c: (c.family, c.source != "scale", c.model, c.size))
    return cells, by_cell


@dataclass
class ScaleMap:
    """Everything ``map.md`` says, collected (:func:`collect_map`) before anything is written.

    Attributes:
        cells: every cell (:class:`MapCell`), sorted by family, model and size.
        predictor: the registered predictor fitted on them (None: too few cells).
        extra: the verdicts of each scale cell holding arms beyond its map row
            (:func:`extra_verdicts`).
        baselines: per scale cell, its chosen baseline's runs (their validation curves are the
            evidence that each baseline passed its optimum).
    """

    cells: list[MapCell]
    predictor: Predictor | None
    extra: dict[str, list[FamilyVerdict]]
    baselines: dict[str, list[dict[str, Any]]]


def collect_map(root: str | Path = "results", design: Design | None = None) -> ScaleMap:
    """Read the map's cells under ``root`` (see :func:`map_cells`); writes nothing.

    Raises:
        DuplicateRunError: two records of one run in one cell's folder.
    """
    cells, by_cell = _cells_and_records(root, design)
    baselines = {}
    for name, recs in by_cell.items():
        verdicts = build_verdicts(recs, design)
        if verdicts:
            baselines[name] = list(verdicts[0].arms["baseline"].runs.values())
    return ScaleMap(cells, fit_predictor(cells) if cells else None,
                    extra_verdicts(by_cell, design), baselines)


def cheaper_markdown(verdicts_by_cell: Mapping[str, Sequence[FamilyVerdict]], *,
                     links: bool = False) -> str:
    """The frontier table of each scale cell that holds arms beyond its map row (issue 20's
    cheaper schedules, R-Drop at the tuned baseline's dropout: ``scale.run_extra_arms``), every
    arm of the cell chosen on validation, Holm over that table ('' when no cell has such arms);
    with ``links``, a link to its ``plots/frontier-<cell>.png``. ``verdicts_by_cell``:
    :func:`extra_verdicts`."""
    text = ""
    for name, verdicts in sorted(verdicts_by_cell.items()):
        text += (f"\n## Extra arms in scale cells: {name}\n\n"
                 + frontier_markdown(verdicts, level=4) + _best_deltas(verdicts))
        if links and verdicts:
            text += f"\n![{name} frontier](../plots/frontier-{name}.png)\n"
    return text


def extra_verdicts(by_cell: Mapping[str, Sequence[dict[str, Any]]],
                   design: Design | None = None) -> dict[str, list[FamilyVerdict]]:
    """The verdicts (all arms, Holm over each cell's comparisons) of each scale cell that holds
    arms beyond its map row; built once for the report's extra-arms sections."""
    return {name: build_verdicts(recs, design) for name, recs in by_cell.items()
            if len(unscheduled(recs)) != len(recs)}


TUNED = "rdrop+tuned_dropout"


def tuned_dropout_markdown(verdicts_by_cell: Mapping[str, Sequence[Any]]) -> str:
    """One row per scale cell that holds the arm "R-Drop at the tuned baseline's dropout"
    (``rdrop+tuned_dropout``, ``scale.tuned_dropout_settings``): the dropout each arm ran at,
    the registered R-Drop arm's and the tuned-dropout arm's best-quality Δ against the tuned
    baseline (paired by seed, 95% t interval, Holm over the cell's comparisons, as in the
    cell's own section), the arm's Δ at the baseline's compute, its compute to best and each
    arm's mean best-validation metric. '' when no cell holds the arm.

    The reading rule registered with the arm (docs/EXPERIMENTS.md): it pays in a cell only if
    it beats the tuned baseline after Holm (last column). ``verdicts_by_cell``:
    :func:`extra_verdicts`.
    """
    rows = []
    for name, verdicts in sorted(verdicts_by_cell.items()):
        for v in verdicts:
            if TUNED not in v.arms or "rdrop" not in v.arms:
                continue
            base, reg, tuned = v.arms["baseline"], v.arms["rdrop"], v.arms[TUNED]
            knob = base.chosen.split("=")[0]
            cmp = {c.name: c for c in v.comparisons}
            best, reg_best = cmp[f"{TUNED} - baseline, best"], cmp["rdrop - baseline, best"]
            equal = cmp[f"{TUNED} - baseline, equal compute"]
            better = improves(best.diff.mean, v.higher_is_better) and best.p_holm < 0.05
            values = [v.scale * float(r["value"]) for r in base.runs.values()]
            rows.append(
                f"| {name} | {base.chosen} | "
                f"{next(iter(reg.runs.values()))['config'].get(knob)}; {reg.chosen} | "
                f"{next(iter(tuned.runs.values()))['config'].get(knob)} | {len(tuned.runs)} | "
                f"{sum(values) / len(values):.2f} | {_delta(reg_best)} | {_delta(best)} | "
                f"{_delta(equal)} | {ratio(v.compute_to_best[TUNED])} | "
                f"{base.valid[base.chosen]:.3f} / {reg.valid[reg.chosen]:.3f} / "
                f"{tuned.valid[tuned.chosen]:.3f} | {'yes' if better else 'no'} |")
    if not rows:
        return ""
    return ("\n## R-Drop at the tuned baseline's dropout, across cells\n\n"
            "Δ = arm − tuned baseline (paired by seed, 95% t interval, Holm p over the cell's "
            "comparisons, as in each cell's section below); the tuned-dropout arm runs at the "
            "alpha R-Drop chose on validation at its registered dropout, not retuned.\n\n"
            "| cell | baseline's choice | R-Drop's dropout; alpha (registered) | "
            f"{TUNED}'s dropout | seeds | baseline | registered R-Drop: Δ best, Holm p | "
            f"{TUNED}: Δ best, Holm p | {TUNED}: Δ at baseline's compute, Holm p | "
            f"{TUNED}: compute to best | best validation (baseline / R-Drop / {TUNED}) | "
            "beats the tuned baseline after Holm |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def _ci(c: Any) -> str:
    return ci(c.diff.mean, c.diff.low, c.diff.high)


def _delta(c: Any) -> str:
    return ci(c.diff.mean, c.diff.low, c.diff.high, p=c.p_holm)


def _best_deltas(verdicts: Sequence[Any]) -> str:
    """Each arm's best-quality Δ against the tuned baseline, paired by seed, with the Holm p
    of the verdict the frontier table was read from (its equal-compute Δ is in the table)."""
    lines = [f"- {c.name.split(' - ')[0]} - baseline at each one's best: {_ci(c)}, "
             f"Holm p {p_value(c.p_holm)}"
             for v in verdicts for c in v.comparisons
             if c.kind == "best" and c.name.endswith(" - baseline, best")]
    if not lines:
        return ""
    return ("\n**Best-quality Δ against the tuned baseline** (paired by seed, 95% t interval, "
            "Holm over the cell's comparisons):\n\n" + "\n".join(lines) + "\n")


def map_markdown(cells: Sequence[MapCell]) -> str:
    """The map's main table: one row per cell, seven columns (the rest is in ``map.csv``)."""
    lines = ["## Scale map: where R-Drop pays", "",
             "Δ = R-Drop − baseline at each arm's point chosen on validation, paired by seed "
             "(95% t interval, Holm p over the cell); gap = the tuned baseline's validation − "
             "training loss at its best step (eval mode). A cell carries a verdict when every "
             "registered run finished and its baseline stopped past its optimum in most seeds. "
             "`map.csv` holds every column: model, seeds, the chosen points, each arm's mean, "
             "rel (the relative gain), after best (how much the baseline's validation metric "
             "worsened after its best), the Holm p values and the choices still at a grid "
             "edge.", "",
             "| cell | size | Δ best [95% CI], Holm p | Δ at baseline's compute, Holm p | "
             "compute to best | gap | verdict |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(
            f"| {c.name} | {c.size} | {ci(c.best, c.best_low, c.best_high, p=c.best_holm)} | "
            f"{ci(c.equal, c.equal_low, c.equal_high, p=c.equal_holm)} | "
            f"{ratio(c.compute_to_best)} | {number(c.gap, 3)} | {c.verdict} |")
    return "\n".join(lines) + "\n"


def span_markdown(cells: Sequence[MapCell], target: float = 16.0) -> str:
    """Per family, the training-set sizes of its scale cells (kept examples or tokens) per
    model, and the span of its axis, largest / smallest size, against ``target`` (the
    issue's 16x). Cells of the second protocol are not part of an axis.

    Example:
        >>> print(span_markdown([]).splitlines()[0])
        ## Span of each family's axis (the issue asks >= 16x)
    """
    by_family: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        if c.source == "scale":
            by_family[c.family][c.model].append(c.size)
    lines = [f"## Span of each family's axis (the issue asks >= {target:g}x)", "",
             "| family | sizes per model (kept examples; tokens for language modeling) | "
             "span |", "|---|---|---|"]
    for family, models in sorted(by_family.items()):
        sizes = [n for ns in models.values() for n in ns]
        span = max(sizes) / min(sizes) if min(sizes) > 0 else math.nan
        note = "" if span >= target else f" (below {target:g}x)"
        per_model = "; ".join(f"{m}: {', '.join(str(n) for n in sorted(ns))}"
                              for m, ns in sorted(models.items()))
        lines.append(f"| {family} | {per_model} | {span:.1f}x{note} |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    """Lay out, write (creating the folder) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_family(family: str, cells: Sequence[MapCell], path: Path) -> None:
    plt = _pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    by_model: dict[str, list[MapCell]] = defaultdict(list)
    for c in cells:
        by_model[c.model].append(c)
    for model, cs in sorted(by_model.items()):
        cs = sorted(cs, key=lambda c: c.size)
        xs = [c.size for c in cs]
        for ax, (mid, lo, hi) in zip(axes, (("best", "best_low", "best_high"),
                                            ("equal", "equal_low", "equal_high")), strict=True):
            ys = [getattr(c, mid) for c in cs]
            err = [[y - getattr(c, lo) for c, y in zip(cs, ys, strict=True)],
                   [getattr(c, hi) - y for c, y in zip(cs, ys, strict=True)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"model {model}")
            for c, y in zip(cs, ys, strict=True):
                if not c.verdict_ok:
                    ax.annotate("incomplete" if c.missing_runs else "no overfit", (c.size, y),
                                fontsize=7)
    unit = f"{cells[0].metric}" + (" (points)" if cells[0].metric != "perplexity" else "")
    better = "higher" if cells[0].higher_is_better else "lower"
    for ax, title in zip(axes, ("best quality", "at the baseline's compute"), strict=True):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training-set size (tokens or examples, log)")
        ax.set_ylabel(f"Δ {unit}, R-Drop − baseline ({better} is better)", fontsize=8)
        ax.set_title(f"{family}: {title} (95% CI)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def _plot_baseline_curves(family: str, cells: Sequence[MapCell],
                          baselines: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> None:
    """The chosen baseline's validation metric against epochs, relative to its best, one line
    per seed and a colour per cell: the evidence that each baseline passed its optimum."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, cell in enumerate(cells):
        for j, rec in enumerate(baselines.get(cell.name, ())):
            metric = str(rfield(rec, "selection_metric", ""))
            best = float(rfield(rec, "best_valid", math.nan))
            pts = [(c["epoch"], c[metric] / best) for c in rec["curves"] if metric in c]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[i % len(colors)],
                    lw=0.8, label=cell.name if j == 0 else None)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation metric / its best (chosen baseline, every seed)", fontsize=8)
    ax.set_title(f"{family}: did the tuned baseline pass its optimum?", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def _plot_gap(cells: Sequence[MapCell], path: Path, line: tuple[float, float] | None) -> None:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for family in sorted({c.family for c in cells}):
        cs = [c for c in cells if c.family == family and math.isfinite(c.gap)]
        ax.scatter([c.gap for c in cs], [100 * c.rel for c in cs], label=family,
                   marker="o", s=[20 + 10 * math.log10(max(c.size, 1)) for c in cs])
    if line is not None:
        xs = [c.gap for c in cells if math.isfinite(c.gap)]
        if xs:
            lo, hi = min(xs), max(xs)
            ax.plot([lo, hi], [100 * (line[0] + line[1] * lo), 100 * (line[0] + line[1] * hi)],
                    "--", color="grey", label="least squares (all cells)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("tuned baseline's overfitting: valid − train loss at its best step (nats)")
    ax.set_ylabel("R-Drop's relative best-quality gain (%)")
    ax.set_title("R-Drop's gain against the baseline's overfitting (every cell)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def map_text(data: ScaleMap, *, plots: bool = False) -> str:
    """``map.md``: the main table, the span of each axis, the predictor, the plots' links (with
    ``plots``), R-Drop at the tuned baseline's dropout and the extra arms of each cell."""
    cells = data.cells
    text = (map_markdown(cells) + "\n" + span_markdown(cells) + "\n"
            + predictor_markdown(data.predictor))
    if plots:
        for family in sorted({c.family for c in cells}):
            fam = [c for c in cells if c.family == family]
            if len({c.size for c in fam}) > 1:
                text += f"\n![{family}](../plots/scale-{family}.png)\n"
            if any(c.name in data.baselines for c in fam):
                text += (f"\n![{family}: baselines past their optimum]"
                         f"(../plots/scale-baseline-{family}.png)\n")
        text += "\n![gain against overfitting](../plots/scale-gap.png)\n"
    text += tuned_dropout_markdown(data.extra)
    return text + cheaper_markdown(data.extra, links=plots)


def _plot_map(data: ScaleMap, plots: Path) -> None:
    cells = data.cells
    for family in sorted({c.family for c in cells}):
        fam = [c for c in cells if c.family == family]
        if len({c.size for c in fam}) > 1:
            _plot_family(family, fam, plots / f"scale-{family}.png")
        scaled = [c for c in fam if c.name in data.baselines]
        if scaled:
            _plot_baseline_curves(family, scaled, data.baselines,
                                  plots / f"scale-baseline-{family}.png")
    p = data.predictor
    _plot_gap(cells, plots / "scale-gap.png", (p.a, p.b) if p else None)
    for name, verdicts in data.extra.items():
        if verdicts:
            plot_frontier(verdicts[0], plots / f"frontier-{name}.png")


def write_map(root: str | Path = "results", out: str | Path | None = None, *,
              plots: bool = True, design: Design | None = None,
              data: ScaleMap | None = None) -> str:
    """Write ``scale/map.md``, ``scale/map.csv``, ``plots/scale-<family>.png`` (Δ against size),
    ``plots/scale-baseline-<family>.png`` (the chosen baselines' validation curves) and
    ``plots/scale-gap.png`` (gain against overfitting) under ``out`` (default ``root``); return
    the markdown ('' when there are no cells). ``data``: the map already collected
    (:func:`collect_map`), else it is collected from ``root`` with ``design``.

    Raises:
        DuplicateRunError: two records of one run in one cell's folder.
    """
    data = data if data is not None else collect_map(root, design)
    if not data.cells:
        return ""
    out = Path(out or root)
    (out / "scale").mkdir(parents=True, exist_ok=True)
    if plots:
        _plot_map(data, out / "plots")
    text = map_text(data, plots=plots)
    (out / "scale" / "map.md").write_text(text)
    rows = [{**{k: (";".join(v) if isinstance(v, list) else v) for k, v in asdict(c).items()},
             "verdict": c.verdict} for c in data.cells]
    with open(out / "scale" / "map.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return text
