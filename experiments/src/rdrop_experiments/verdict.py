r"""The second protocol's report: each arm chosen on validation, then best quality and quality at
equal compute against the baseline, paired by seed, Holm-corrected per family.

The questions, pre-registered in ``docs/EXPERIMENTS.md`` ("Second protocol"):

1. *Selection (validation only).* For each arm, the grid point with the best mean (over seeds)
   best-validation metric is chosen; ties go to the first point of the registered grid
   (points outside it, a scale cell's extensions, after it by label).
2. *Best quality.* Test metric at each run's best-validation checkpoint, chosen point of each
   arm, paired by seed: ``rdrop - baseline`` (primary), ``rdrop_alpha0 - baseline``,
   ``rdrop - rdrop_alpha0`` and ``rdrop_stop_gradient - baseline`` where run.
3. *Equal compute.* For seed :math:`s` let :math:`E_s` be the compute the chosen baseline run
   used until it stopped. Each other arm's value is the test metric of its
   best-validation-so-far checkpoint within :math:`E_s`
   (:func:`rdrop_experiments.frontier.quality_at_fb`), paired with the baseline's.
4. *Compute to the best.* Per seed, the arm's compute at its best-validation checkpoint over
   the baseline's; the geometric mean over seeds.

Compute is counted in forward+backward equivalents (``fb_equivalents``,
:mod:`rdrop_experiments.compute`): a forward without backward (the stop-gradient arm's target
pass) counts the measured ratio ``f`` of a forward's time to a forward+backward's, read from the
family's records (1, the earlier sample-pass reading, when no record measured it). An *arm* is a
method plus the schedule options it sets (:func:`rdrop_experiments.frontier.arm_name`), each
compared with the baseline at its best and at equal compute; the family's frontier and
recommendation come from :mod:`rdrop_experiments.frontier`.

Holm's correction runs over all comparisons of a family (2 and 3). Differences are
``arm - baseline`` in the metric's own units (x100 for [0, 1] metrics), so for perplexity a
negative difference is an improvement.

A run that stopped on a non-finite training loss (``stop_reason == "diverged"``) is left out of
every statistic (selection means, comparisons, compute ratios) and listed in a note under the
verdict lines, so a diverged run never counts as a result at chance level.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdrop_experiments.config import METHODS
from rdrop_experiments.design import Design, point_label
from rdrop_experiments.formatting import NA, ci, number, p_value, ratio
from rdrop_experiments.frontier import (
    arm_name,
    family_forward_ratio,
    fb_at_best,
    fb_used,
    frontier_markdown,
    plot_frontier,
    quality_at_fb,
)
from rdrop_experiments.stats import (
    PairedDiff,
    display_scale,
    holm,
    paired_difference,
    summarize,
)

__all__ = ["Arm", "Comparison", "FamilyVerdict", "build_verdicts", "describe_run", "edge_state",
           "field", "grid_order", "is_diverged", "is_protocol_record", "verdict_markdown",
           "verdict_report", "write_verdict"]

ARMS = METHODS  # config.ARMS, the one table of arms, in the reports' order
# (name, arm, reference arm, kind): the comparisons of a family, primary first.
COMPARISONS = (
    ("rdrop - baseline, best", "rdrop", "baseline", "best"),
    ("rdrop - baseline, equal compute", "rdrop", "baseline", "equal"),
    ("rdrop_alpha0 - baseline, best", "rdrop_alpha0", "baseline", "best"),
    ("rdrop - rdrop_alpha0, best", "rdrop", "rdrop_alpha0", "best"),
    ("rdrop_stop_gradient - baseline, best", "rdrop_stop_gradient", "baseline", "best"),
    ("rdrop_stop_gradient - baseline, equal compute", "rdrop_stop_gradient", "baseline",
     "equal"),
)
# the arms the registered comparisons above read (the second protocol's); other arms get the
# generic two
_REGISTERED = {"baseline"} | {arm for _, arm, _, _ in COMPARISONS}


def field(rec: dict[str, Any], name: str, default: Any = None) -> Any:
    """A protocol field of a run record: top level, else under ``extra``."""
    if name in rec:
        return rec[name]
    return rec.get("extra", {}).get(name, default)


def is_protocol_record(rec: dict[str, Any]) -> bool:
    """Whether ``rec`` came from the second protocol (``selection == "best_valid"``)."""
    return field(rec, "selection") == "best_valid"


def is_diverged(rec: dict[str, Any]) -> bool:
    """Whether the run stopped on a non-finite training loss (``stop_reason == "diverged"``).

    Example:
        >>> is_diverged({"extra": {"stop_reason": "diverged"}}), is_diverged({})
        (True, False)
    """
    return field(rec, "stop_reason") == "diverged"


def describe_run(rec: dict[str, Any]) -> str:
    """``experiment method [setting] seed N``: one run, for notes.

    Example:
        >>> describe_run({"experiment": "image", "method": "rdrop", "seed": 1,
        ...               "setting": "methods=rdrop,alpha=3.0"})
        'image rdrop [alpha=3.0] seed 1'
    """
    return f"{rec['experiment']} {rec['method']} [{_point(rec)}] seed {rec['seed']}"


def _point(rec: dict[str, Any]) -> str:
    return point_label(rec.get("setting", "default"))


@dataclass
class Arm:
    """One arm of a family: its grid points and the one chosen on validation.

    Attributes:
        method: the arm. chosen: label of the chosen grid point.
        points: ``{point label: {seed: record}}``.
        valid: ``{point label: mean best-validation metric over seeds}``.
    """

    method: str
    chosen: str
    points: dict[str, dict[int, dict[str, Any]]]
    valid: dict[str, float]

    @property
    def runs(self) -> dict[int, dict[str, Any]]:
        """``{seed: record}`` of the chosen point."""
        return self.points[self.chosen]


@dataclass
class Comparison:
    """One paired comparison of a family (values in report units)."""

    name: str
    kind: str
    diff: PairedDiff
    p_holm: float = math.nan


@dataclass
class FamilyVerdict:
    """Everything the report says about one family."""

    experiment: str
    metric: str
    higher_is_better: bool
    scale: float
    arms: dict[str, Arm]
    comparisons: list[Comparison]
    compute_to_best: dict[str, float]
    equal_budget: dict[int, float]
    baseline_past_optimum: tuple[int, int]
    forward_ratio: float = 1.0
    forward_ratio_measured: bool = False


def grid_order(experiment: str, design: Design | None = None) -> list[str]:
    """Point labels of ``experiment``'s registered grid in ``design``, in grid order (``[]``
    for an experiment it does not hold). A tie on validation goes to the earliest of them.

    Example:
        >>> from rdrop_experiments.design import ExperimentDesign
        >>> grid_order("image", Design({"image": ExperimentDesign(("dropout=0.1", "alpha=1"))}))
        ['dropout=0.1', 'alpha=1']
    """
    return list(design.grid(experiment)) if design is not None else []


def _rank(label: str, order: list[str]) -> tuple[int, str]:
    """Grid points first, in grid order; points outside the grid (a scale cell's extensions)
    after them, by label: the choice never depends on the order records were read in."""
    return (order.index(label) if label in order else len(order), label)


def _choose(method: str, records: list[dict[str, Any]], order: list[str]) -> Arm:
    """The grid point with the best mean best-validation value (in the direction of the
    metric that selected the checkpoints, e.g. validation NLL for ``select_on=loss``)."""
    higher = bool(field(records[0], "selection_higher_is_better",
                        records[0]["higher_is_better"]))
    points: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        points[_point(rec)][int(rec["seed"])] = rec
    valid = {label: summarize([float(field(r, "best_valid")) for r in runs.values()]).mean
             for label, runs in points.items()}
    best = None
    for label in sorted(valid, key=lambda lb: _rank(lb, order)):  # strict improvement wins
        v = valid[label]
        if best is None or (v > valid[best] if higher else v < valid[best]):
            best = label
    assert best is not None
    return Arm(method, best, dict(points), valid)


def _geo_mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else math.nan


def build_verdicts(records: Sequence[dict[str, Any]],
                   design: Design | None = None) -> list[FamilyVerdict]:
    """One :class:`FamilyVerdict` per experiment among the second-protocol ``records``
    (diverged runs left out: :func:`is_diverged`); ``design`` gives each registered grid's
    order, which breaks ties on validation (:func:`grid_order`)."""
    by_exp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        if is_protocol_record(rec) and not is_diverged(rec):
            by_exp[rec["experiment"]].append(rec)
    out = []
    for name, recs in sorted(by_exp.items()):
        higher = bool(recs[0]["higher_is_better"])
        scale = display_scale(recs[0]["metric"])[0]
        names = {arm_name(r) for r in recs}
        order = [m for m in ARMS if m in names] + sorted(names - set(ARMS))
        grid = grid_order(name, design)
        arms = {m: _choose(m, [r for r in recs if arm_name(r) == m], grid) for m in order}
        if "baseline" not in arms:
            continue
        # Compute in forward+backward equivalents; without a measured forward ratio a forward
        # counts as a whole sample pass (the earlier, conservative reading).
        f = family_forward_ratio(recs)
        measured = math.isfinite(f)
        f = f if measured else 1.0
        base = arms["baseline"].runs
        budget = {s: fb_used(r, f) for s, r in base.items()}
        key = f"test_{recs[0]['metric']}"
        # every other arm (a schedule option, a noise source, an arm added to config.ARMS):
        # against the baseline at its best and at the baseline's compute
        extra = [(f"{m} - baseline, {word}", m, "baseline", kind) for m in arms
                 if m not in _REGISTERED for word, kind in (("best", "best"),
                                                            ("equal compute", "equal"))]
        # R-Drop against the same noise alone (rdrop+embedding - baseline+embedding): what the
        # consistency term adds to that source of randomness.
        extra += [(f"{m} - {ref}, best", m, ref, "best") for m in arms
                  if m.startswith("rdrop+") and (ref := "baseline+" + m[len("rdrop+"):]) in arms]
        comparisons = []
        for cname, arm, ref, kind in (*COMPARISONS, *extra):
            if arm not in arms or ref not in arms:
                continue
            a, b = arms[arm].runs, arms[ref].runs
            if kind == "best":
                va = {s: scale * float(r["value"]) for s, r in a.items()}
            else:
                va = {s: scale * quality_at_fb(r["curves"], key, budget[s], f)
                      for s, r in a.items() if s in budget}
            vb = {s: scale * float(r["value"]) for s, r in b.items()}
            comparisons.append(Comparison(cname, kind, paired_difference(vb, va)))
        for c, p in zip(comparisons, holm([c.diff.p_value for c in comparisons]), strict=True):
            c.p_holm = p
        ratios = {}
        for m, arm in arms.items():
            ratios[m] = _geo_mean([fb_at_best(r, f) / fb_at_best(base[s], f)
                                   for s, r in arm.runs.items() if s in base])
        past = sum(field(r, "stop_reason") == "patience" for r in base.values())
        out.append(FamilyVerdict(name, recs[0]["metric"], higher, scale, arms, comparisons,
                                 ratios, budget, (past, len(base)), f, measured))
    return out


def edge_state(records: Sequence[dict[str, Any]], dropout_key: str,
               design: Design | None = None) -> dict[str, Any]:
    """Per arm (``baseline``, ``rdrop``): its grid values (the baseline's ``dropout_key``, R-Drop's
    ``alpha``), the value chosen on validation, and whether that choice is at an edge of its
    grid.

    Example:
        >>> edge_state([], "dropout")
        {}
    """
    verdicts = build_verdicts(records, design)
    if not verdicts:
        return {}
    out: dict[str, Any] = {}
    for method, knob in (("baseline", dropout_key), ("rdrop", "alpha")):
        arm = verdicts[0].arms.get(method)
        if arm is None:
            continue
        values = {label: float(next(iter(runs.values()))["config"][knob])
                  for label, runs in arm.points.items()}
        chosen = values[arm.chosen]
        vals = sorted(set(values.values()))
        out[method] = {"knob": knob, "values": vals, "chosen": chosen,
                       "at_edge": len(vals) > 1 and chosen in (vals[0], vals[-1])}
    return out


def verdict_line(v: FamilyVerdict) -> str:
    """One sentence per family: best-quality and equal-compute change, compute to the best, of
    R-Drop (or, in a family whose R-Drop arms name their noise source, of each of them)."""
    cmp = {c.name: c for c in v.comparisons}
    arms = ["rdrop"] if "rdrop" in v.arms else [m for m in v.arms if m.startswith("rdrop+")]
    clauses = []
    for arm in arms:
        best = cmp.get(f"{arm} - baseline, best")
        equal = cmp.get(f"{arm} - baseline, equal compute")
        if best is None:
            continue
        d = best.diff
        name = "R-Drop" if arm == "rdrop" else f"R-Drop{arm[len('rdrop'):]}"
        text = (f"{name} ({v.arms[arm].chosen}, chosen on validation) changes the best test "
                f"{v.metric} by {ci(d.mean, d.low, d.high)} (Holm p {p_value(best.p_holm)}, "
                f"{d.n} seeds) and needs {ratio(v.compute_to_best[arm])} the baseline's compute "
                "(forward+backward equivalents) to reach its best")
        if equal is not None:
            e = equal.diff
            text += (f"; at the baseline's compute it is {ci(e.mean, e.low, e.high)} (Holm p "
                     f"{p_value(equal.p_holm)})")
        clauses.append(text)
    if not clauses:
        return f"{v.experiment}: R-Drop not run."
    direction = "higher" if v.higher_is_better else "lower"
    return f"{v.experiment}: " + "; ".join(clauses) + f" ({direction} is better)."


def _rows(v: FamilyVerdict) -> list[dict[str, Any]]:
    rows = []
    for m, arm in v.arms.items():
        vals = [v.scale * float(r["value"]) for r in arm.runs.values()]
        s = summarize(vals)
        sel = str(field(next(iter(arm.runs.values())), "selection_metric", ""))
        vscale = 1.0 if "loss" in sel else v.scale
        rows.append({"experiment": v.experiment, "arm": m, "chosen": arm.chosen,
                     "grid_valid": f"{sel or 'valid'}: " + "; ".join(
                         f"{k} {vscale * x:.2f}" for k, x in arm.valid.items()),
                     "seeds": s.n, "test_mean": s.mean, "test_std": s.std,
                     "compute_to_best_x": v.compute_to_best[m],
                     "stopped_on_patience": sum(field(r, "stop_reason") == "patience"
                                                for r in arm.runs.values()),
                     "wall_s": summarize([float(r.get("wall_time_s", math.nan))
                                          for r in arm.runs.values()]).mean})
    return rows


def headline_rows(v: FamilyVerdict) -> list[str]:
    """The family's headline row (markdown): each arm at its chosen point, the best-quality
    difference, its p and Holm p, the equal-compute difference, compute to the best, and how
    many R-Drop runs stopped on patience (the others hit the compute cap). Empty without R-Drop.
    """
    cmp = {c.name: c for c in v.comparisons}
    best, equal = cmp.get("rdrop - baseline, best"), cmp.get("rdrop - baseline, equal compute")
    if best is None:
        return []
    cells = []
    for m in ("baseline", "rdrop"):
        s = summarize([v.scale * float(r["value"]) for r in v.arms[m].runs.values()])
        cells.append(f"{number(s.mean)} ± {number(s.std)}")
    d = best.diff
    eq = NA if equal is None else ci(equal.diff.mean, equal.diff.low, equal.diff.high,
                                     p=equal.p_holm)
    rdrop_runs = v.arms["rdrop"].runs.values()
    patience = sum(field(r, "stop_reason") == "patience" for r in rdrop_runs)
    metric = f"{v.metric} (%)" if v.scale == 100 else v.metric
    return [f"| {v.experiment} | {v.arms['baseline'].chosen}; {v.arms['rdrop'].chosen} | "
            f"{metric} | {cells[0]} | {cells[1]} | {ci(d.mean, d.low, d.high)} | "
            f"{p_value(d.p_value)} | {p_value(best.p_holm)} | {eq} | "
            f"{ratio(v.compute_to_best['rdrop'])} | {patience}/{len(rdrop_runs)} |"]


def diverged_note(diverged: Sequence[dict[str, Any]]) -> str:
    """The note that names the diverged runs left out of the statistics ('' for none).

    Example:
        >>> diverged_note([{"experiment": "image", "method": "rdrop", "seed": 1,
        ...                 "setting": "methods=rdrop,alpha=3.0"}])  # doctest: +ELLIPSIS
        '**1 diverged run(s) left out** ...: image rdrop [alpha=3.0] seed 1.'
    """
    if not diverged:
        return ""
    return (f"**{len(diverged)} diverged run(s) left out** (training stopped on a non-finite "
            "loss; not counted in any mean, comparison or selection below, which use the "
            "remaining seeds): " + "; ".join(describe_run(r) for r in diverged) + ".")


def verdict_markdown(verdicts: Sequence[FamilyVerdict],
                     diverged: Sequence[dict[str, Any]] = (), *, quick: bool = False,
                     plots: bool = False) -> str:
    """The verdict lines, the note on diverged runs, the headline table, the arms table, the
    comparisons table and the frontier; ``quick`` heads it as smoke runs, ``plots`` links each
    family's plots (``plots/compute-<family>.png``, ``plots/frontier-<family>.png``)."""
    lines = ["## Second protocol: verdict", ""]
    if quick:
        lines += ["**Quick smoke runs**: they check that the pipeline runs end to end; they are "
                  "too short to be evidence.", ""]
    lines += [f"- {verdict_line(v)}" for v in verdicts]
    if diverged:
        lines += ["", diverged_note(diverged)]
    lines += ["",
              "### Headline (each arm at its point chosen on validation; results/README.md)", "",
              "| family | chosen (baseline; R-Drop) | metric | baseline | R-Drop | Δ best (95% CI) "
              "| p | Holm p | Δ at baseline's compute, Holm p | compute to best | R-Drop runs "
              "stopped on patience |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        lines += headline_rows(v)
    lines += ["", "### Arms (each chosen on validation)", "",
              "| family | arm | chosen | mean best-valid per grid point | seeds | test at best "
              "valid, mean ± sd | compute to best (x baseline) | stopped on patience | s/run |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        for r in _rows(v):
            lines.append(f"| {r['experiment']} ({v.metric}) | {r['arm']} | {r['chosen']} | "
                         f"{r['grid_valid']} | {r['seeds']} | {number(r['test_mean'])} ± "
                         f"{number(r['test_std'])} | {number(r['compute_to_best_x'])} | "
                         f"{r['stopped_on_patience']}/{r['seeds']} | {number(r['wall_s'], 0)} |")
    lines += ["", "### Comparisons (paired by seed; 95% t interval; Holm over each family)", "",
              "| family | comparison | n | difference [95% CI] | p | Holm p |",
              "|---|---|---|---|---|---|"]
    for v in verdicts:
        for c in v.comparisons:
            d = c.diff
            lines.append(f"| {v.experiment} ({v.metric}, "
                         f"{'higher' if v.higher_is_better else 'lower'} is better) | {c.name} "
                         f"| {d.n} | {ci(d.mean, d.low, d.high)} | "
                         f"{p_value(d.p_value)} | {p_value(c.p_holm)} |")
    lines += ["", "Equal compute: each seed's budget is the compute (forward+backward "
              "equivalents) the chosen baseline run used until it stopped; the other arm's "
              "value is its test metric at its best-validation-so-far checkpoint within that "
              "budget.", "", frontier_markdown(verdicts)]
    text = "\n".join(lines)
    if plots:
        text += "\n" + "\n".join(
            f"![{v.experiment}](plots/compute-{v.experiment}.png) "
            f"![{v.experiment} frontier](plots/frontier-{v.experiment}.png)"
            for v in verdicts) + "\n"
    return text


def plot_compute(v: FamilyVerdict, path: Path) -> None:
    """Test metric of the best-validation-so-far checkpoint against training compute (forward+
    backward equivalents), mean over seeds, one line per arm (its chosen point); a marker where
    each run stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"test_{v.metric}"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, arm in v.arms.items():
        runs = list(arm.runs.values())
        f = v.forward_ratio
        xs = sorted({fb_used({"curves": [c]}, f) for r in runs for c in r["curves"]})
        ys = []
        for x in xs:
            vals = [quality_at_fb(r["curves"], key, x, f) for r in runs]
            ys.append(math.nan if any(math.isnan(y) for y in vals)
                      else v.scale * sum(vals) / len(vals))
        line, = ax.plot(xs, ys, label=f"{m} ({arm.chosen}, {len(runs)} seeds)",
                        drawstyle="steps-post")
        stops = [fb_used(r, f) for r in runs]
        ax.plot(stops, [ys[xs.index(s)] if s in xs else math.nan for s in stops], "|",
                color=line.get_color(), markersize=12)
    unit = " (%)" if v.scale == 100 else ""
    ax.set_xlabel("training compute, forward+backward equivalents (one sample = 1; a forward "
                  f"without backward = {v.forward_ratio:.2f})", fontsize=8)
    better = "higher" if v.higher_is_better else "lower"
    ax.set_ylabel(f"test {v.metric}{unit} at best-valid checkpoint so far\n({better} is better)",
                  fontsize=9)
    ax.set_title(f"{v.experiment}: quality vs compute (mean over seeds; | = a run stopped)",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict_report(records: Sequence[dict[str, Any]], out: str | Path, *,
                   plots: bool = True, design: Design | None = None) -> str:
    """Write ``verdict.md``, ``verdict.csv``, ``plots/compute-<family>.png`` and
    ``plots/frontier-<family>.png`` under ``out``
    for the second-protocol records among ``records``; return the markdown ('' if none)."""
    protocol = [r for r in records if is_protocol_record(r)]
    verdicts = build_verdicts(protocol, design)
    diverged = [r for r in protocol if is_diverged(r)]
    if not verdicts and not diverged:
        return ""
    quick = all(r.get("variant") == "quick" for r in protocol)
    return write_verdict(verdicts, diverged, out, quick=quick, plots=plots)


def write_verdict(verdicts: Sequence[FamilyVerdict], diverged: Sequence[dict[str, Any]],
                  out: str | Path, *, quick: bool = False, plots: bool = True) -> str:
    """Write the verdict's files under ``out`` (see :func:`verdict_report`); return its
    markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = verdict_markdown(verdicts, diverged, quick=quick, plots=plots)
    if plots:
        for v in verdicts:
            plot_compute(v, out / "plots" / f"compute-{v.experiment}.png")
            plot_frontier(v, out / "plots" / f"frontier-{v.experiment}.png")
    (out / "verdict.md").write_text(text)
    with open(out / "verdict.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "metric", "comparison", "n", "mean", "low", "high", "p",
                    "p_holm"])
        for v in verdicts:
            for c in v.comparisons:
                d = c.diff
                w.writerow([v.experiment, v.metric, c.name, d.n, d.mean, d.low, d.high,
                            d.p_value, c.p_holm])
    return text
