r"""The quality/compute frontier of a family: what each arm buys, and at which compute.

Compute is ``fb_equivalents`` (:mod:`rdrop_experiments.compute`: a forward+backward of one
sample = 1, a forward without backward = the measured ratio ``f``); records written before it
existed are read with :func:`rdrop_experiments.compute.fb_of_point` and the family's ``f``
(the median ``forward_ratio`` of its records that measured it).

Per arm, at its grid point chosen on validation (:mod:`rdrop_experiments.verdict`), over seeds:

* **best quality**: the test metric at the best-validation checkpoint, mean and 95% t interval;
* **compute to best**: per seed, the arm's ``fb`` at its best-validation checkpoint over the
  baseline's (same seed); geometric mean and the t interval of the mean log ratio;
* **compute to the baseline's best**: per seed, the ``fb`` at which the arm's
  best-validation-so-far checkpoint first tests at least as well as the baseline's best (same
  seed), over the baseline's compute to its best; seeds that never get there are counted apart;
* **quality at the baseline's compute**: the arm's test metric at its best-validation-so-far
  checkpoint within the ``fb`` the baseline used until it stopped, minus the baseline's, paired
  by seed (these are comparisons of the verdict, with their Holm p).

An arm is a method plus the schedule options it sets (:func:`arm_name`): ``rdrop+fraction`` is
``rdrop`` with ``second_pass_fraction < 1``, ``rdrop+auto_start`` uses
:class:`rdrop.training.autostart.AutoStart`. **The recommendation** of a family is the arm with the
smallest compute to best among those that keep at least 80% of full R-Drop's best-quality gain
(mean difference to the baseline), and whether any arm beats the tuned baseline at the
baseline's compute (Holm p < 0.05, in the better direction).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdrop_experiments.compute import fb_of_point
from rdrop_experiments.config import SCHEDULE_TAGS
from rdrop_experiments.formatting import NA, ci, number, p_value, ratio, signed
from rdrop_experiments.stats import t_quantile

__all__ = ["AtCompute", "FrontierRow", "Recommendation", "arm_name", "compute_to_reach",
           "family_forward_ratio", "fb_at_best", "fb_used", "frontier_markdown", "frontier_rows",
           "improves", "plot_frontier", "quality_at_fb", "recommendation", "recommendation_text",
           "unscheduled"]

GAIN_KEPT = 0.8


def arm_name(rec: Mapping[str, Any]) -> str:
    """The arm of a record: its method, plus ``+tag`` for each schedule option it sets, and
    ``+<kind>`` for a noise source other than the model's own dropout (``noise=embedding:5``
    -> ``+embedding``, ``dropout:0.1`` -> ``+dropout``, ``lora:0.1`` -> ``+lora``), and
    ``+<arm_tag>`` when the config names one.

    Example:
        >>> arm_name({"method": "rdrop", "config": {"second_pass_fraction": 0.25}})
        'rdrop+fraction'
        >>> arm_name({"method": "rdrop_stop_gradient",
        ...           "config": {"auto_start_patience": 2, "second_pass_fraction": 0.5}})
        'rdrop_stop_gradient+auto_start+fraction'
        >>> arm_name({"method": "baseline", "config": {}})
        'baseline'
        >>> arm_name({"method": "baseline", "config": {"noise": "embedding:5"}})
        'baseline+embedding'
        >>> arm_name({"method": "rdrop", "config": {"arm_tag": "tuned_dropout"}})
        'rdrop+tuned_dropout'
    """
    config = rec.get("config", {})
    tags = [tag or str(config[key]) for key, default, tag in SCHEDULE_TAGS
            if config.get(key, default) != default]
    noise = str(config.get("noise", "dropout"))
    if noise != "dropout":
        tags.append(noise.split(":")[0])
    if config.get("arm_tag"):
        tags.append(str(config["arm_tag"]))
    return "+".join([str(rec["method"]), *tags])


def unscheduled(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of arms without a schedule option, noise source or arm tag (issue 20's
    cheaper arms, read in their own frontier table, are left out): what the scale map's rows
    and a cell's completeness count.

    Example:
        >>> rec = {"method": "rdrop", "setting": "methods=rdrop,alpha=1.0", "config": {}}
        >>> len(unscheduled([rec, {**rec, "config": {"second_pass_fraction": 0.5}}]))
        1
    """
    return [r for r in records if arm_name(r) == r["method"]]


def family_forward_ratio(records: Sequence[Mapping[str, Any]]) -> float:
    """The family's ``f``: the median ``forward_ratio`` of the records that measured it (NaN
    when none did; then only records with ``fb_equivalents`` on their curves can be read)."""
    values = []
    for rec in records:
        f = rec.get("forward_ratio", rec.get("extra", {}).get("forward_ratio"))
        if isinstance(f, (int, float)) and math.isfinite(f):
            values.append(float(f))
    return statistics.median(values) if values else math.nan


def _fb(point: Mapping[str, float], f: float) -> float:
    if "fb_equivalents" in point:
        return float(point["fb_equivalents"])
    if float(point.get("backward_passes", point["sample_passes"])) == float(
            point["sample_passes"]):
        return float(point["sample_passes"])  # no forward without backward: f not needed
    return fb_of_point(point, f)


def quality_at_fb(curves: Sequence[Mapping[str, float]], key: str, budget: float,
                  f: float) -> float:
    """Test value ``key`` of the best-validation-so-far checkpoint within ``budget`` fb
    (NaN before the first evaluation point), as
    :func:`rdrop_experiments.protocol.quality_at_compute` does in sample passes.

    Example:
        >>> c = [{"fb_equivalents": 10, "test_acc": 0.5}, {"fb_equivalents": 20, "test_acc": 0.7}]
        >>> quality_at_fb(c, "test_acc", 15, 0.3), quality_at_fb(c, "test_acc", 99, 0.3)
        (0.5, 0.7)
    """
    value = math.nan
    for point in curves:
        if _fb(point, f) > budget:
            break
        value = float(point.get(key, math.nan))
    return value


def fb_at_best(rec: Mapping[str, Any], f: float) -> float:
    """``fb`` at the record's best-validation checkpoint (its curve point at ``best_step``)."""
    step = rec.get("best_step", rec.get("extra", {}).get("best_step"))
    for point in rec["curves"]:
        if step is not None and point.get("step") == step:
            return _fb(point, f)
    # a record whose curves carry no steps: its sample passes at the best checkpoint
    passes = rec.get("best_sample_passes", rec.get("extra", {}).get("best_sample_passes"))
    return float(passes) if passes is not None else math.nan


def fb_used(rec: Mapping[str, Any], f: float) -> float:
    """``fb`` the run used until it stopped (its last curve point)."""
    return _fb(rec["curves"][-1], f) if rec["curves"] else math.nan


def compute_to_reach(rec: Mapping[str, Any], key: str, target: float, higher_is_better: bool,
                     f: float) -> float:
    """The first ``fb`` at which the best-validation-so-far checkpoint tests at least as well
    as ``target``; ``inf`` if it never does.

    Example:
        >>> rec = {"curves": [{"fb_equivalents": 5, "test_ppl": 9.0},
        ...                   {"fb_equivalents": 9, "test_ppl": 7.5}]}
        >>> compute_to_reach(rec, "test_ppl", 8.0, False, 0.3)
        9.0
        >>> compute_to_reach(rec, "test_ppl", 7.0, False, 0.3)
        inf
    """
    for point in rec["curves"]:
        value = float(point.get(key, math.nan))
        if math.isfinite(value) and (value >= target if higher_is_better else value <= target):
            return _fb(point, f)
    return math.inf


@dataclass(frozen=True)
class Interval:
    """A mean (or geometric mean) with its 95% t interval over ``n`` seeds."""

    n: int
    mean: float
    low: float
    high: float


def _interval(values: Sequence[float], *, log: bool = False) -> Interval:
    vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return Interval(0, math.nan, math.nan, math.nan)
    xs = [math.log(v) for v in vals] if log else vals
    mean = sum(xs) / len(xs)
    if len(xs) > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        half = t_quantile(len(xs) - 1) * sd / math.sqrt(len(xs))
    else:
        half = math.nan
    lo, hi = mean - half, mean + half
    if log:
        return Interval(len(xs), math.exp(mean), math.exp(lo), math.exp(hi))
    return Interval(len(xs), mean, lo, hi)


@dataclass(frozen=True)
class FrontierRow:
    """One arm on a family's frontier (values in report units; ratios x the baseline).

    Attributes:
        arm, chosen: the arm and its grid point chosen on validation.
        quality: best test quality (mean, 95% CI).
        fb_best: fb to the best-validation checkpoint (mean over seeds, absolute).
        to_best: fb to best over the baseline's (geometric mean, CI).
        to_baseline_best: fb to reach the baseline's best over the baseline's fb to its best
            (geometric mean, CI over the seeds that reach it); ``reached`` of ``seeds``.
        at_baseline: the arm minus the baseline at the baseline's compute (mean, CI, Holm p);
            ``None`` for the baseline itself.
        gain_kept: the arm's mean best-quality gain over full R-Drop's (``rdrop``'s).
    """

    arm: str
    chosen: str
    quality: Interval
    fb_best: float
    to_best: Interval
    to_baseline_best: Interval
    reached: int
    seeds: int
    at_baseline: tuple[float, float, float, float] | None
    gain_kept: float


def frontier_rows(v: Any) -> list[FrontierRow]:
    """The frontier of one :class:`rdrop_experiments.verdict.FamilyVerdict`."""
    key = f"test_{v.metric}"
    f = v.forward_ratio
    base = v.arms["baseline"].runs
    base_best = {s: fb_at_best(r, f) for s, r in base.items()}
    base_value = {s: float(r["value"]) for s, r in base.items()}
    equal = {c.name.split(" - ")[0]: c for c in v.comparisons if c.kind == "equal"
             and c.name.endswith("- baseline, equal compute")}
    mean_base = sum(base_value.values()) / len(base_value)
    full = v.arms.get("rdrop")
    full_gain = (sum(float(r["value"]) for r in full.runs.values()) / len(full.runs) - mean_base
                 if full is not None else math.nan)
    if not improves(full_gain, v.higher_is_better):
        full_gain = math.nan  # no gain to keep: the share is undefined
    rows = []
    for name, arm in v.arms.items():
        runs = arm.runs
        values = [v.scale * float(r["value"]) for r in runs.values()]
        to_best = [fb_at_best(r, f) / base_best[s] for s, r in runs.items() if s in base_best]
        reach = [compute_to_reach(r, key, base_value[s], v.higher_is_better, f) / base_best[s]
                 for s, r in runs.items() if s in base_value]
        mean_arm = sum(float(r["value"]) for r in runs.values()) / len(runs)
        cmp = equal.get(name)
        at = None if cmp is None else (cmp.diff.mean, cmp.diff.low, cmp.diff.high, cmp.p_holm)
        gain = (mean_arm - mean_base) / full_gain if full_gain and math.isfinite(full_gain) \
            else math.nan
        rows.append(FrontierRow(
            arm=name, chosen=arm.chosen, quality=_interval(values),
            fb_best=sum(fb_at_best(r, f) for r in runs.values()) / len(runs),
            to_best=_interval(to_best, log=True), to_baseline_best=_interval(reach, log=True),
            reached=sum(math.isfinite(x) for x in reach), seeds=len(reach), at_baseline=at,
            gain_kept=gain))
    return rows


@dataclass(frozen=True)
class AtCompute:
    """An arm minus the baseline at the baseline's compute (mean, 95% CI, Holm p)."""

    arm: str
    mean: float
    low: float
    high: float
    p_holm: float


NO_FULL_ARM, NO_GAIN, CHEAPER_ARM, NONE_KEEPS = "no full arm", "no gain", "cheaper arm", \
    "none keeps the gain"


@dataclass(frozen=True)
class Recommendation:
    """A family's recommendation (see the module doc), as data; :func:`recommendation_text`
    writes it as a paragraph.

    Attributes:
        family, metric, higher_is_better: the family and its metric.
        kind: :data:`CHEAPER_ARM` (``arm`` keeps >= :data:`GAIN_KEPT` of full R-Drop's gain),
            :data:`NONE_KEEPS` (no arm does), :data:`NO_GAIN` (full R-Drop does not improve on
            the tuned baseline) or :data:`NO_FULL_ARM` (no full R-Drop arm was run).
        gain: full R-Drop's best-quality gain (mean, report units); full_to_best: its compute
            to best over the baseline's (geometric mean).
        arm, chosen: the cheapest arm keeping the gain and its grid point chosen on validation
            (None, '' unless ``kind`` is :data:`CHEAPER_ARM`); gain_kept: its share of the gain;
            quality: its best test quality; to_best: its compute to best (x the baseline's).
        beats_baseline: the arms better than the tuned baseline at the baseline's compute with
            Holm p < 0.05; best_at_compute: where none is, the arm closest to it (None without
            such comparisons).
    """

    family: str
    metric: str
    higher_is_better: bool
    kind: str
    gain: float = math.nan
    full_to_best: float = math.nan
    arm: str | None = None
    chosen: str = ""
    gain_kept: float = math.nan
    quality: Interval | None = None
    to_best: Interval | None = None
    beats_baseline: tuple[AtCompute, ...] = ()
    best_at_compute: AtCompute | None = None


def _at(r: FrontierRow) -> AtCompute:
    assert r.at_baseline is not None
    return AtCompute(r.arm, *r.at_baseline)


def recommendation(v: Any, rows: Sequence[FrontierRow] | None = None) -> Recommendation:
    """The family's recommendation (see the module doc) for a
    :class:`~rdrop_experiments.verdict.FamilyVerdict` ``v`` and its frontier ``rows``."""
    rows = list(rows if rows is not None else frontier_rows(v))
    by = {r.arm: r for r in rows}
    head = {"family": v.experiment, "metric": v.metric, "higher_is_better": v.higher_is_better}
    if "rdrop" not in by:
        return Recommendation(**head, kind=NO_FULL_ARM)
    full = by["rdrop"]
    gain = full.quality.mean - by["baseline"].quality.mean
    head |= {"gain": gain, "full_to_best": full.to_best.mean}
    pick: dict[str, Any] = {}
    if not improves(gain, v.higher_is_better):
        kind = NO_GAIN
    else:
        keep = [r for r in rows if r.arm not in ("baseline", "rdrop_alpha0")
                and math.isfinite(r.gain_kept) and r.gain_kept >= GAIN_KEPT]
        kind = CHEAPER_ARM if keep else NONE_KEEPS
        if keep:
            r = min(keep, key=lambda r: (r.to_best.mean, r.arm))
            pick = {"arm": r.arm, "chosen": r.chosen, "gain_kept": r.gain_kept,
                    "quality": r.quality, "to_best": r.to_best}
    at = [_at(r) for r in rows if r.at_baseline is not None]
    wins = tuple(a for a in at if math.isfinite(a.p_holm) and a.p_holm < 0.05
                 and improves(a.mean, v.higher_is_better))
    closest = None
    if not wins and at:
        closest = (max if v.higher_is_better else min)(at, key=lambda a: a.mean)
    return Recommendation(**head, kind=kind, **pick, beats_baseline=wins,
                          best_at_compute=closest)


def _at_text(a: AtCompute) -> str:
    return f"{a.arm} {ci(a.mean, a.low, a.high)}, Holm p {p_value(a.p_holm)}"


def recommendation_text(r: Recommendation) -> str:
    """The recommendation as one paragraph."""
    if r.kind == NO_FULL_ARM:
        return f"{r.family}: no full R-Drop arm, so no gain to keep."
    better = "higher" if r.higher_is_better else "lower"
    text = [f"{r.family} ({r.metric}, {better} is better): full R-Drop's gain is "
            f"{signed(r.gain)} at {ratio(r.full_to_best)} the baseline's compute to best."]
    if r.kind == NO_GAIN:
        text.append("Full R-Drop does not improve on the tuned baseline here, so there is no "
                    "gain to keep.")
    elif r.kind == CHEAPER_ARM:
        assert r.quality is not None and r.to_best is not None
        q, c = r.quality, r.to_best
        text.append(
            f"Cheapest arm keeping >= {GAIN_KEPT:.0%} of that gain: **{r.arm}** "
            f"({r.chosen}): {r.gain_kept:.0%} of the gain, best {r.metric} "
            f"{number(q.mean)} [{number(q.low)}, {number(q.high)}], compute to best "
            f"{ratio(c.mean)} [{ratio(c.low)}, {ratio(c.high)}] the baseline's.")
    else:
        text.append(f"No arm keeps >= {GAIN_KEPT:.0%} of full R-Drop's gain.")
    if r.beats_baseline:
        text.append("Beats the tuned baseline at the baseline's compute (Holm p < 0.05): "
                    + "; ".join(_at_text(a) for a in r.beats_baseline) + ".")
    elif r.best_at_compute is not None:
        text.append("No arm beats the tuned baseline at the baseline's compute (best: "
                    f"{_at_text(r.best_at_compute)}).")
    return " ".join(text)


def improves(diff: float, higher_is_better: bool) -> bool:
    """Whether a finite difference (arm - reference) is an improvement in the metric's direction."""
    return math.isfinite(diff) and (diff > 0 if higher_is_better else diff < 0)


def frontier_markdown(verdicts: Sequence[Any], *, level: int = 3) -> str:
    """Per family: the frontier table, the recommendation and the plot's link, under a
    heading of markdown ``level``."""
    lines = [f"{'#' * level} Quality/compute frontier (fb_equivalents; each arm at its point "
             "chosen on validation)", "",
             "Compute in forward+backward equivalents (a forward without backward = the "
             "measured ratio f). Ratios are per seed over the baseline's compute to its best "
             "(geometric mean [95% CI]); quality at the baseline's compute is arm - baseline "
             "within the fb the baseline used until it stopped (Holm p over the family). "
             "f=n/a: no record of the family measured f, a forward counts 1 (an upper bound "
             "for the stop-gradient arm).", "",
             "| family | arm | chosen | best test (95% CI) | fb to best | x baseline | "
             "to reach baseline's best (x baseline; reached) | Δ at baseline's compute, Holm p "
             "| share of R-Drop's gain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        f = v.forward_ratio
        rows = frontier_rows(v)
        for r in rows:
            at = "—" if r.at_baseline is None else ci(*r.at_baseline[:3], p=r.at_baseline[3])
            reach = (f"{ratio(r.to_baseline_best.mean)} [{ratio(r.to_baseline_best.low)}, "
                     f"{ratio(r.to_baseline_best.high)}]; {r.reached}/{r.seeds}")
            gain = "—" if r.arm == "baseline" or not math.isfinite(r.gain_kept) else (
                f"{r.gain_kept:.0%}")
            lines.append(
                f"| {v.experiment} (f={number(f) if v.forward_ratio_measured else NA}) | "
                f"{r.arm} | {r.chosen} | {number(r.quality.mean)} [{number(r.quality.low)}, "
                f"{number(r.quality.high)}] | {number(r.fb_best, 0)} | {ratio(r.to_best.mean)} "
                f"[{ratio(r.to_best.low)}, {ratio(r.to_best.high)}] | {reach} | {at} | {gain} |")
    lines += ["", "**Recommendation per family** (the cheapest arm on the frontier keeping >= "
              f"{GAIN_KEPT:.0%} of full R-Drop's best-quality gain; an arm beating the tuned "
              "baseline at the baseline's compute):", ""]
    lines += [f"- {recommendation_text(recommendation(v))}" for v in verdicts]
    return "\n".join(lines) + "\n"


def plot_frontier(v: Any, path: Path) -> None:
    """Best test quality (mean, 95% CI) against compute to best (x the baseline's, geometric
    mean, 95% CI), one point per arm; the baseline's best as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frontier_rows(v)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for r in rows:
        x, y = r.to_best.mean, r.quality.mean
        xerr = [[max(0.0, x - r.to_best.low)], [max(0.0, r.to_best.high - x)]] \
            if math.isfinite(r.to_best.low) else None
        yerr = [[y - r.quality.low], [r.quality.high - y]] if math.isfinite(r.quality.low) \
            else None
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=r.arm)
    base = next(r for r in rows if r.arm == "baseline")
    ax.axhline(base.quality.mean, color="grey", lw=0.8, ls="--")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    unit = " (%)" if v.scale == 100 else ""
    better = "higher" if v.higher_is_better else "lower"
    ax.set_xlabel("compute to best, x the baseline's (forward+backward equivalents)", fontsize=8)
    ax.set_ylabel(f"best test {v.metric}{unit} ({better} is better)", fontsize=9)
    ax.set_title(f"{v.experiment}: quality/compute frontier (mean, 95% CI over seeds)",
                 fontsize=9)
    # below the axes, so no point is hidden (the chosen grid points are in the table)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
