r"""``rdrop advise``: how to measure R-Drop on a user's own run, read from one baseline run.

The scale map's predictor does not beat a constant (:mod:`rdrop_experiments.predictor`), so a
map of small cells cannot say whether R-Drop pays on a user's task. A measurement on the user's
own run can: ``advise`` finds where the registered plateau rule (:class:`rdrop.PlateauStart`)
fires on the run's validation curve, the saved checkpoint to branch from, and prints the tryout
command (``rdrop tryout RECORD`` for a record of this suite; ``rdrop.integrations.hf.tryout``
for a Hugging Face ``output_dir``). Where a scale map is at hand (``--results``) the nearest
cells by overfitting gap are listed as context, not as a prediction.

A baseline run is read from a record of this suite (``rdrop run``) or from a Hugging Face
``trainer_state.json`` (``log_history`` entries with ``loss`` and ``eval_loss``; the
``checkpoint-*`` folders beside it). For the latter the training loss is the Trainer's running
mean in train mode (dropout on), not the eval-mode loss of the map's ``gap``: it overstates the
training loss, so the gap reads low; ``advise`` says so. It works from any folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdrop.training.autostart import PLATEAU_FRACTION, PLATEAU_WINDOW, plateau_step
from rdrop_experiments.design import Design
from rdrop_experiments.formatting import ci, percent, signed

__all__ = ["AdviseError", "BaselineRun", "advise", "read_baseline"]


class AdviseError(ValueError):
    """A baseline file ``advise`` cannot read (the message is one line saying why)."""


@dataclass(frozen=True)
class BaselineRun:
    """What ``advise`` needs from a user's baseline run.

    Attributes:
        gap: validation minus training loss at the best-validation evaluation.
        best_step: that evaluation's step; evals: evaluations in the run.
        source: ``"record"`` or ``"trainer_state"``; note: a caveat to print, or ''.
        steps, values, higher_is_better: the validation curve the plateau rule reads (the
            record's selection metric; the Trainer's ``eval_loss``).
        checkpoints: the optimizer steps of the saved checkpoints (``checkpoint-*`` beside a
            ``trainer_state.json``); empty for a record (the tryout reruns to the branch).
    """

    gap: float
    best_step: int
    evals: int
    source: str
    note: str = ""
    steps: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    higher_is_better: bool = False
    checkpoints: tuple[int, ...] = ()

    @property
    def plateau_step(self) -> int | None:
        """Where the registered plateau rule fires on this run's validation curve (None: not
        yet)."""
        return plateau_step(self.values, self.steps, higher_is_better=self.higher_is_better)


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
    key = rec.get("extra", {}).get("selection_metric", "valid_loss")
    curve = [c for c in curves if key in c]
    higher = bool(rec.get("extra", {}).get("selection_higher_is_better",
                                           rec.get("higher_is_better", False)))
    return BaselineRun(float(best["valid_loss"]) - float(best["train_loss"]), int(best["step"]),
                       len(points), "record", "\n".join(n for n in notes if n),
                       tuple(int(c["step"]) for c in curve), tuple(float(c[key]) for c in curve),
                       higher)


def _from_trainer_state(state: dict[str, Any], folder: Path) -> BaselineRun:
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
    saved = sorted(int(p.name.split("-")[-1]) for p in folder.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[-1].isdigit())
    return BaselineRun(float(best["eval_loss"]) - float(train), int(best["step"]), len(evals),
                       "trainer_state", "\n".join(n for n in notes if n),
                       tuple(int(h["step"]) for h in evals),
                       tuple(float(h["eval_loss"]) for h in evals), False, tuple(saved))


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
        return _from_trainer_state(data, path.parent)
    if isinstance(data, dict) and "curves" in data and "experiment" in data:
        return _from_record(data)
    raise AdviseError(f"{path}: unknown format: expected a run record of `rdrop run` (with "
                      "'curves') or a Hugging Face trainer_state.json (with 'log_history').")


def advise(path: str | Path, results: str | Path | None = None,
           design: Design | None = None) -> str:
    """How to measure R-Drop on the baseline run at ``path``: where the plateau rule fires, the
    checkpoint to branch from, and the tryout command; with ``results`` holding a scale map, the
    map's nearest cells as context (``design``: the registered cells' missing runs, so that an
    incomplete cell is left out).

    Raises:
        AdviseError: see :func:`read_baseline`.
    """
    path = Path(path)
    run = read_baseline(path)
    lines = [f"baseline: valid - train loss at its best evaluation (step {run.best_step}, "
             f"{run.evals} evaluations) = {run.gap:.3f} nats"]
    if run.note:
        lines.append(run.note)
    rule = f"rdrop.PlateauStart, window {PLATEAU_WINDOW}, fraction {PLATEAU_FRACTION}"
    start = run.plateau_step
    if start is None:
        lines.append(f"plateau: not reached in these {run.evals} evaluations ({rule}): train "
                     "longer, or evaluate more often, then run advise again.")
    else:
        lines.append(f"plateau: the registered rule ({rule}) fires at step {start} (best "
                     f"validation at step {run.best_step}): R-Drop from there is what to try.")
    if run.source == "trainer_state":
        folder = path.parent
        before = [c for c in run.checkpoints if start is not None and c <= start]
        if not run.checkpoints:
            lines.append(f"checkpoints: none in {folder}; the tryout branches from one, so "
                         "rerun the baseline with save_strategy='steps' (or 'epoch').")
        elif start is not None and not before:
            lines.append(f"checkpoints: none saved at or before step {start} (saved: "
                         f"{', '.join(map(str, run.checkpoints))}); save more often.")
        elif start is not None:
            lines.append(f"branch from: {folder / f'checkpoint-{before[-1]}'}")
        lines.append("measure it on your run (2 seeds, within the compute your baseline spent "
                     "after that point):")
        lines.append(f"  python: rdrop.integrations.hf.tryout(make_trainer, {str(folder)!r})")
    else:
        lines.append("measure it on your run (2 seeds, within the compute your baseline spent "
                     "after that point):")
        lines.append(f"  rdrop tryout {path}")
    if results is not None and Path(results).is_dir():
        lines.extend(_map_context(run, results, design))
    return "\n".join(lines)


def _map_context(run: BaselineRun, results: str | Path, design: Design | None) -> list[str]:
    """The scale map's nearest cells by gap (context for the tryout, not a prediction)."""
    from rdrop_experiments import scale_map  # reads every record: only when a map is asked for

    cells = [c for c in scale_map.map_cells(results, design)
             if math.isfinite(c.gap) and not c.missing_runs]
    if not cells:
        return []
    lines = ["for context, the scale map's nearest cells (by gap; the map does not predict "
             "a user's gain):"]
    for c in sorted(cells, key=lambda c: abs(c.gap - run.gap))[:3]:
        lines.append(f"  {c.name}: gap {c.gap:.3f}, R-Drop {percent(c.rel)} relative "
                     f"(Δ {ci(c.best, c.best_low, c.best_high)} {c.metric}), "
                     f"at the baseline's compute Δ {signed(c.equal)}, alpha {c.alpha:g}")
    return lines
