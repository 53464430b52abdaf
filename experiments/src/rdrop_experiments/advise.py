r"""``rdrop advise``: what R-Drop is likely to give a user's task, read from one baseline run.

The predictor is the one registered in docs/EXPERIMENTS.md ("Scale map") before the map's runs:
R-Drop's relative best-quality gain ``rel`` (positive = better) against the tuned baseline's
overfitting ``gap`` (validation minus training loss at its best-validation step), an ordinary
least-squares line :math:`rel = a + b \cdot gap` over every cell of the map that carries a
verdict (:mod:`rdrop_experiments.scale_map`). It is judged leave-one-family-out: fitted on the
other families' cells, it predicts each held-out family's cells; its mean absolute error is
compared with that of the constant "mean gain of the other families". Only a line that beats
the constant is used to print a number; otherwise ``advise`` says so and lists the map's
nearest cells by ``gap``.

A baseline run is read from a record of this suite (``rdrop run``) or from a Hugging Face
``trainer_state.json`` (``log_history`` entries with ``loss`` and ``eval_loss``). For the
latter the training loss is the Trainer's running mean in train mode (dropout on), not the
eval-mode loss of the map's ``gap``: it overstates the training loss, so the gap reads low;
``advise`` says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AdviseError", "BaselineRun", "Predictor", "advise", "fit_line", "fit_predictor",
           "predictor_markdown", "read_baseline"]


# The families the predictor was registered on (docs/EXPERIMENTS.md, "Scale map"); families
# added later (issue 17's) are shown in the map but do not move the registered fit.
REGISTERED_FAMILIES = ("image", "language-modeling", "summarization", "text-classification",
                       "translation")


class AdviseError(ValueError):
    """A baseline file ``advise`` cannot read (the message is one line saying why)."""


@dataclass(frozen=True)
class BaselineRun:
    """What ``advise`` needs from a user's baseline run.

    Attributes:
        gap: validation minus training loss at the best-validation evaluation.
        best_step: that evaluation's step; evals: evaluations in the run.
        source: ``"record"`` or ``"trainer_state"``; note: a caveat to print, or ''.
    """

    gap: float
    best_step: int
    evals: int
    source: str
    note: str = ""


@dataclass(frozen=True)
class Predictor:
    """The registered line and its leave-one-family-out check.

    Attributes:
        a, b: ``rel = a + b * gap`` fitted on every cell with a verdict.
        mae_line, mae_constant: leave-one-family-out mean absolute errors of the line and of
            the constant (mean gain of the other families).
        rmse_line: leave-one-family-out root mean square error of the line (its uncertainty).
        cells, families: how many cells and families it rests on.
    """

    a: float
    b: float
    mae_line: float
    mae_constant: float
    rmse_line: float
    cells: int
    families: int

    @property
    def beats_constant(self) -> bool:
        """Whether the line predicts held-out families better than the constant."""
        return math.isfinite(self.mae_line) and self.mae_line < self.mae_constant


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Ordinary least squares ``y = a + b x``; None with fewer than two distinct ``x``.

    Example:
        >>> fit_line([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
        (1.0, 2.0)
        >>> fit_line([1.0, 1.0], [0.0, 2.0]) is None
        True
    """
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def fit_predictor(cells: Sequence[Any]) -> Predictor | None:
    """Fit the registered predictor on ``cells`` (:class:`~rdrop_experiments.scale_map.
    MapCell`: ``family``, ``gap``, ``rel``, ``verdict_ok``) of :data:`REGISTERED_FAMILIES`
    and check it leave-one-family-out.

    Returns:
        None with fewer than two families of usable cells.
    """
    usable = [c for c in cells if c.verdict_ok and math.isfinite(c.gap) and math.isfinite(c.rel)
              and c.family in REGISTERED_FAMILIES]
    families = sorted({c.family for c in usable})
    whole = fit_line([c.gap for c in usable], [c.rel for c in usable])
    if len(families) < 2 or whole is None:
        return None
    err_line, err_const = [], []
    for fam in families:
        train = [c for c in usable if c.family != fam]
        test = [c for c in usable if c.family == fam]
        const = sum(c.rel for c in train) / len(train)
        line = fit_line([c.gap for c in train], [c.rel for c in train])
        for c in test:
            err_const.append(c.rel - const)
            err_line.append(c.rel - (line[0] + line[1] * c.gap) if line else math.nan)
    finite = [e for e in err_line if math.isfinite(e)]
    mae_line = (sum(abs(e) for e in finite) / len(finite)
                if len(finite) == len(err_line) else math.nan)
    rmse = math.sqrt(sum(e * e for e in finite) / len(finite)) if finite else math.nan
    return Predictor(whole[0], whole[1], mae_line,
                     sum(abs(e) for e in err_const) / len(err_const), rmse, len(usable),
                     len(families))


def predictor_markdown(p: Predictor | None) -> str:
    """The predictor's line and its leave-one-family-out check, for the map's report."""
    if p is None:
        return ("## Predictor\n\nFewer than two families of cells with a verdict: no "
                "predictor fitted.\n")
    verdict = ("beats" if p.beats_constant else "does NOT beat")
    return ("## Predictor (registered before the runs)\n\n"
            f"rel = {p.a:+.4f} {p.b:+.4f} x gap, over {p.cells} cells of {p.families} "
            f"families. Leave-one-family-out mean absolute error: line {100 * p.mae_line:.1f}% "
            f"vs constant {100 * p.mae_constant:.1f}%: the line {verdict} the constant.\n")


def _finite(value: Any) -> bool:
    """A real, finite number: NaN (a diverged evaluation) is never a best, nor a gap's term."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _skipped(n: int, what: str) -> str:
    return (f"note: {n} {what} with a non-finite loss (NaN or inf) left out; the best "
            "evaluation is the best finite one." if n else "")


def _from_record(rec: dict[str, Any]) -> BaselineRun:
    curves = rec.get("curves") or []
    points = [c for c in curves if "valid_loss" in c and "train_loss" in c]
    if not points:
        raise AdviseError("this record has no curve points with valid_loss and train_loss; "
                          "advise needs a run evaluated during training (rdrop run ...).")
    finite = [c for c in points if _finite(c["valid_loss"]) and _finite(c["train_loss"])]
    if not finite:
        raise AdviseError(f"every one of this record's {len(points)} curve points has a "
                          "non-finite valid_loss or train_loss (NaN or inf): the run diverged, "
                          "so it has no best evaluation to read; rerun it with a lower "
                          "learning rate.")
    step = rec.get("best_step", rec.get("extra", {}).get("best_step"))
    best = next((c for c in finite if c["step"] == step), None)
    if best is None:
        best = min(finite, key=lambda c: c["valid_loss"])
    notes = [_skipped(len(points) - len(finite), "curve point(s)")]
    if rec.get("method") != "baseline":
        notes.append(f"note: this record is a {rec.get('method')!r} run, not a baseline; the "
                     "map's gap is the baseline's.")
    return BaselineRun(float(best["valid_loss"]) - float(best["train_loss"]), int(best["step"]),
                       len(points), "record", "\n".join(n for n in notes if n))


def _from_trainer_state(state: dict[str, Any]) -> BaselineRun:
    history = state.get("log_history") or []
    evals = [h for h in history if "eval_loss" in h]
    trains = [h for h in history if "loss" in h and "step" in h and _finite(h["loss"])]
    if not evals:
        raise AdviseError("trainer_state.json has no eval_loss in its log_history: run the "
                          "Trainer with eval_strategy='steps' (or 'epoch') and an eval_dataset.")
    if not trains:
        raise AdviseError("trainer_state.json has no training loss in its log_history (none "
                          "logged, or none finite): set logging_steps so that the Trainer logs "
                          "'loss' (a run whose every logged loss is NaN diverged: lower the "
                          "learning rate).")
    finite = [h for h in evals if _finite(h["eval_loss"])]
    if not finite:
        raise AdviseError(f"every one of the {len(evals)} eval_loss values in trainer_state.json "
                          "is NaN or inf: the run diverged, so it has no best evaluation to "
                          "read; rerun it with a lower learning rate.")
    best = min(finite, key=lambda h: h["eval_loss"])
    before = [h for h in trains if h["step"] <= best["step"]] or trains[:1]
    train = before[-1]["loss"]
    notes = [_skipped(len(evals) - len(finite), "evaluation(s)"),
             "note: the Trainer's logged loss is a running mean in train mode (dropout on), so "
             "this gap reads lower than the map's eval-mode gap."]
    return BaselineRun(float(best["eval_loss"]) - float(train), int(best["step"]), len(evals),
                       "trainer_state", "\n".join(n for n in notes if n))


def read_baseline(path: str | Path) -> BaselineRun:
    """Read a baseline run: a record of this suite or a Hugging Face ``trainer_state.json``.

    Non-finite (NaN, inf) evaluation or training losses are never a best: they are left out,
    and the run's note says how many.

    Raises:
        AdviseError: a missing or unreadable file, an unknown format, or no finite evaluation
            losses.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdviseError(f"{path}: no such file.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise AdviseError(f"{path}: not a JSON file ({exc.__class__.__name__}).") from None
    if isinstance(data, dict) and "log_history" in data:
        return _from_trainer_state(data)
    if isinstance(data, dict) and "curves" in data and "experiment" in data:
        return _from_record(data)
    raise AdviseError(f"{path}: unknown format: expected a run record of `rdrop run` (with "
                      "'curves') or a Hugging Face trainer_state.json (with 'log_history').")


def advise(path: str | Path, results: str | Path = "results") -> str:
    """The advice for the baseline run at ``path`` from the map under ``results``.

    Prints the predicted relative gain with its leave-one-family-out error, the compute
    multiple and alpha of the nearest cells, and which cells it rests on; or, when the
    predictor does not beat the constant, says so and lists the nearest cells instead.

    Raises:
        AdviseError: see :func:`read_baseline`; or no map under ``results``.
    """
    from rdrop_experiments.scale_map import map_cells

    run = read_baseline(path)
    # a cell with registered runs still to go is no evidence yet
    cells = [c for c in map_cells(results) if math.isfinite(c.gap) and not c.missing_runs]
    if not cells:
        raise AdviseError(f"no map cells under {results}: run `rdrop scale` (or point "
                          "--results at a folder with records).")
    predictor = fit_predictor(cells)
    near = sorted(cells, key=lambda c: abs(c.gap - run.gap))[:3]
    lines = [f"baseline: valid - train loss at its best evaluation (step {run.best_step}, "
             f"{run.evals} evaluations) = {run.gap:.3f} nats"]
    if run.note:
        lines.append(run.note)
    if predictor is not None and predictor.beats_constant:
        rel = predictor.a + predictor.b * run.gap
        lines.append(f"predicted R-Drop gain at its best: {100 * rel:+.1f}% relative "
                     f"(± {100 * predictor.rmse_line:.1f}%, leave-one-family-out RMS error; "
                     f"line over {predictor.cells} cells of {predictor.families} families)")
    else:
        why = ("too few families of cells" if predictor is None else
               f"its leave-one-family-out error {100 * predictor.mae_line:.1f}% is not below "
               f"the constant's {100 * predictor.mae_constant:.1f}%")
        lines.append(f"no prediction: the registered predictor (gain vs gap) does not beat the "
                     f"constant 'mean gain' ({why}). The nearest cells of the map instead:")
    costs = [c.compute_to_best for c in near if math.isfinite(c.compute_to_best)]
    alphas = [c.alpha for c in near if math.isfinite(c.alpha)]
    if costs:
        lines.append(f"compute to R-Drop's best in the nearest cells: "
                     f"{min(costs):.1f}x-{max(costs):.1f}x the baseline's")
    if alphas:
        lines.append(f"alpha to start from: {sorted(alphas)[len(alphas) // 2]:g} (the nearest "
                     f"cells chose {', '.join(f'{a:g}' for a in alphas)}); tune it on validation")
    lines.append("nearest cells (by gap):")
    for c in near:
        lines.append(f"  {c.name}: gap {c.gap:.3f}, R-Drop {100 * c.rel:+.1f}% relative "
                     f"(Δ {c.best:+.2f} [{c.best_low:+.2f}, {c.best_high:+.2f}] {c.metric}), "
                     f"at the baseline's compute Δ {c.equal:+.2f}, "
                     f"{'baseline overfit' if c.overfit else 'baseline did not overfit'}")
    return "\n".join(lines)
