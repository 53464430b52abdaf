"""Tables and plots from saved run records (no training, no registry needed).

``build_report(root)`` reads every run JSON under ``root``, pairs each R-Drop configuration with
the baseline runs of the same ``pair_key`` (same everything except the R-Drop fields), and writes
``summary.csv`` (long format, one row per group and metric), ``summary.md`` and PNG plots.

Conventions: rates (accuracy, F1, BLEU, chrF, ROUGE, MCC) are stored as fractions and shown in
percent everywhere, tables and plots alike; settings sort numerically (alpha 3 before 10); every
plot axis says whether lower or higher is better; quick (smoke) runs are left out of a report
that also has full runs; a comparison whose runs saw different data (``data_hash``) is flagged.
Two records of one run (a copied folder) are refused, naming both files; a run that diverged
(non-finite loss) and a record that names no config (no ``key``) are left out of every table,
each with a note that lists them. A file that is not a readable record (cut off mid-write,
corrupt) is named with why, and every comparison that lost seeds to it is marked.

The report is collected first (:func:`collect_report`: reads, computes, writes nothing) and
written second (:func:`write_report`: the CSV, the markdown, the plots, and the verdict, headline,
scale map and tryout-agreement files it holds). What only the registry knows (the default seeds,
the paper's figures, grid order, a scale cell's missing runs) comes in as a
:class:`~rdrop_experiments.design.Design`; the report imports no registry.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shlex
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rdrop_experiments.agreement import AgreementRow, agreement_markdown, agreement_rows
from rdrop_experiments.config import NON_RESULT_FIELDS
from rdrop_experiments.design import Design, ExperimentDesign
from rdrop_experiments.formatting import ci, number, p_value, signed
from rdrop_experiments.headline import Headline, headline, headline_markdown
from rdrop_experiments.scale_map import ScaleMap, collect_map, write_map
from rdrop_experiments.stats import (
    PairedDiff,
    Summary,
    display_scale,
    paired_difference,
    summarize,
)
from rdrop_experiments.storage import (
    Skipped,
    check_one_record_per_run,
    load_results,
    scan_results,
)
from rdrop_experiments.verdict import (
    FamilyVerdict,
    build_verdicts,
    describe_run,
    is_diverged,
    is_protocol_record,
    verdict_markdown,
    write_verdict,
)

__all__ = ["Group", "ReportData", "build_report", "collect_report", "group_results",
           "markdown_table", "summary_markdown", "write_report"]


@dataclass
class Group:
    """Baseline and R-Drop runs of one configuration of one experiment."""

    experiment: str
    label: str
    metric: str
    higher_is_better: bool
    baseline: list[dict[str, Any]] = field(default_factory=list)
    rdrop: list[dict[str, Any]] = field(default_factory=list)
    registered: ExperimentDesign | None = None

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.baseline + self.rdrop

    @property
    def metrics(self) -> list[str]:
        names: list[str] = [self.metric]
        for r in self.records:
            names += [m for m in r.get("metrics", {}) if m not in names]
        return names

    @property
    def data_hashes(self) -> list[str]:
        """The distinct ``data_hash`` values of the group's records (records without one, made
        before hashes were stored, are not counted). More than one: the arms or seeds were not
        trained and tested on the same data."""
        return sorted({r["data_hash"] for r in self.records if r.get("data_hash")})

    def values(self, method: str, metric: str) -> dict[int, float]:
        runs = self.baseline if method == "baseline" else self.rdrop
        return {r["seed"]: float(r["metrics"].get(metric, r["value"] if metric == r["metric"]
                                                   else math.nan)) for r in runs}

    def command(self) -> str:
        """The ``rdrop run`` command that reproduces every run of the group (both arms, all its
        seeds): a recorded command without the options that only split the work (``methods=``,
        ``seeds=``, ``first_seed=``, threads, ...), plus ``seeds=N`` where the group has another
        number of seeds than the experiment's default."""
        recs = self.rdrop or self.baseline
        if not recs or not recs[0].get("command"):
            return ""
        tokens = [t for t in shlex.split(recs[0]["command"])
                  if t.partition("=")[0] not in NON_RESULT_FIELDS]
        seeds = sorted({r["seed"] for r in self.records})
        exp = self.registered or ExperimentDesign()
        default = exp.seeds_for(recs[0].get("variant", ""))  # e.g. --quick runs 2 seeds
        if seeds[0] != 0:
            tokens.append(f"first_seed={seeds[0]}")
        if len(seeds) != default:
            tokens.append(f"seeds={len(seeds)}")
        return shlex.join(tokens)

    def info(self, key: str) -> str:
        """``info[key]`` of the registered experiment if it is registered (the paper's figures
        are metadata and may be corrected after a run), else from the records."""
        if self.registered is not None and getattr(self.registered, key, ""):
            return str(getattr(self.registered, key))
        for r in self.records:
            if r.get("info", {}).get(key):
                return str(r["info"][key])
        return ""


def _label(rec: dict[str, Any], exp: ExperimentDesign | None) -> str:
    """What sets the group apart: the variant (unless default), the data set where it is not
    the experiment's own (the quick image run trains on digits), the setting and overrides,
    and the R-Drop arm's alpha (marked "default" when it is the experiment's)."""
    parts = [] if rec.get("variant", "default") == "default" else [rec["variant"]]
    setting = rec.get("setting", "default")
    cfg = rec.get("config", {})
    default_data = exp.dataset if exp is not None else None
    if cfg.get("dataset") and default_data is not None and cfg["dataset"] != default_data:
        parts.append(f"dataset={cfg['dataset']}")
    if setting not in ("default", ""):  # "k=v,k=v"; which arms ran (methods=) is no setting
        parts += [p for p in setting.split(",") if p.partition("=")[0] not in NON_RESULT_FIELDS]
    ov = {k: v for k, v in rec.get("overrides", {}).items() if k not in NON_RESULT_FIELDS}
    parts += [f"{k}={v}" for k, v in ov.items() if f"{k}=" not in setting]
    if rec["method"] != "baseline" and "alpha" in cfg and not any(
            p.startswith("alpha=") for p in parts):
        mark = " (default)" if exp is not None and cfg["alpha"] == exp.alpha else ""
        parts.append(f"alpha={_num(cfg['alpha'])}{mark}")
    return " ".join(parts) or "default"


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _natural(text: str) -> list[tuple[int, Any]]:
    """Sort key that orders the numbers inside labels by value: alpha=3 before alpha=10.

    Example:
        >>> sorted(["alpha=10", "alpha=3", "alpha=0.3"], key=_natural)
        ['alpha=0.3', 'alpha=3', 'alpha=10']
    """
    key: list[tuple[int, Any]] = []
    for tok in re.split(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)", text):
        if not tok:
            continue
        try:
            key.append((0, float(tok)))
        except ValueError:
            key.append((1, tok))
    return key


def group_results(records: Sequence[dict[str, Any]],
                  design: Design | None = None) -> list[Group]:
    """Pair records: one group per (experiment, R-Drop config key) with its baselines; each
    group knows its experiment's registered ``design`` (None when not registered).

    Baseline runs whose ``pair_key`` has no R-Drop runs form a baseline-only group.
    """
    design = design or Design()
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["method"] == "baseline":
            by_pair[(r["experiment"], r["pair_key"])].append(r)
    groups: dict[tuple[str, str], Group] = {}
    used: set[tuple[str, str]] = set()
    for r in records:
        if r["method"] != "rdrop":
            continue
        gk = (r["experiment"], r["key"])
        if gk not in groups:
            pk = (r["experiment"], r["pair_key"])
            used.add(pk)
            exp = design.experiment(r["experiment"])
            groups[gk] = Group(r["experiment"], _label(r, exp), r["metric"],
                               bool(r.get("higher_is_better", True)), list(by_pair.get(pk, [])),
                               registered=exp)
        groups[gk].rdrop.append(r)
    for pk, recs in by_pair.items():
        if pk not in used:
            r = recs[0]
            exp = design.experiment(r["experiment"])
            groups[pk] = Group(r["experiment"], _label(r, exp), r["metric"],
                               bool(r.get("higher_is_better", True)), list(recs),
                               registered=exp)
    return sorted(groups.values(), key=lambda g: (g.experiment, _natural(g.label)))


def _ms(s: Summary, scale: float, digits: int) -> str:
    if s.n == 0:
        return "–"
    std = "" if math.isnan(s.std) else f" ± {s.std * scale:.{digits}f}"
    return f"{s.mean * scale:.{digits}f}{std}"


def _rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        for metric in g.metrics:
            b, r = g.values("baseline", metric), g.values("rdrop", metric)
            sb, sr = summarize(list(b.values())), summarize(list(r.values()))
            d: PairedDiff = paired_difference(b, r)
            rows.append({
                "experiment": g.experiment, "setting": g.label, "metric": metric,
                "primary": metric == g.metric, "higher_is_better": g.higher_is_better,
                "n_baseline": sb.n, "baseline_mean": sb.mean, "baseline_std": sb.std,
                "n_rdrop": sr.n, "rdrop_mean": sr.mean, "rdrop_std": sr.std,
                "n_pairs": d.n, "delta": d.mean, "delta_low": d.low, "delta_high": d.high,
                "p_value": d.p_value,
                "baseline_wall_s": summarize([x["wall_time_s"] for x in g.baseline]).mean,
                "rdrop_wall_s": summarize([x["wall_time_s"] for x in g.rdrop]).mean,
                "paper": g.info("paper") if metric == g.metric else "",
                "data_hashes": " ".join(g.data_hashes),
                "command": g.command(),
            })
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], *, primary_only: bool = False,
                   lost: Collection[tuple[str, str]] = ()) -> str:
    """A Markdown table of report rows (metrics in percent where they are rates); the
    ``(experiment, setting)`` comparisons of ``lost`` are marked: a record of theirs could not
    be read, so they rest on fewer seeds than were run."""
    head = ("| experiment | setting | metric | baseline | R-Drop | Δ (95% CI) | p | seeds "
            "| s/run (base / R-Drop) | paper |")
    lines = [head, "|" + "---|" * 10]
    for row in rows:
        if primary_only and not row["primary"]:
            continue
        scale, digits = display_scale(row["metric"])
        sb = Summary(row["n_baseline"], row["baseline_mean"], row["baseline_std"])
        sr = Summary(row["n_rdrop"], row["rdrop_mean"], row["rdrop_std"])
        if row["n_pairs"] >= 2:
            delta = ci(row["delta"] * scale, row["delta_low"] * scale, row["delta_high"] * scale,
                       digits=digits)
        elif row["n_pairs"] == 1:
            delta = signed(row["delta"] * scale, digits)
        else:
            delta = "–"
        pct = " (%)" if scale == 100.0 else ""
        setting = row["setting"]
        if len(row.get("data_hashes", "").split()) > 1:
            setting += " ⚠ different data"
        if (row["experiment"], row["setting"]) in lost:
            setting += " ⚠ lost seeds"
        lines.append(
            f"| {row['experiment']} | {setting} | {row['metric']}{pct} | "
            f"{_ms(sb, scale, digits)} | {_ms(sr, scale, digits)} | {delta} | "
            f"{p_value(row['p_value'])} | {_seeds(row)} | "
            f"{number(row['baseline_wall_s'], 0)} / {number(row['rdrop_wall_s'], 0)} | "
            f"{row['paper'] or '–'} |"
        )
    return "\n".join(lines)


def _seeds(row: dict[str, Any]) -> str:
    nb, nr = row["n_baseline"], row["n_rdrop"]
    return str(nb) if nb == nr else f"{nb} / {nr}"


def _lost(skip: Skipped, groups: Sequence[Group], verdicts: Collection[str]) -> list[str]:
    """The comparisons ``skip`` took a seed from: the groups of its experiment holding a record
    of its config hash (the file's name says it), and its experiment's verdict."""
    hit = [f"{g.experiment} [{g.label}]" for g in groups if g.experiment == skip.experiment
           and any(r.get("key") == skip.key for r in g.records)]
    return hit + [f"the {skip.experiment} verdict"] * (skip.experiment in verdicts)


def _skipped_section(skipped: Sequence[Skipped], hits: Sequence[list[str]],
                     cells: Sequence[str | None]) -> list[str]:
    """Every skipped file, why, the run its name says it holds and what it took a seed from."""
    md = ["### Skipped files", "",
          "Not readable as run records, so in no table, verdict or map. Rerun the command that "
          "wrote each (an unreadable record counts as not done) or delete it:", ""]
    for skip, hit, cell in zip(skipped, hits, cells, strict=True):
        run = f"; it holds {skip.describe()}" if skip.describe() else ""
        lost = (f", a seed lost to the scale map's cell {cell}" if cell else
                f", a seed lost to {', '.join(hit)} (⚠ lost seeds)" if hit else "")
        md.append(f"- `{skip.path}`: {skip.why}{run}{lost}")
    md.append("")
    return md


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def _mean_curve(runs: Sequence[dict[str, Any]], key: str,
                scale: float = 1.0) -> tuple[list[float], list[float]]:
    by_step: dict[float, list[float]] = defaultdict(list)
    for r in runs:
        for point in r.get("curves", []):
            if key in point and point[key] is not None:
                by_step[point["step"]].append(float(point[key]) * scale)
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def _better(higher: bool) -> str:
    return "higher is better" if higher else "lower is better"


def _axis_name(metric: str) -> str:
    scale, _ = display_scale(metric)
    return metric + (" (%)" if scale == 100.0 else "")


def _title(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) or text


def _plot_group(g: Group, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    colors = {"baseline": "tab:blue", "rdrop": "tab:red"}
    names = {"baseline": "baseline", "rdrop": "R-Drop"}
    scale, _ = display_scale(g.metric)
    for method, runs in (("baseline", g.baseline), ("rdrop", g.rdrop)):
        if not runs:
            continue
        for key, style in (("train_loss", "--"), ("valid_loss", "-")):
            steps, ys = _mean_curve(runs, key)
            if steps:
                ax_loss.plot(steps, ys, style, color=colors[method],
                             label=f"{names[method]} {key.split('_')[0]}")
        steps, ys = _mean_curve(runs, f"valid_{g.metric}", scale)
        if steps:
            ax_metric.plot(steps, ys, "-o", ms=3, color=colors[method], label=names[method])
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss, eval mode (lower is better)")
    ax_loss.set_title("train (dashed) and validation loss", fontsize=9)
    ax_loss.legend(fontsize=8)
    ax_metric.set_xlabel("optimizer step")
    ax_metric.set_ylabel(f"validation {_axis_name(g.metric)} ({_better(g.higher_is_better)})")
    ax_metric.set_title(f"validation {g.metric}", fontsize=9)
    ax_metric.legend(fontsize=8)
    fig.suptitle(_title(f"{g.experiment} [{g.label}]: mean over seeds", 90), fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_metric(experiment: str, groups: Sequence[Group], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(groups) + 2.5), 4.4),
                           layout="constrained")
    scale, _ = display_scale(groups[0].metric)
    colors = ("tab:blue", "tab:red")
    for i, g in enumerate(groups):
        for j, method in enumerate(("baseline", "rdrop")):
            vals = [v * scale for v in g.values(method, g.metric).values()]
            x = i + (j - 0.5) * 0.3
            ax.scatter([x] * len(vals), vals, s=14, alpha=0.6, color=colors[j],
                       label=("baseline" if j == 0 else "R-Drop") if i == 0 else None)
            if vals:
                ax.hlines(sum(vals) / len(vals), x - 0.12, x + 0.12, color=colors[j])
    ax.set_xticks(range(len(groups)), [_title(g.label, 18) for g in groups], fontsize=7)
    ax.set_ylabel(f"test {_axis_name(groups[0].metric)} "
                  f"({_better(groups[0].higher_is_better)})")
    ax.set_title(_title(f"{experiment}: test {groups[0].metric} per seed (bar = mean)", 70),
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # never over the points
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class ReportData:
    """Everything the report says, collected from the records before anything is written.

    Attributes:
        root: the folder read. groups, rows: the paired comparisons and their table rows.
        diverged: runs that stopped on a non-finite loss (in no table).
        skipped: files that are no readable records; skipped_cells: the scale cell each
            belongs to (None outside the scale map); lost_to: what each took a seed from.
        lost_rows: ``(experiment, setting)`` comparisons that lost a seed; lost_verdicts: the
            experiments whose verdict did.
        unkeyed: records without a config hash (left out).
        only_quick: every record is a quick (smoke) run; left_out: quick records left out.
        protocol: any record is of the second protocol.
        verdicts, verdict_diverged, verdict_quick: the second protocol's verdicts, its diverged
            runs, and whether all its records are quick runs.
        headlines: the README's table rows. scale_map: the map (None without ``root/scale``).
        agreement: the tryout against the full comparison (empty without ``root/tryout``).
    """

    root: Path
    groups: list[Group]
    rows: list[dict[str, Any]]
    diverged: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    skipped_cells: list[str | None] = field(default_factory=list)
    lost_to: list[list[str]] = field(default_factory=list)
    lost_rows: set[tuple[str, str]] = field(default_factory=set)
    lost_verdicts: list[str] = field(default_factory=list)
    unkeyed: list[dict[str, Any]] = field(default_factory=list)
    only_quick: bool = False
    left_out: int = 0
    protocol: bool = False
    verdicts: list[FamilyVerdict] = field(default_factory=list)
    verdict_diverged: list[dict[str, Any]] = field(default_factory=list)
    verdict_quick: bool = False
    headlines: list[Headline] = field(default_factory=list)
    scale_map: ScaleMap | None = None
    agreement: list[AgreementRow] = field(default_factory=list)

    @property
    def has_verdict(self) -> bool:
        """Whether the report holds a second-protocol verdict section."""
        return bool(self.verdicts or self.verdict_diverged)


def collect_report(
    root: str | os.PathLike[str] = "runs",
    *,
    experiments: Sequence[str] | None = None,
    include_quick: bool = False,
    design: Design | None = None,
) -> ReportData:
    """Read and compute everything the report says (see :func:`build_report`); writes nothing.

    Raises:
        FileNotFoundError, DuplicateRunError: as :func:`build_report`.
    """
    scale_root = (Path(root) / "scale").resolve()  # the scale map's cells: their own report
    tryout_root = Path(root) / "tryout"  # the tryouts' continuations: storage leaves them out
    records, skipped = scan_results(root, experiments)
    records = [r for r in records if scale_root not in Path(r["_path"]).resolve().parents]
    if not records:
        held = sorted({r["experiment"] for r in load_results(root)}) if experiments else []
        if held:
            raise FileNotFoundError(f"no run records of {', '.join(experiments or [])} under "
                                    f"{root!s}; it holds: {', '.join(held)}.")
        raise FileNotFoundError(f"no run records (*.json with experiment/method/seed/value) "
                                f"under {root!s}; run `rdrop run <experiment>` first.")
    check_one_record_per_run(records, where=str(root))
    # A record without its config hashes cannot be paired with its baseline: leave it out, named.
    unkeyed = [r for r in records if not r.get("key") or not r.get("pair_key")]
    records = [r for r in records if r.get("key") and r.get("pair_key")]
    quick = [r for r in records if r.get("variant") == "quick"]
    only_quick = len(quick) == len(records)
    left_out = 0
    if quick and len(quick) < len(records) and not include_quick:
        records = [r for r in records if r.get("variant") != "quick"]
        left_out = len(quick)
    diverged = [r for r in records if is_diverged(r)]
    groups = group_results([r for r in records if not is_diverged(r)], design)
    # A skipped file of the scale map's cells is the map's loss; of the others, the comparisons
    # of its experiment that hold its config, and its experiment's verdict.
    cells = [next((p.name for p in skip.path.resolve().parents if p.parent == scale_root), None)
             for skip in skipped]
    protocol_records = [r for r in records if is_protocol_record(r)]
    protocol = {r["experiment"] for r in protocol_records}
    hits = [[] if cell else _lost(skip, groups, protocol)
            for skip, cell in zip(skipped, cells, strict=True)]
    verdicts = build_verdicts(protocol_records, design)
    return ReportData(
        root=Path(root), groups=groups, rows=_rows(groups), diverged=diverged,
        skipped=list(skipped), skipped_cells=cells, lost_to=hits,
        lost_rows={(g.experiment, g.label) for g in groups
                   if any(f"{g.experiment} [{g.label}]" in hit for hit in hits)},
        lost_verdicts=sorted({e for skip, cell in zip(skipped, cells, strict=True)
                              if not cell and (e := skip.experiment) in protocol}),
        unkeyed=unkeyed, only_quick=only_quick, left_out=left_out, protocol=bool(protocol),
        verdicts=verdicts, verdict_diverged=[r for r in protocol_records if is_diverged(r)],
        verdict_quick=all(r.get("variant") == "quick" for r in protocol_records),
        headlines=[h for v in verdicts if (h := headline(v)) is not None],
        scale_map=collect_map(root, design) if scale_root.is_dir() else None,
        agreement=agreement_rows(root, design) if tryout_root.is_dir() else [])


def _plot_names(groups: Sequence[Group]) -> tuple[list[tuple[Group, str]], list[tuple[str, str]]]:
    """The file names of each group's curves plot and of each experiment's metric plot."""
    curves = [(g, f"{_slug(g.experiment)}__{_slug(g.label)}_curves.png") for g in groups]
    experiments = dict.fromkeys(g.experiment for g in groups)
    return curves, [(e, f"{_slug(e)}_metric.png") for e in experiments]


def summary_markdown(data: ReportData, *, plots: bool = False) -> str:
    """``summary.md``: the primary-metric table, then all metrics, the notes, the commands, and
    (with ``plots``) the plots' names."""
    root, groups, skipped = data.root, data.groups, data.skipped
    md = ["## Results", ""]
    if data.only_quick:
        md += ["**Quick smoke runs**: they check that the pipeline runs end to end; they are "
               "too short to be evidence.", ""]
    if data.diverged:
        md += [f"**{len(data.diverged)} diverged run(s)** (training stopped on a non-finite "
               "loss) are left out of every table below; see Diverged runs.", ""]
    if skipped:
        md += [f"**{len(skipped)} file(s) skipped**: not readable as run records (cut off "
               "mid-write or corrupt), so the comparisons marked ⚠ lost seeds rest on fewer "
               "seeds than were run; each file is named in Skipped files.", ""]
    if data.unkeyed:
        md += [f"**{len(data.unkeyed)} record(s) without a config hash** (`key`/`pair_key`, "
               "written by an older version) are left out: they cannot be paired with a "
               f"baseline. First: {data.unkeyed[0].get('_path', '?')}. Rerun them to include "
               "them.", ""]
    if data.has_verdict:
        verdict = verdict_markdown(data.verdicts, data.verdict_diverged,
                                   quick=data.verdict_quick, plots=plots)
        md += ["### Verdict (second protocol: arms chosen on validation; also in `verdict.md`)",
               ""]
        if data.lost_verdicts:
            md += [f"**⚠ lost seeds**: the verdicts of {', '.join(data.lost_verdicts)} rest on "
                   "fewer seeds than were run (a record could not be read; see Skipped files).",
                   ""]
        md += [verdict.strip(), "", "### Every setting", ""]
    if data.protocol:
        how = ("each run trained until validation stopped improving and tested at its "
               "best-validation checkpoint; each R-Drop setting is paired with the baseline "
               "of the same other settings")
    else:
        how = "both arms take the same number of optimizer steps from the same seeds"
    md += ["Test metrics, mean ± sample std over seeds; Δ = R-Drop − baseline, paired by seed, "
           f"with a 95% Student-t interval and a paired t-test p-value; {how}. s/run is wall "
           "time per run. Rates (accuracy, F1, BLEU, chrF, ROUGE) in percent.", ""]
    if data.left_out:
        md += [f"{data.left_out} quick (smoke) run record(s) under {root!s} left out "
               "(`--include-quick` keeps them).", ""]
    md += [markdown_table(data.rows, primary_only=True, lost=data.lost_rows), "",
           "### All metrics", "", markdown_table(data.rows, lost=data.lost_rows), ""]
    if skipped:
        md += _skipped_section(skipped, data.lost_to, data.skipped_cells)
    mixed = [g for g in groups if len(g.data_hashes) > 1]
    if mixed:
        md += ["### Different data", "",
               "These comparisons mix runs made on different data (different `data_hash`; e.g. "
               "the apt lists changed between runs): rerun them on one snapshot.", ""]
        md += [f"- {g.experiment} [{g.label}]: {', '.join(g.data_hashes)}" for g in mixed]
        md.append("")
    if data.diverged:
        md += ["### Diverged runs", "",
               "Stopped on a non-finite training loss; not results, so in no table or verdict:",
               ""]
        md += [f"- {describe_run(r)}: `{r.get('_path', '?')}`" for r in data.diverged]
        md.append("")
    md += ["### Reproduce", ""]
    by_command: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        cmd = g.command()
        if cmd:
            by_command[cmd].append(g)
    for cmd, gs in by_command.items():  # one command may run a whole grid (an ablation)
        label = gs[0].label if len(gs) == 1 else f"all {len(gs)} settings"
        md.append(f"- {gs[0].experiment} [{label}]: `{cmd}`")
    if plots:
        curves, metrics = _plot_names(groups)
        md += ["", "### Plots", ""]
        md += [f"- {g.experiment} [{g.label}] curves: `plots/{name}`" for g, name in curves]
        md += [f"- {e} per-seed test {next(g.metric for g in groups if g.experiment == e)}: "
               f"`plots/{name}`" for e, name in metrics]
    if data.scale_map is not None and data.scale_map.cells:
        md += ["", "### Scale map", "", "Where R-Drop pays, by training-set size and "
               "overfitting: `scale/map.md` (`rdrop advise RUN.json` reads a baseline run "
               "against it)."]
    if agreement_markdown(data.agreement):
        md += ["", "### The tryout against the full comparison", "",
               "`tryout/agreement.md`: `rdrop tryout` on each family's baseline against "
               "the registered plateau arm."]
    return "\n".join(md) + "\n"


def write_report(data: ReportData, out: str | os.PathLike[str], *, plots: bool = True) -> str:
    """Write what :func:`collect_report` collected under ``out``: ``summary.csv``,
    ``summary.md``, the plots, and where the data holds them ``verdict.md``/``verdict.csv``,
    ``headline.md``, ``scale/map.md``/``map.csv`` and ``tryout/agreement.md``. Returns the
    summary's markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = data.rows
    with open(out / "summary.csv", "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if data.has_verdict:
        write_verdict(data.verdicts, data.verdict_diverged, out, quick=data.verdict_quick,
                      plots=plots)
        (out / "headline.md").write_text(headline_markdown(data.headlines))
    if plots:
        plot_dir = out / "plots"
        plot_dir.mkdir(exist_ok=True)
        curves, metrics = _plot_names(data.groups)
        for g, name in curves:
            _plot_group(g, plot_dir / name)
        for exp, name in metrics:
            _plot_metric(exp, [g for g in data.groups if g.experiment == exp], plot_dir / name)
    if data.scale_map is not None:
        write_map(data.root, out, plots=plots, data=data.scale_map)
    if table := agreement_markdown(data.agreement):
        (out / "tryout").mkdir(parents=True, exist_ok=True)
        (out / "tryout" / "agreement.md").write_text(table)
    text = summary_markdown(data, plots=plots)
    (out / "summary.md").write_text(text)
    return text


def build_report(
    root: str | os.PathLike[str] = "runs",
    *,
    out: str | os.PathLike[str] | None = None,
    plots: bool = True,
    experiments: Sequence[str] | None = None,
    include_quick: bool = False,
    design: Design | None = None,
) -> str:
    """Write ``summary.csv``, ``summary.md`` and plots under ``out`` (default ``root``):
    :func:`collect_report`, then :func:`write_report`.

    Args:
        root: folder holding run records (searched recursively).
        out: where to write (default ``root``).
        plots: write PNG plots.
        experiments: only these experiments.
        include_quick: keep quick (smoke) runs when full runs are present too; by default they
            are left out, so smoke numbers never sit beside evidence. A report of quick runs
            only is headed as such.
        design: what the registry says (default seeds, the paper's figures, grid order, a scale
            cell's missing runs); without it, the records alone are read.

    Returns:
        The Markdown text (primary-metric table, then all metrics, then commands).

    Raises:
        FileNotFoundError: ``root`` holds no run records (of ``experiments``, naming the ones
            it does hold).
        DuplicateRunError: two records of one run (same experiment, config hash, method and
            seed) under ``root``; the message names both files.
    """
    data = collect_report(root, experiments=experiments, include_quick=include_quick,
                          design=design)
    return write_report(data, out or root, plots=plots)
