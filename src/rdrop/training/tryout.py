r"""Try R-Drop on your own run first: branch from the baseline's checkpoint at its plateau.

R-Drop pays when it runs during the training that leads to the validation optimum, from the
baseline's plateau on (docs/EXPERIMENTS.md). Whether it pays on *your* task is measured, not
guessed: take a finished baseline run with checkpoints, continue it from the checkpoint at its
plateau with R-Drop and plainly, over a few seeds, and compare within the baseline's compute.
:func:`tryout` does that for any training loop, given a function that continues a run from a
checkpoint; :func:`rdrop.integrations.hf.tryout` builds that function for a Hugging Face
``Trainer``.

The result is data (:class:`TryoutResult`, a frozen dataclass checked field by field by the
tests); :meth:`TryoutResult.summary` renders it in a few lines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rdrop.training.autostart import PLATEAU_FRACTION, PLATEAU_WINDOW, plateau_step

__all__ = ["DOES_NOT_PAY", "NOT_ENOUGH_EVIDENCE", "PAYS", "Estimate", "TryoutResult",
           "paired_interval", "t_quantile", "tryout"]

logger = logging.getLogger("rdrop")

PAYS, DOES_NOT_PAY, NOT_ENOUGH_EVIDENCE = "pays", "does not pay", "not enough evidence"

# Student's t, 0.975 quantile (two-sided 95%), for 1..30 degrees of freedom; the normal
# quantile beyond (the error is below 1% from df 31 on).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964

# One evaluation of a continuation: (optimizer step, validation value, held-out test value).
_Point = tuple[int, float, float | None]


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df >= 1`` degrees of freedom (table, then normal).

    Example:
        >>> t_quantile(1), t_quantile(30), t_quantile(1000)
        (12.7062, 2.0423, 1.959964)
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}.")
    return _T975[df - 1] if df <= len(_T975) else _Z975


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95% paired t interval ``mean ± t_{0.975, k-1} sd / sqrt(k)``.

    Attributes:
        mean, low, high: the mean of ``per_seed`` and the interval's ends.
        per_seed: the paired differences (R-Drop minus plain), one per seed.
        sd: their sample standard deviation (``k - 1`` in the denominator).
    """

    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]
    sd: float

    def spans_zero(self) -> bool:
        """Whether the interval contains 0 (the sign of the effect is not established)."""
        return self.low <= 0.0 <= self.high

    def __str__(self) -> str:
        return f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"


def paired_interval(deltas: Sequence[float]) -> Estimate:
    r"""Mean and 95% t interval of paired differences ``d_1..d_k`` (``k >= 2``):
    ``\bar d \pm t_{0.975,k-1}\, s_d/\sqrt{k}``.

    Example:
        >>> e = paired_interval([-1.0, -3.0])  # sd = sqrt(2), so t_{0.975,1} * sd / sqrt(2)
        >>> e.mean, round(e.low, 4), round(e.high, 4), e.spans_zero()
        (-2.0, -14.7062, 10.7062, True)
    """
    d = [float(x) for x in deltas]
    k = len(d)
    if k < 2:
        raise ValueError(f"a paired interval needs at least 2 differences, got {k}.")
    mean = sum(d) / k
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (k - 1))
    half = t_quantile(k - 1) * sd / math.sqrt(k)
    return Estimate(mean, mean - half, mean + half, tuple(d), sd)


def _seeds_needed(estimate: Estimate) -> int | None:
    """How many seeds in all would make the interval exclude 0 if the mean and spread stayed as
    observed: the least ``n`` with ``t_{0.975,n-1} sd / sqrt(n) < |mean|`` (``None``: mean 0)."""
    m, sd = abs(estimate.mean), estimate.sd
    if m == 0.0:
        return None
    n = len(estimate.per_seed)
    while n <= len(_T975) + 1:
        if t_quantile(n - 1) * sd / math.sqrt(n) < m:
            return n
        n += 1
    return max(n, math.floor((_Z975 * sd / m) ** 2) + 1)


@dataclass(frozen=True)
class TryoutResult:
    """What the tryout measured (values in the metric's own units; Δ = R-Drop minus plain).

    Attributes:
        metric_higher_is_better: the metric's direction (a gain is Δ < 0 for a loss).
        plateau_step: the optimizer step where :func:`rdrop.plateau_step` fires on the
            baseline's validation curve.
        checkpoint_step, checkpoint: the last saved checkpoint at or before it (the branch).
        total_steps: the baseline's optimizer steps (its compute, in plain steps).
        budget: the compute allowed after the checkpoint, in plain-step equivalents.
        step_cost: plain-step equivalents of one R-Drop step.
        rdrop_stop_step: the step the R-Drop continuations ran to.
        seeds: the seeds, each an R-Drop/plain pair.
        alpha: the chosen alpha (best seed-mean validation within the budget).
        validation: seed-mean best validation within the budget, per alpha tried (in order).
        plain_validation: seed-mean best validation of the plain continuations.
        at_compute: Δ with R-Drop's compute at most the baseline's ``total_steps``; ``None``
            when no R-Drop evaluation fell within it.
        best: Δ of R-Drop's best within the budget (against the same plain values).
        best_steps: per seed, the step of R-Drop's best evaluation within the budget.
        best_compute: per seed, that point's compute as a multiple of the baseline's.
        verdict: ``"pays"``, ``"does not pay"`` or ``"not enough evidence"``.
        pays_at: with ``"pays"``, the compute (multiple of the baseline's) it pays at: 1.0
            when ``at_compute`` shows it, else the largest of ``best_compute``.
        more_seeds: with ``"not enough evidence"``, how many more seeds would make the
            interval exclude 0 at the observed mean and spread (``None``: a mean of exactly 0).
        uses_test: whether the Δs are of held-out test values (at the evaluation chosen on
            validation) rather than of the validation values.
        test_higher_is_better: the direction of the values the Δs are of (the test metric's
            when it differs from the validation metric, e.g. ROUGE against a validation loss).
        best_seed: the seed whose R-Drop continuation at ``alpha`` reached the best validation
            value within the budget (the run to keep), at step ``best_steps`` of that seed.
        best_model: where that run's model was saved at that step, when the caller saved it
            (:func:`rdrop.integrations.hf.tryout` does); ``None`` otherwise.
    """

    metric_higher_is_better: bool
    plateau_step: int
    checkpoint_step: int
    checkpoint: Any
    total_steps: int
    budget: float
    step_cost: float
    rdrop_stop_step: int
    seeds: tuple[int, ...]
    alpha: float
    validation: dict[float, float]
    plain_validation: float
    at_compute: Estimate | None
    best: Estimate
    best_steps: tuple[int, ...]
    best_compute: tuple[float, ...]
    verdict: str
    pays_at: float | None
    more_seeds: int | None
    uses_test: bool
    test_higher_is_better: bool | None = None
    best_seed: int | None = None
    best_model: Any = None

    def summary(self) -> str:
        """A few lines for a log or a terminal."""
        higher = self.metric_higher_is_better
        if self.uses_test and self.test_higher_is_better is not None:
            higher = self.test_higher_is_better
        direction = "higher" if higher else "lower"
        values = "test" if self.uses_test else "validation"
        alphas = ", ".join(f"{a:g}: {v:.4g}" + (" (chosen)" if a == self.alpha else "")
                           for a, v in self.validation.items())
        at = "no R-Drop evaluation within it" if self.at_compute is None else str(self.at_compute)
        mean_compute = sum(self.best_compute) / len(self.best_compute)
        lines = [
            f"R-Drop tryout ({direction} is better; {len(self.seeds)} seeds, Δ = R-Drop - plain "
            f"on {values} values, mean [95% CI])",
            f"plateau at step {self.plateau_step}; branched from the checkpoint at step "
            f"{self.checkpoint_step}; budget {self.budget:g} plain-step equivalents after it",
            f"validation by alpha: {alphas}; plain {self.plain_validation:.4g}",
            f"at your compute: Δ {at}",
            f"best within the budget: Δ {self.best} at {mean_compute:.2f}x your compute",
        ]
        if self.verdict == PAYS:
            where = ("at your compute" if self.pays_at == 1.0
                     else f"at {self.pays_at:.2f}x your compute")
            lines.append(f"verdict: it pays: use alpha {self.alpha:g} from step "
                         f"{self.checkpoint_step}, {where}")
        elif self.verdict == DOES_NOT_PAY:
            lines.append("verdict: it does not pay (the interval excludes a gain)")
        else:
            more = ("a mean of exactly 0: more seeds will not settle it"
                    if self.more_seeds is None else
                    f"about {self.more_seeds} more seeds would settle it "
                    f"({self.more_seeds + len(self.seeds)} in all)")
            lines.append(f"verdict: not enough evidence (the interval spans 0; {more})")
        if self.best_seed is not None:
            where = "" if self.best_model is None else f", saved at {self.best_model}"
            step = self.best_steps[self.seeds.index(self.best_seed)]
            lines.append(f"best R-Drop model: alpha {self.alpha:g}, seed {self.best_seed}, step "
                         f"{step}{where}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ input checks
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checkpoints(checkpoints: Mapping[int, Any] | Iterable[tuple[int, Any]], total_steps: int
                 ) -> dict[int, Any]:
    if isinstance(checkpoints, (str, bytes)):
        raise TypeError("checkpoints must map optimizer steps to checkpoints ({step: path} or "
                        f"[(step, path), ...]), got the string {checkpoints!r}.")
    pairs = list(checkpoints.items()) if isinstance(checkpoints, Mapping) else list(checkpoints)
    saved: dict[int, Any] = {}
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2 or not _is_int(pair[0]):
            raise TypeError(f"checkpoints must be (optimizer step, checkpoint) pairs with an int "
                            f"step, got {pair!r}.")
        step, path = pair
        if not 0 <= step <= total_steps:
            raise ValueError(f"checkpoint step {step} is outside the baseline's run "
                             f"(0..total_steps={total_steps}).")
        if step in saved:
            raise ValueError(f"checkpoint step {step} is given twice.")
        saved[step] = path
    if not saved:
        raise ValueError("no checkpoints given: the tryout branches from a saved checkpoint of "
                         "the baseline. Save checkpoints during the baseline run.")
    return saved


def _alphas(alphas: Sequence[float]) -> list[float]:
    grid = list(alphas) if isinstance(alphas, Iterable) else [alphas]
    if not grid or any(not _is_real(a) or not math.isfinite(a) or a <= 0 for a in grid):
        raise ValueError(f"alphas must be one or more finite numbers > 0 (alpha 0 is the plain "
                         f"run, which the tryout runs anyway), got {alphas!r}.")
    if len(set(grid)) != len(grid):
        raise ValueError(f"alphas must be distinct, got {alphas!r}.")
    return sorted(float(a) for a in grid)


def _seed_list(seeds: int | Sequence[int], baseline_seed: int | None) -> list[int]:
    if baseline_seed is not None and not _is_int(baseline_seed):
        raise TypeError(f"baseline_seed must be an int or None, got {baseline_seed!r}.")
    if _is_int(seeds):
        first = 0 if baseline_seed is None else baseline_seed
        chosen = [first + i for i in range(seeds)]  # type: ignore[arg-type]
    elif isinstance(seeds, Sequence) and not isinstance(seeds, str) and all(
            _is_int(s) for s in seeds):
        chosen = list(seeds)
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"seeds must be distinct, got {seeds!r}.")
        if baseline_seed is not None and baseline_seed not in chosen:
            raise ValueError(f"baseline_seed={baseline_seed} is not among seeds={seeds!r}; add "
                             "it, or pass seeds as a count.")
    else:
        raise TypeError(f"seeds must be a count (int) or a sequence of int seeds, got {seeds!r}.")
    if len(chosen) < 2:
        raise ValueError(f"seeds: the tryout needs at least 2 seeds for an interval, got "
                         f"{seeds!r}.")
    return chosen


def _curve(raw: object, *, after: int, until: int, who: str) -> list[_Point]:
    """A continuation's evaluations, checked: (step, value[, test]) with ``after < step <=
    until`` strictly increasing; NaN or inf values are kept (a diverged run) but never best."""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise TypeError(f"continue_run ({who}) must return a list of (step, value) or (step, "
                        f"value, test_value) tuples, got {type(raw).__name__}.")
    points: list[_Point] = []
    for item in raw:
        if (not isinstance(item, (tuple, list)) or len(item) not in (2, 3)
                or not _is_int(item[0]) or not all(_is_real(v) for v in item[1:])):
            raise TypeError(f"continue_run ({who}) must return (step, value) or (step, value, "
                            f"test_value) tuples with an int step, got {item!r}.")
        step = item[0]
        if not after < step <= until:
            raise ValueError(f"continue_run ({who}) returned an evaluation at step {step}, "
                             f"outside the continuation (steps {after + 1}..{until}).")
        if points and step <= points[-1][0]:
            raise ValueError(f"continue_run ({who}) returned steps that do not increase "
                             f"({points[-1][0]} then {step}).")
        points.append((step, float(item[1]), float(item[2]) if len(item) == 3 else None))
    if not points:
        raise ValueError(f"continue_run ({who}) returned no evaluation after the checkpoint "
                         f"step {after}: evaluate at least once before max_steps={until}.")
    if len({p[2] is None for p in points}) > 1:
        raise ValueError(f"continue_run ({who}) returned a test value for some evaluations and "
                         "not others: return (step, value, test_value) for every one, or none.")
    return points


def _best(points: Sequence[_Point], *, until: float, sign: float) -> _Point | None:
    """The evaluation with the best validation value among steps ``<= until`` (NaN and inf
    never win; the earlier one on a tie)."""
    best: _Point | None = None
    for point in points:
        if point[0] <= until and math.isfinite(point[1]) and (
                best is None or sign * point[1] < sign * best[1]):
            best = point
    return best


# ---------------------------------------------------------------------------------- tryout
def tryout(
    steps: Sequence[int],
    values: Sequence[float],
    checkpoints: Mapping[int, Any] | Iterable[tuple[int, Any]],
    total_steps: int,
    continue_run: Callable[..., Iterable[tuple]],
    *,
    higher_is_better: bool = False,
    budget: float | None = None,
    step_cost: float = 2.0,
    alphas: Sequence[float] = (1.0, 10.0),
    max_extensions: int = 3,
    seeds: int | Sequence[int] = 2,
    baseline_seed: int | None = None,
    plain_from_curve: bool = False,
    test_values: Sequence[float] | None = None,
    test_higher_is_better: bool | None = None,
    window: int = PLATEAU_WINDOW,
    fraction: float = PLATEAU_FRACTION,
) -> TryoutResult:
    r"""Measure whether R-Drop pays on a finished baseline run, branching from its plateau.

    The plateau step ``S`` is :func:`rdrop.plateau_step` of the baseline's validation curve;
    the branch point ``C`` is the last checkpoint at or before ``S``. With ``T`` the baseline's
    optimizer steps and ``κ`` = ``step_cost`` (plain-step equivalents of one R-Drop step), an
    R-Drop continuation that reached step ``s`` has cost

    .. math::
        c(s) = C + κ\,(s - C) \quad\text{plain-step equivalents,}

    and it runs to ``s_max = C + ⌊B / κ⌋`` for a budget of ``B`` plain-step equivalents after
    ``C`` (default ``B = T - C``, what the baseline spent after the checkpoint). The plain
    continuations run to ``T``. For each seed ``j`` (an R-Drop and a plain continuation from the
    same checkpoint and seed) and alpha ``α``, ``v_j(α)`` is R-Drop's best validation value
    within the budget; alpha is chosen as the best seed mean ``\bar v(α)`` over the grid (the
    smaller alpha on a tie), which is extended by a factor 3 beyond an edge while that edge is
    the best and strictly beats its neighbour (at most ``max_extensions`` times). With ``y``
    the value at the evaluation chosen on validation (the test value when ``continue_run``
    returns one, else the validation value), the paired differences are

    .. math::
        Δ_j = y^{R}_j - y^{P}_j, \qquad
        \bar Δ \pm t_{0.975,\,k-1}\, \frac{s_Δ}{\sqrt{k}} ,

    ``y^P_j`` the plain continuation's best over ``C < s \le T``, and ``y^R_j`` R-Drop's best
    with ``c(s) \le T`` (``at_compute``) or within the whole budget (``best``, with its compute
    ``c(s)/T``). Verdict: *pays* when an interval lies wholly on the gain side (``at_compute``
    first, then ``best``); else *not enough evidence* when one spans 0, with the least ``n``
    seeds such that ``t_{0.975,n-1}\, s_Δ / \sqrt n < |\bar Δ|``; else *does not pay*.

    Args:
        steps, values: the baseline's validation curve (optimizer step of each evaluation,
            increasing; the metric).
        checkpoints: the baseline's checkpoints, ``{step: checkpoint}`` or ``[(step,
            checkpoint), ...]``; a checkpoint is whatever ``continue_run`` takes (a path).
        total_steps: the baseline's optimizer steps (its compute).
        continue_run: ``continue_run(checkpoint, *, alpha, seed, max_steps)`` continues the
            baseline from ``checkpoint`` with R-Drop at ``alpha`` (``None``: plainly, no
            R-Drop) and ``seed``, up to optimizer step ``max_steps`` (counted like the
            checkpoint's, from the start of the baseline run; keep the baseline's learning-rate
            schedule), and returns its validation curve after the checkpoint: ``[(step, value),
            ...]`` or ``[(step, value, test_value), ...]``.
        higher_is_better: the metric's direction (``False`` for a loss or perplexity).
        budget: plain-step equivalents allowed after the checkpoint (``>= T - C``, the
            default); more lets R-Drop run past the baseline's compute.
        step_cost: plain-step equivalents of one R-Drop step (``> 0``; 2.0: two passes).
        alphas: the alpha grid (default ``(1.0, 10.0)``; one value: no extension).
        max_extensions: how many times the grid may grow at an edge (``>= 0``).
        seeds: how many seeds (``>= 2``; they are ``baseline_seed, baseline_seed + 1, ...``, or
            ``0, 1, ...``), or the seeds themselves.
        baseline_seed: the baseline's own seed, if known: it is among the seeds.
        plain_from_curve: take ``baseline_seed``'s plain continuation from the baseline's own
            curve (its evaluations after the checkpoint) instead of rerunning it; valid when a
            plain continuation from the checkpoint reproduces the baseline exactly.
        test_values: the baseline's held-out test values at ``steps`` (with
            ``plain_from_curve``, when ``continue_run`` returns test values).
        test_higher_is_better: the direction of the test values when it differs from the
            validation metric's (a model chosen on validation loss, reported in ROUGE or BLEU:
            ``True``); ``None``: the same as ``higher_is_better``. The verdict's gain side is
            the test values' when they are used.
        window, fraction: the plateau rule (:class:`rdrop.PlateauStart`; the registered one by
            default).

    Returns:
        :class:`TryoutResult`.

    Raises:
        TypeError, ValueError: bad inputs (each message names the argument); a curve with no
            plateau yet; no checkpoint at or before the plateau step (the message lists the
            saved steps); a ``budget`` below the default; a ``continue_run`` result that is not
            a curve after the checkpoint; a plain continuation without a finite value; every
            alpha diverged.

    Example:
        A synthetic ``continue_run`` (a real one trains from the checkpoint): plain
        continuations level off near 1.33; R-Drop goes lower, most at alpha 10.

        >>> import math
        >>> from rdrop.training.tryout import tryout  # also rdrop.tryout
        >>> steps = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
        >>> values = [3.0, 2.0, 1.6, 1.45, 1.40, 1.38, 1.37, 1.36, 1.36, 1.35]
        >>> saved = {25: "ckpt-25", 50: "ckpt-50", 75: "ckpt-75"}
        >>> def continue_run(checkpoint, *, alpha, seed, max_steps):
        ...     start = int(checkpoint.split("-")[1])
        ...     gain = 0.0 if alpha is None else 0.1 - 0.02 * abs(math.log10(alpha) - 1)
        ...     return [(s, 1.35 - 0.02 * (s - start) / 50 - gain * (1 + 0.02 * seed))
        ...             for s in range(start + 5, max_steps + 1, 5)]
        >>> result = tryout(steps, values, saved, 100, continue_run)
        >>> result.plateau_step, result.checkpoint_step, result.rdrop_stop_step, result.alpha
        (60, 50, 75, 10.0)
        >>> sorted(result.validation)  # the grid, extended once above 10
        [1.0, 10.0, 30.0]
        >>> result.verdict, result.pays_at, round(result.at_compute.mean, 4)
        ('pays', 1.0, -0.091)
        >>> print(result.summary())  # doctest: +ELLIPSIS
        R-Drop tryout (lower is better; 2 seeds, Δ = R-Drop - plain on validation values, ...)
        plateau at step 60; branched from the checkpoint at step 50; ...
        ...
        verdict: it pays: use alpha 10 from step 50, at your compute
        best R-Drop model: alpha 10, seed 1, step 75
    """
    # ---- inputs, checked before any run
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1 (the baseline's optimizer steps), "
                         f"got {total_steps!r}.")
    if not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better must be a bool, got {higher_is_better!r}.")
    if test_higher_is_better is not None and not isinstance(test_higher_is_better, bool):
        raise TypeError(f"test_higher_is_better must be a bool or None, got "
                        f"{test_higher_is_better!r}.")
    if not callable(continue_run):
        raise TypeError("continue_run must be a function continue_run(checkpoint, *, alpha, "
                        f"seed, max_steps) -> [(step, value), ...], got {continue_run!r}.")
    steps, values = list(steps), list(values)
    if any(not _is_int(s) for s in steps) or any(not _is_real(v) for v in values):
        raise TypeError("steps must be ints (optimizer steps) and values numbers (the "
                        "validation metric).")
    if steps and steps[-1] > total_steps:
        raise ValueError(f"the validation curve reaches step {steps[-1]}, beyond total_steps="
                         f"{total_steps}: pass the baseline's total optimizer steps.")
    if test_values is not None:
        test_values = list(test_values)
        if len(test_values) != len(values) or any(not _is_real(v) for v in test_values):
            raise ValueError(f"test_values must hold one number per evaluation ({len(values)}), "
                             f"got {len(test_values)}.")
    saved = _checkpoints(checkpoints, total_steps)
    if not _is_real(step_cost) or not math.isfinite(step_cost) or step_cost <= 0:
        raise ValueError(f"step_cost must be a finite number > 0 (plain-step equivalents of one "
                         f"R-Drop step; 2.0 for two passes), got {step_cost!r}.")
    grid = _alphas(alphas)
    if not _is_int(max_extensions) or max_extensions < 0:
        raise ValueError(f"max_extensions must be an int >= 0, got {max_extensions!r}.")
    seed_list = _seed_list(seeds, baseline_seed)
    if not isinstance(plain_from_curve, bool):
        raise TypeError(f"plain_from_curve must be a bool, got {plain_from_curve!r}.")
    if plain_from_curve and baseline_seed is None:
        raise ValueError("plain_from_curve=True takes the baseline's own curve as the plain "
                         "continuation of the baseline's seed: pass baseline_seed=.")

    # ---- where to branch
    plateau = plateau_step(values, steps, window=window, fraction=fraction,
                           higher_is_better=higher_is_better)
    if plateau is None:
        last = f" up to step {steps[-1]}" if steps else ""
        raise ValueError(
            f"the validation curve has no plateau yet{last} ({len(values)} evaluations): by "
            f"the rule, the last {window} evaluations still improved by more than "
            f"{fraction:g} of the improvement so far. Train longer or raise fraction (the "
            "rule then fires earlier, e.g. fraction=0.5), and evaluate often enough to see "
            "the plateau.")
    before = [s for s in saved if s <= plateau]
    if not before:
        raise ValueError(
            f"no checkpoint at or before the plateau step {plateau}; saved steps: "
            f"{sorted(saved)}. Save checkpoints more often (the tryout branches from the last "
            "one at or before the plateau).")
    start = max(before)
    if start >= total_steps:
        raise ValueError(f"the checkpoint at step {start} is the end of the baseline run "
                         f"(total_steps={total_steps}): there is nothing to continue.")
    checkpoint = saved[start]
    default_budget = float(total_steps - start)
    if budget is None:
        budget = default_budget
    elif not _is_real(budget) or not math.isfinite(budget) or budget < default_budget:
        raise ValueError(
            f"budget must be a number >= {default_budget:g}, the plain steps the baseline "
            f"spent after the checkpoint at step {start} (the default), got {budget!r}.")
    budget = float(budget)
    stop = start + math.floor(budget / step_cost + 1e-9)
    if stop <= start:
        raise ValueError(f"a budget of {budget:g} plain-step equivalents does not pay for one "
                         f"R-Drop step (step_cost={step_cost:g}); raise budget=.")
    sign = -1.0 if higher_is_better else 1.0
    logger.info("rdrop tryout: the plateau rule fires at step %d; branching from the "
                "checkpoint at step %d (%s); R-Drop runs to step %d (budget %g plain-step "
                "equivalents), plain runs to step %d; seeds %s.",
                plateau, start, checkpoint, stop, budget, total_steps, seed_list)

    # ---- the runs
    has_test: list[bool] = []  # fixed by the first curve

    def _consistent(points: list[_Point], who: str) -> list[_Point]:
        test = points[0][2] is not None
        if has_test and has_test[0] != test:
            raise ValueError(
                f"{who}: test values are present in some curves and not in others; return "
                "(step, value, test_value) from every continue_run call, or none (with "
                "plain_from_curve=True, pass test_values= for the baseline's curve).")
        has_test[:1] = [test]
        return points

    def _run(alpha: float | None, seed: int, until: int) -> list[_Point]:
        who = f"alpha={alpha}, seed={seed}" if alpha is not None else f"plain, seed={seed}"
        points = _consistent(_curve(
            continue_run(checkpoint, alpha=alpha, seed=seed, max_steps=until),
            after=start, until=until, who=who), f"continue_run ({who})")
        best = _best(points, until=until, sign=sign)
        logger.info("rdrop tryout: %s, steps %d..%d: best validation %s.", who, start + 1,
                    until, "none finite" if best is None else f"{best[1]:.6g} at step {best[0]}")
        return points

    plain: dict[int, list[_Point]] = {}
    for seed in seed_list:
        if plain_from_curve and seed == baseline_seed:
            tests = test_values if test_values is not None else [None] * len(values)
            points = [(s, float(v), None if t is None else float(t))
                      for s, v, t in zip(steps, values, tests, strict=True)
                      if start < s <= total_steps]
            if not points:
                raise ValueError(f"the baseline's curve has no evaluation after the checkpoint "
                                 f"at step {start}; set plain_from_curve=False.")
            plain[seed] = _consistent(points, "the baseline's curve (plain_from_curve)")
        else:
            plain[seed] = _run(None, seed, total_steps)
        if _best(plain[seed], until=total_steps, sign=sign) is None:
            raise ValueError(f"the plain continuation of seed {seed} has no finite validation "
                             "value: check continue_run with alpha=None.")

    runs: dict[float, dict[int, list[_Point]]] = {}
    mean_best: dict[float, float] = {}

    def _try(alpha: float) -> None:
        runs[alpha] = {seed: _run(alpha, seed, stop) for seed in seed_list}
        bests = [_best(runs[alpha][seed], until=stop, sign=sign) for seed in seed_list]
        mean_best[alpha] = (math.nan if any(b is None for b in bests)
                            else sum(b[1] for b in bests) / len(bests))  # type: ignore[index]
        logger.info("rdrop tryout: alpha=%g: seed-mean best validation %.6g.", alpha,
                    mean_best[alpha])

    def _winner() -> float | None:
        finite = [a for a in grid if math.isfinite(mean_best[a])]
        return min(finite, key=lambda a: sign * mean_best[a]) if finite else None

    for alpha in grid:
        _try(alpha)
    def _beats(a: float, b: float) -> bool:  # strictly better seed mean (NaN never is)
        return math.isfinite(mean_best[a]) and not sign * mean_best[b] <= sign * mean_best[a]

    extensions = 0
    while len(grid) > 1 and extensions < max_extensions:
        # Extend at an edge while the edge is the best and strictly beats its neighbour.
        winner = _winner()
        if winner == grid[-1] and _beats(grid[-1], grid[-2]):
            grid.append(grid[-1] * 3.0)
            new = grid[-1]
        elif winner == grid[0] and _beats(grid[0], grid[1]):
            grid.insert(0, grid[0] / 3.0)
            new = grid[0]
        else:
            break
        logger.info("rdrop tryout: alpha=%g is best at the edge of the grid; trying %g.",
                    winner, new)
        _try(new)
        extensions += 1
    alpha = _winner()
    if alpha is None:
        raise ValueError(f"every R-Drop continuation diverged (no finite validation value for "
                         f"some seed at each alpha of {grid}); try smaller alphas.")

    # ---- the comparison
    uses_test = bool(has_test and has_test[0])
    pick = 2 if uses_test else 1
    at_limit = start + (total_steps - start) / step_cost + 1e-9  # c(s) <= T
    plain_best = {seed: _best(plain[seed], until=total_steps, sign=sign) for seed in seed_list}
    at_deltas, best_deltas, best_steps, best_compute = [], [], [], []
    best_seed, best_value = seed_list[0], math.inf
    for seed in seed_list:
        reference = plain_best[seed][pick]  # type: ignore[index]
        best = _best(runs[alpha][seed], until=stop, sign=sign)
        if sign * best[1] < best_value:  # type: ignore[index]  # the run to keep (first on a tie)
            best_seed, best_value = seed, sign * best[1]  # type: ignore[index]
        at = _best(runs[alpha][seed], until=at_limit, sign=sign)
        best_deltas.append(best[pick] - reference)  # type: ignore[index,operator]
        best_steps.append(best[0])  # type: ignore[index]
        best_compute.append((start + step_cost * (best[0] - start)) / total_steps)  # type: ignore[index]
        at_deltas.append(None if at is None else at[pick] - reference)  # type: ignore[operator]
    best_estimate = paired_interval(best_deltas)
    at_estimate = (None if any(d is None for d in at_deltas)
                   else paired_interval(at_deltas))  # type: ignore[arg-type]

    gain_higher = higher_is_better
    if uses_test and test_higher_is_better is not None:
        gain_higher = test_higher_is_better

    def _gain(e: Estimate | None) -> bool:
        return e is not None and (e.low > 0 if gain_higher else e.high < 0)

    pays_at = more_seeds = None
    if _gain(at_estimate):
        verdict, pays_at = PAYS, 1.0
    elif _gain(best_estimate):
        verdict, pays_at = PAYS, max(1.0, max(best_compute))
    else:
        spanning = [e for e in (at_estimate, best_estimate) if e is not None and e.spans_zero()]
        if spanning:
            needed = _seeds_needed(spanning[0])
            more_seeds = None if needed is None else needed - len(seed_list)
            verdict = NOT_ENOUGH_EVIDENCE
        else:
            verdict = DOES_NOT_PAY
    result = TryoutResult(
        metric_higher_is_better=higher_is_better, plateau_step=plateau, checkpoint_step=start,
        checkpoint=checkpoint, total_steps=total_steps, budget=budget,
        step_cost=float(step_cost), rdrop_stop_step=stop, seeds=tuple(seed_list), alpha=alpha,
        validation={a: mean_best[a] for a in grid},
        plain_validation=sum(p[1] for p in plain_best.values()) / len(seed_list),  # type: ignore[index]
        at_compute=at_estimate, best=best_estimate, best_steps=tuple(best_steps),
        best_compute=tuple(best_compute), verdict=verdict, pays_at=pays_at,
        more_seeds=more_seeds, uses_test=uses_test,
        test_higher_is_better=gain_higher if uses_test else None, best_seed=best_seed)
    logger.info("rdrop tryout:\n%s", result.summary())
    return result
