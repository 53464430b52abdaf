"""rdrop.tryout, the plain-PyTorch tryout: synthetic continuations with known outcomes, the
verdicts field by field against values computed here by hand (float64), the checkpoint choice, the
alpha-edge extension, the paired t interval, and every bad input refused with its message."""

from __future__ import annotations

import logging
import math

import pytest

import rdrop
from rdrop.training.tryout import (
    DOES_NOT_PAY,
    NOT_ENOUGH_EVIDENCE,
    PAYS,
    Estimate,
    TryoutResult,
    paired_interval,
    t_quantile,
)

# The baseline: evaluations every 10 steps, 100 steps; the registered rule (W=3, q=0.25) fires
# at step 60: bests 3.0, 2.0, 1.6, 1.45, 1.40, 1.38 -> 1.6 - 1.38 = 0.22 <= 0.25 * 1.62.
STEPS = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
VALUES = [3.0, 2.0, 1.6, 1.45, 1.40, 1.38, 1.37, 1.36, 1.36, 1.35]
SAVED = {25: "ckpt-25", 50: "ckpt-50", 75: "ckpt-75"}
T = 100
APPROX = dict(rel=1e-12, abs=1e-15)


class Runs:
    """A continue_run evaluating every 5 steps after the checkpoint: ``plain(seed, s)`` and
    ``rdrop(alpha, seed, s)`` give the values; every call is recorded."""

    def __init__(self, plain, rdrop_value, test=None):
        self.plain, self.rdrop, self.test = plain, rdrop_value, test
        self.calls = []

    def __call__(self, checkpoint, *, alpha, seed, max_steps):
        self.calls.append((checkpoint, alpha, seed, max_steps))
        start = int(checkpoint.split("-")[1])
        points = []
        for s in range(start + 5, max_steps + 1, 5):
            v = self.plain(seed, s) if alpha is None else self.rdrop(alpha, seed, s)
            points.append((s, v) if self.test is None else (s, v, self.test(alpha, seed, s)))
        return points


def _plain(seed, s):  # improves slowly to the end: best 0.95 at step 100, every seed
    return 1.0 - 0.001 * (s - 50)


# ------------------------------------------------------------------------------- verdicts
def test_a_case_that_pays_at_your_compute():
    gains = {1.0: 0.05, 10.0: 0.08, 30.0: 0.06}  # best at 10; the extension to 30 turns
    runs = Runs(_plain, lambda a, seed, s: _plain(seed, s) - gains[a] * (1 + 0.1 * seed))
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs)
    assert isinstance(result, TryoutResult)
    assert (result.plateau_step, result.checkpoint_step, result.checkpoint) == (60, 50, "ckpt-50")
    assert (result.total_steps, result.budget, result.step_cost) == (100, 50.0, 2.0)
    assert result.rdrop_stop_step == 75 and result.seeds == (0, 1)
    assert result.alpha == 10.0
    # R-Drop's best is at its last step, 75: 0.975 - gain * (1 + 0.1 seed).
    expected = {a: ((0.975 - g) + (0.975 - 1.1 * g)) / 2 for a, g in gains.items()}
    assert list(result.validation) == [1.0, 10.0, 30.0]
    for a in expected:
        assert result.validation[a] == pytest.approx(expected[a], **APPROX)
    assert result.plain_validation == pytest.approx(0.95, **APPROX)
    d = [0.975 - 0.08 - 0.95, 0.975 - 0.088 - 0.95]  # -0.055, -0.063
    mean = (d[0] + d[1]) / 2
    sd = math.sqrt(((d[0] - mean) ** 2 + (d[1] - mean) ** 2) / 1)
    half = 12.7062 * sd / math.sqrt(2)
    for estimate in (result.at_compute, result.best):
        assert estimate.per_seed == pytest.approx(d, **APPROX)
        assert estimate.mean == pytest.approx(mean, **APPROX)
        assert estimate.sd == pytest.approx(sd, **APPROX)
        assert (estimate.low, estimate.high) == pytest.approx((mean - half, mean + half),
                                                              **APPROX)
    assert result.best_steps == (75, 75) and result.best_compute == (1.0, 1.0)
    assert (result.verdict, result.pays_at, result.more_seeds) == (PAYS, 1.0, None)
    assert result.uses_test is False
    assert "verdict: it pays: use alpha 10 from step 50, at your compute" in result.summary()
    # Two plain runs to the baseline's end, three alphas x two seeds to step 75.
    assert sorted(c for c in runs.calls if c[1] is None) == [
        ("ckpt-50", None, 0, 100), ("ckpt-50", None, 1, 100)]
    assert sorted((c[1], c[2], c[3]) for c in runs.calls if c[1] is not None) == [
        (a, seed, 75) for a in (1.0, 10.0, 30.0) for seed in (0, 1)]


def test_a_case_that_does_not_pay_and_the_downward_extension():
    # Worse with any alpha, least with the smallest: the grid grows below 1 three times.
    runs = Runs(_plain, lambda a, seed, s: _plain(seed, s) + (0.05 + 0.001 * a) * (1 + 0.1 * seed))
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs)
    assert list(result.validation) == pytest.approx([1 / 27, 1 / 9, 1 / 3, 1.0, 10.0], **APPROX)
    assert result.alpha == pytest.approx(1 / 27, **APPROX)
    penalty = 0.05 + 0.001 / 27
    d = [0.975 + penalty - 0.95, 0.975 + 1.1 * penalty - 0.95]
    assert result.at_compute.per_seed == pytest.approx(d, **APPROX)
    assert result.at_compute.low > 0  # the whole interval on the losing side
    assert (result.verdict, result.pays_at, result.more_seeds) == (DOES_NOT_PAY, None, None)
    assert "verdict: it does not pay" in result.summary()


def test_too_few_seeds_is_not_enough_evidence_with_the_seeds_it_would_take():
    # Flat continuations: every alpha ties (no extension, the smallest chosen), and the
    # differences are -0.01 and -0.03: mean -0.02, sd 0.01 * sqrt(2).
    deltas = {0: -0.01, 1: -0.03}
    runs = Runs(lambda seed, s: 0.95, lambda a, seed, s: 0.95 + deltas[seed])
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs)
    assert result.alpha == 1.0 and list(result.validation) == [1.0, 10.0]
    assert result.at_compute.mean == pytest.approx(-0.02, **APPROX)
    assert result.at_compute.spans_zero()
    # By hand, t sd / sqrt(n) < 0.02 with sd = 0.014142: n=4: 3.1824 * 0.014142 / 2 = 0.0225;
    # n=5: 2.7764 * 0.014142 / 2.2361 = 0.01756. Five seeds in all: three more.
    assert (result.verdict, result.pays_at, result.more_seeds) == (NOT_ENOUGH_EVIDENCE, None, 3)
    assert "about 3 more seeds would settle it (5 in all)" in result.summary()


def test_more_seeds_beyond_the_t_table_and_for_a_mean_of_zero():
    # Δ = +0.01, -0.03: mean -0.01, sd 0.04 / sqrt(2). By hand: n = 31 gives 2.0423 * sd /
    # sqrt(31) = 0.010375 >= 0.01; n = 32 (df 31: the normal 1.959964) gives 0.0098 < 0.01.
    sd = 0.04 / math.sqrt(2)
    assert 2.0423 * sd / math.sqrt(31) > 0.01 > 1.959964 * sd / math.sqrt(32)
    deltas = {0: 0.01, 1: -0.03}
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, Runs(lambda seed, s: 0.5,
                                                        lambda a, seed, s: 0.5 + deltas[seed]))
    assert (result.verdict, result.more_seeds) == (NOT_ENOUGH_EVIDENCE, 30)
    # Δ = +0.25, -0.25 (exact in binary): a mean of exactly 0 is never settled by more seeds.
    deltas = {0: 0.25, 1: -0.25}
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, Runs(lambda seed, s: 0.5,
                                                        lambda a, seed, s: 0.5 + deltas[seed]))
    assert result.at_compute.mean == 0.0
    assert (result.verdict, result.more_seeds) == (NOT_ENOUGH_EVIDENCE, None)
    assert "a mean of exactly 0" in result.summary()


def test_it_pays_only_with_more_compute_when_the_budget_is_raised():
    # R-Drop gains only after 40 of its steps; a budget of 150 plain-step equivalents after the
    # checkpoint runs it to step 125 (compute 50 + 2 * 75 = 200, twice the baseline's).
    def rdrop_value(a, seed, s):
        return 0.95 + (0.0 if s < 90 else -0.05 - 0.001 * seed - 0.0001 * a)

    runs = Runs(lambda seed, s: 0.95, rdrop_value)
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs, budget=150, max_extensions=0)
    assert result.rdrop_stop_step == 125 and result.budget == 150.0
    assert result.alpha == 10.0
    # At your compute (steps <= 75) R-Drop sits at 0.95, the plain best: Δ exactly 0.
    assert result.at_compute.per_seed == (0.0, 0.0)
    assert result.best_steps == (90, 90)  # the first of the equal best values
    assert result.best_compute == pytest.approx((1.3, 1.3), **APPROX)  # (50 + 2 * 40) / 100
    assert result.best.per_seed == pytest.approx([-0.051, -0.052], **APPROX)
    assert (result.verdict, result.pays_at) == (PAYS, pytest.approx(1.3, **APPROX))
    assert "at 1.30x your compute" in result.summary()


def test_higher_is_better_turns_the_gain_side():
    acc = [0.5, 0.6, 0.7, 0.75, 0.77, 0.78, 0.785, 0.79, 0.79, 0.795]
    runs = Runs(lambda seed, s: 0.80, lambda a, seed, s: 0.82 + 0.001 * seed)
    result = rdrop.tryout(STEPS, acc, SAVED, T, runs, higher_is_better=True, alphas=(1.0,))
    assert result.metric_higher_is_better and result.plateau_step == 70
    assert result.checkpoint_step == 50
    assert result.at_compute.per_seed == pytest.approx([0.02, 0.021], **APPROX)
    assert (result.verdict, result.pays_at) == (PAYS, 1.0)


def test_test_values_are_compared_at_the_evaluation_chosen_on_validation():
    # Validation is best at the last step; the test value there (not the best test value) counts.
    def test_value(a, seed, s):
        return 0.5 - (0.01 if a is not None else 0.0) + (0.1 if s == 55 else 0.0)

    runs = Runs(_plain, lambda a, seed, s: _plain(seed, s) - 0.01 * (1 + seed), test_value)
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs, alphas=(1.0,))
    assert result.uses_test
    assert result.at_compute.per_seed == pytest.approx([-0.01, -0.01], **APPROX)
    assert "on test values" in result.summary()


def test_a_test_metric_with_its_own_direction_decides_the_gain_side():
    # Chosen on a validation loss (lower is better), reported in a score (higher is better):
    # R-Drop's test score is 0.02 higher on both seeds, a gain only when the test direction is
    # the score's.
    def test_value(a, seed, s):
        return 0.30 + (0.02 + 0.001 * seed if a is not None else 0.0)

    def make_runs():
        return Runs(_plain, lambda a, seed, s: _plain(seed, s) - 0.01 * (1 + seed), test_value)

    score = rdrop.tryout(STEPS, VALUES, SAVED, T, make_runs(), alphas=(1.0,),
                         test_higher_is_better=True)
    assert score.at_compute.per_seed == pytest.approx([0.02, 0.021], **APPROX)
    assert (score.verdict, score.test_higher_is_better) == (PAYS, True)
    assert "higher is better" in score.summary().splitlines()[0]
    as_loss = rdrop.tryout(STEPS, VALUES, SAVED, T, make_runs(), alphas=(1.0,))
    assert as_loss.verdict == DOES_NOT_PAY and as_loss.test_higher_is_better is False
    with pytest.raises(TypeError, match="test_higher_is_better must be a bool or None"):
        rdrop.tryout(STEPS, VALUES, SAVED, T, make_runs(), test_higher_is_better="yes")


def test_the_best_seed_is_the_r_drop_run_with_the_best_validation_value():
    # seed 1 goes lowest (1.35 - 0.02 against 1.35 - 0.01 for seed 0)
    runs = Runs(_plain, lambda a, seed, s: _plain(seed, s) - 0.01 * (1 + seed))
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs, alphas=(1.0,))
    assert result.best_seed == 1 and result.best_model is None
    step = result.best_steps[1]
    assert f"best R-Drop model: alpha 1, seed 1, step {step}" in result.summary()


# ---------------------------------------------------------------------- checkpoint choice
def test_the_checkpoint_is_the_last_saved_at_or_before_the_plateau():
    runs = Runs(_plain, lambda a, seed, s: _plain(seed, s) - 0.01 * (1 + seed))
    # A list of pairs; one exactly at the plateau step (60) wins over earlier ones.
    result = rdrop.tryout(STEPS, VALUES, [(10, "ckpt-10"), (60, "ckpt-60"), (70, "ckpt-70")],
                          T, runs, alphas=(1.0,))
    assert (result.checkpoint_step, result.checkpoint) == (60, "ckpt-60")
    assert result.budget == 40.0 and result.rdrop_stop_step == 80
    assert {c[0] for c in runs.calls} == {"ckpt-60"}


def test_the_baseline_seed_plain_run_comes_from_the_curve():
    runs = Runs(_plain, lambda a, seed, s: 1.30 - 0.01 * (seed - 6))
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs, alphas=(1.0,), baseline_seed=7,
                          plain_from_curve=True, seeds=3)
    assert result.seeds == (7, 8, 9)
    assert sorted(c[2] for c in runs.calls if c[1] is None) == [8, 9]  # 7 is not rerun
    # Seed 7's plain best after step 50 is the baseline's own: 1.35 at step 100.
    assert result.at_compute.per_seed[0] == pytest.approx(1.29 - 1.35, **APPROX)
    assert result.at_compute.per_seed[1:] == pytest.approx([1.28 - 0.95, 1.27 - 0.95], **APPROX)


def test_progress_is_logged(caplog):
    runs = Runs(_plain, lambda a, seed, s: _plain(seed, s) - 0.01 * (1 + seed))
    with caplog.at_level(logging.INFO, logger="rdrop"):
        rdrop.tryout(STEPS, VALUES, SAVED, T, runs, alphas=(1.0,))
    text = caplog.text
    assert "branching from the checkpoint at step 50" in text
    assert "plain, seed=0, steps 51..100" in text and "verdict:" in text


# ------------------------------------------------------------------------- alpha search
@pytest.mark.parametrize(("turn", "expected"), [
    (None, [1.0, 10.0, 30.0, 90.0, 270.0]),  # keeps improving: three extensions, then stop
    (90.0, [1.0, 10.0, 30.0, 90.0]),  # 90 is worse than 30: validation turned
])
def test_the_grid_grows_at_the_upper_edge_while_validation_improves(turn, expected):
    def rdrop_value(a, seed, s):
        worse = turn is not None and a >= turn
        return 0.9 - (0.0 if worse else 0.001 * math.log(a + 1)) - 0.001 * seed

    runs = Runs(_plain, rdrop_value)
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs)
    assert list(result.validation) == expected
    assert result.alpha == (270.0 if turn is None else 30.0)


def test_no_extension_with_one_alpha_or_max_extensions_0():
    runs = Runs(_plain, lambda a, seed, s: 0.9 - 0.001 * a - 0.001 * seed)
    assert list(rdrop.tryout(STEPS, VALUES, SAVED, T, runs, alphas=(10.0,)).validation) == [10.0]
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs, max_extensions=0)
    assert list(result.validation) == [1.0, 10.0] and result.alpha == 10.0


def test_a_diverged_alpha_is_never_chosen_and_stops_the_extension():
    runs = Runs(_plain, lambda a, seed, s: math.nan if a > 10 else 0.9 - 0.001 * a - 0.01 * seed)
    result = rdrop.tryout(STEPS, VALUES, SAVED, T, runs)
    assert list(result.validation) == [1.0, 10.0, 30.0] and math.isnan(result.validation[30.0])
    assert result.alpha == 10.0


# -------------------------------------------------------------------------- the interval
def test_the_t_interval_against_hand_computed_values():
    e = paired_interval([-1.0, -3.0])  # mean -2, sd sqrt(2), se 1, t(1) = 12.7062
    assert (e.mean, e.sd) == (-2.0, math.sqrt(2.0))
    assert (e.low, e.high) == pytest.approx((-14.7062, 10.7062), **APPROX)
    # k = 3: mean 0.3, sd sqrt(0.14 / 2), half = 4.3027 * sd / sqrt(3) = 0.657248...
    e = paired_interval([0.1, 0.2, 0.6])
    assert e.mean == pytest.approx(0.3, **APPROX)
    assert e.sd == pytest.approx(math.sqrt(0.07), **APPROX)
    half = 4.3027 * math.sqrt(0.07) / math.sqrt(3.0)
    assert half == pytest.approx(0.6572483, abs=1e-7)
    assert (e.low, e.high) == pytest.approx((0.3 - half, 0.3 + half), **APPROX)
    assert isinstance(e, Estimate) and e.spans_zero()


def test_t_quantiles_table_then_normal():
    assert [t_quantile(df) for df in (1, 2, 5, 10, 30)] == [12.7062, 4.3027, 2.5706, 2.2281,
                                                            2.0423]
    assert t_quantile(31) == t_quantile(10_000) == pytest.approx(1.959964, abs=1e-6)
    assert all(t_quantile(df) > t_quantile(df + 1) for df in range(1, 30))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="df must be an int >= 1"):
            t_quantile(bad)
    with pytest.raises(ValueError, match="at least 2 differences"):
        paired_interval([1.0])


# --------------------------------------------------------------------------- bad inputs
def _good(**overrides):
    kwargs = dict(steps=STEPS, values=VALUES, checkpoints=SAVED, total_steps=T,
                  continue_run=Runs(_plain, lambda a, seed, s: 0.9))
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (dict(total_steps=0), ValueError, "total_steps must be an int >= 1"),
    (dict(total_steps=90), ValueError, "reaches step 100, beyond total_steps=90"),
    (dict(higher_is_better=1), TypeError, "higher_is_better must be a bool"),
    (dict(continue_run="train.py"), TypeError, "continue_run must be a function"),
    (dict(steps=[10.0] * 10), TypeError, "steps must be ints"),
    (dict(steps=STEPS[:-1]), ValueError, "one entry per evaluation"),
    (dict(test_values=[1.0]), ValueError, "test_values must hold one number per evaluation"),
    (dict(checkpoints={}), ValueError, "no checkpoints given"),
    (dict(checkpoints="ckpt-50"), TypeError, "checkpoints must map optimizer steps"),
    (dict(checkpoints=[(50, "a", "b")]), TypeError, "(optimizer step, checkpoint) pairs"),
    (dict(checkpoints={500: "x"}), ValueError, "checkpoint step 500 is outside the baseline"),
    (dict(checkpoints=[(50, "a"), (50, "b")]), ValueError, "checkpoint step 50 is given twice"),
    (dict(step_cost=0.0), ValueError, "step_cost must be a finite number > 0"),
    (dict(alphas=()), ValueError, "alphas must be one or more finite numbers > 0"),
    (dict(alphas=(0.0, 1.0)), ValueError, "alpha 0 is the plain run"),
    (dict(alphas=(math.nan,)), ValueError, "alphas must be one or more finite numbers > 0"),
    (dict(alphas=(1.0, 1.0)), ValueError, "alphas must be distinct"),
    (dict(max_extensions=-1), ValueError, "max_extensions must be an int >= 0"),
    (dict(seeds=1), ValueError, "at least 2 seeds"),
    (dict(seeds=True), TypeError, "seeds must be a count"),
    (dict(seeds=[3, 3]), ValueError, "seeds must be distinct"),
    (dict(seeds=[1, 2], baseline_seed=7), ValueError, "baseline_seed=7 is not among seeds"),
    (dict(baseline_seed="7"), TypeError, "baseline_seed must be an int or None"),
    (dict(plain_from_curve=True), ValueError, "plain_from_curve=True takes the baseline's own"),
    (dict(plain_from_curve=1), TypeError, "plain_from_curve must be a bool"),
    (dict(budget=10), ValueError, "budget must be a number >= 50, the plain steps the baseline"),
    (dict(budget=math.inf), ValueError, "budget must be a number >= 50"),
])
def test_bad_arguments_are_refused(overrides, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        rdrop.tryout(**_good(**overrides))


def test_a_curve_with_no_plateau_yet_is_refused():
    linear = [10.0 - i for i in range(8)]  # recent = W, total = i: fires only from i = 12
    with pytest.raises(ValueError, match=r"no plateau yet up to step 80 \(8 evaluations\).*"
                                         r"Train longer or raise fraction"):
        rdrop.tryout(**_good(steps=STEPS[:8], values=linear))


def test_no_checkpoint_before_the_plateau_is_refused_with_the_saved_steps():
    with pytest.raises(ValueError, match=r"no checkpoint at or before the plateau step 60; "
                                         r"saved steps: \[70, 100\]"):
        rdrop.tryout(**_good(checkpoints={100: "end", 70: "late"}))


def test_nothing_to_continue_or_no_budget_for_one_step_is_refused():
    values = [3.0, 2.0, 1.6, 1.45, 1.40, 1.38]  # fires at its last evaluation, step 60
    with pytest.raises(ValueError, match="the checkpoint at step 60 is the end of the baseline"):
        rdrop.tryout(**_good(steps=STEPS[:6], values=values, checkpoints={60: "c"},
                             total_steps=60))
    with pytest.raises(ValueError, match="does not pay for one R-Drop step"):
        rdrop.tryout(**_good(steps=STEPS[:6], values=values, checkpoints={60: "c"},
                             total_steps=61))


@pytest.mark.parametrize(("returned", "error", "message"), [
    ("1.0", TypeError, "must return a list of"),
    (None, TypeError, "must return a list of"),
    ([(55, "x")], TypeError, "with an int step"),
    ([(55.0, 1.0)], TypeError, "with an int step"),
    ([(55, 1.0, 2.0, 3.0)], TypeError, "with an int step"),
    ([(50, 1.0)], ValueError, "at step 50, outside the continuation"),
    ([(500, 1.0)], ValueError, "at step 500, outside the continuation"),
    ([(60, 1.0), (55, 1.0)], ValueError, "steps that do not increase"),
    ([], ValueError, "returned no evaluation after the checkpoint step 50"),
    ([(55, 1.0), (60, 1.0, 0.5)], ValueError, "a test value for some evaluations and not"),
])
def test_a_bad_continuation_is_refused(returned, error, message):
    with pytest.raises(error, match=message):
        rdrop.tryout(**_good(continue_run=lambda *a, **k: returned))


def test_test_values_in_some_curves_only_are_refused():
    def continue_run(checkpoint, *, alpha, seed, max_steps):
        return [(55, 1.0)] if alpha is None else [(55, 1.0, 0.5)]

    with pytest.raises(ValueError, match="present in some curves and not in others"):
        rdrop.tryout(**_good(continue_run=continue_run))
    with pytest.raises(ValueError, match="pass test_values="):
        rdrop.tryout(**_good(continue_run=lambda *a, **k: [(55, 1.0, 0.5)], baseline_seed=0,
                             plain_from_curve=True))


def test_a_plain_run_without_a_finite_value_or_every_alpha_diverged_is_refused():
    with pytest.raises(ValueError, match="plain continuation of seed 0 has no finite"):
        rdrop.tryout(**_good(continue_run=Runs(lambda seed, s: math.nan, lambda a, seed, s: 1.0)))
    with pytest.raises(ValueError, match="every R-Drop continuation diverged"):
        rdrop.tryout(**_good(continue_run=Runs(_plain, lambda a, seed, s: math.inf)))
