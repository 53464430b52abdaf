"""Try R-Drop on your own Hugging Face run first: :func:`tryout` branches from the baseline's
checkpoint at its plateau and measures R-Drop against plain continuations (:func:`rdrop.tryout`).

It reads the baseline's ``output_dir`` (``checkpoint-*/`` folders, ``trainer_state.json`` with
the evaluations in ``log_history``) and builds each continuation with the user's own
``make_trainer(overrides)``, resuming model, optimizer, scheduler and RNG state by
``trainer.train(resume_from_checkpoint=...)`` from a copy of the checkpoint in a new folder. The
user's ``output_dir`` is only read. Weights are read with safetensors or
``torch.load(weights_only=True)`` only (here to compare the checkpoint with the model; the
Trainer's own resume does the same).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from rdrop.training.autostart import PLATEAU_FRACTION, PLATEAU_WINDOW
from rdrop.training.tryout import TryoutResult
from rdrop.training.tryout import tryout as _tryout

from .trainer import RDropTrainerMixin

__all__ = ["Baseline", "best_model_dir", "check_checkpoint_matches", "make_continue_run",
           "read_baseline", "tryout"]

logger = logging.getLogger("rdrop")

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_RNG = re.compile(r"^rng_state(_\d+)?\.pth$")


# ----------------------------------------------------------------------------- the baseline
@dataclass(frozen=True)
class Baseline:
    """What the tryout reads from a finished run's ``output_dir`` (read only).

    Attributes:
        output_dir: the folder.
        checkpoints: ``{optimizer step: checkpoint folder}``.
        steps, values: the evaluations of ``metric`` in ``log_history`` (the first per step).
        metric: the ``log_history`` key (``eval_...``).
        total_steps: the optimizer steps the baseline ran (``global_step``).
        max_steps: the steps its learning-rate schedule was built for (``max_steps``).
    """

    output_dir: Path
    checkpoints: dict[int, Path]
    steps: list[int]
    values: list[float]
    metric: str
    total_steps: int
    max_steps: int


def _metric_key(metric: str) -> str:
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"metric must be the name of an evaluation metric (e.g. 'eval_loss'), "
                        f"got {metric!r}.")
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def read_baseline(output_dir: str | os.PathLike[str], metric: str = "eval_loss") -> Baseline:
    """Read a finished baseline's checkpoints and validation curve from its ``output_dir``.

    The curve comes from the most advanced ``trainer_state.json`` (the one in ``output_dir``,
    written by ``trainer.save_state()``, or the last checkpoint's).

    Raises:
        ValueError: no such folder; no ``checkpoint-*/`` folders; no ``trainer_state.json``;
            a ``log_history`` without evaluations (set ``eval_strategy``) or without ``metric``.
    """
    key = _metric_key(metric)
    root = Path(output_dir)
    if not root.is_dir():
        raise ValueError(f"output_dir {str(root)!r} is not a folder: pass the baseline run's "
                         "TrainingArguments.output_dir.")
    checkpoints = {int(m.group(1)): p for p in root.iterdir()
                   if p.is_dir() and (m := _CHECKPOINT.match(p.name))}
    if not checkpoints:
        raise ValueError(
            f"no checkpoints in {str(root)!r} (no checkpoint-*/ folders): the tryout branches "
            "from a saved checkpoint of the baseline. Train the baseline with save_strategy="
            "'steps' (with save_steps) or 'epoch', keeping the checkpoints (save_total_limit "
            "None or large enough).")
    found = None  # the most advanced trainer state; output_dir's own on a tie
    for path in [*(p / "trainer_state.json" for _, p in sorted(checkpoints.items())),
                 root / "trainer_state.json"]:
        if path.is_file():
            with open(path) as f:
                state = json.load(f)
            if found is None or int(state.get("global_step", 0)) >= found[0]:
                found = (int(state.get("global_step", 0)), state, path)
    if found is None:
        raise ValueError(f"no trainer_state.json in {str(root)!r} or its checkpoints: the "
                         "tryout reads the baseline's evaluations from it.")
    global_step, state, state_path = found
    if global_step < 1:
        raise ValueError(f"{state_path} reports no training steps (global_step 0).")
    history = state.get("log_history") or []
    evals = [e for e in history if any(str(k).startswith("eval_") for k in e)]
    if not evals:
        raise ValueError(
            f"{state_path} holds no evaluation metrics (no eval_* entries in log_history): the "
            "tryout finds the plateau on the validation curve. Train the baseline with "
            "eval_strategy='steps' (with eval_steps) or 'epoch', and an eval_dataset.")
    curve: dict[int, float] = {}
    for entry in evals:
        if key in entry and "step" in entry:
            curve.setdefault(int(entry["step"]), float(entry[key]))  # the first per step
    if not curve:
        found = sorted({k for e in evals for k in e if str(k).startswith("eval_")})
        raise ValueError(f"{state_path}: the evaluations have no {key!r}; they report "
                         f"{found}. Pass metric= one of those.")
    steps = sorted(curve)
    return Baseline(root, checkpoints, steps, [curve[s] for s in steps], key, global_step,
                    int(state.get("max_steps") or global_step))


# ------------------------------------------------------------------- one continuation run
def _saved_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]] | None:
    """Parameter names and shapes in a checkpoint, read with safetensors (headers only) or
    ``torch.load(weights_only=True, mmap=True)``; ``None`` without model weights (an adapter)."""
    single, index = checkpoint / "model.safetensors", checkpoint / "model.safetensors.index.json"
    files: list[Path] = []
    if single.is_file():
        files = [single]
    elif index.is_file():
        with open(index) as f:
            files = sorted({checkpoint / name for name in json.load(f)["weight_map"].values()})
    if files:
        from safetensors import safe_open

        shapes = {}
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safetensors handle, no __iter__)
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        return shapes
    binary = checkpoint / "pytorch_model.bin"
    if binary.is_file():
        state = torch.load(binary, map_location="cpu", weights_only=True, mmap=True)
        return {name: tuple(t.shape) for name, t in state.items()}
    return None


def _few(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(list(names)[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def check_checkpoint_matches(model: torch.nn.Module, checkpoint: Path) -> None:
    """Refuse a checkpoint whose parameter names or shapes are not the model's (tied weights
    saved once count as present).

    Raises:
        ValueError: names the differing keys (a few of each kind).
    """
    saved = _saved_shapes(checkpoint)
    if saved is None:
        return
    own = model.state_dict()
    pointer = {t.data_ptr(): name for name, t in own.items() if name in saved}
    unexpected = sorted(set(saved) - set(own))
    missing = sorted(n for n in set(own) - set(saved) if own[n].data_ptr() not in pointer)
    shapes = sorted(f"{n} (checkpoint {list(saved[n])}, model {list(own[n].shape)})"
                    for n in set(saved) & set(own) if tuple(own[n].shape) != saved[n])
    if unexpected or missing or shapes:
        parts = [f"{len(x)} {what}: {_few(x)}" for x, what in (
            (unexpected, "keys the model does not have"),
            (missing, "keys of the model it lacks"), (shapes, "shapes that differ")) if x]
        raise ValueError(
            f"the checkpoint {str(checkpoint)!r} is not from this model ({'; '.join(parts)}). "
            "make_trainer must build the baseline's model (the same architecture and config) "
            "for the continuations to resume from its checkpoints.")


class _StopAt(TrainerCallback):
    """Stop training after optimizer step ``step``, evaluating there once."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.evaluated_at: int | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_evaluate = True
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.evaluated_at = state.global_step
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.step and self.evaluated_at == state.global_step:
            control.should_evaluate = False  # evaluated at this step already (epoch strategy)
        return control


class _KeepBest(TrainerCallback):
    """Save the model (``trainer.save_model``) each time ``metric`` reaches a new best after
    ``after`` and up to ``until``: the continuation's best model, kept when its checkpoints are
    removed. Its step is the first best (a tie keeps the earlier one, as the tryout does)."""

    def __init__(self, trainer: Any, folder: Path, metric: str, *, higher_is_better: bool,
                 after: int, until: int) -> None:
        self.trainer, self.folder, self.metric = trainer, folder, metric
        self.sign = -1.0 if higher_is_better else 1.0
        self.after, self.until = after, until
        self.best: float | None = None
        self.step: int | None = None

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        value = (kwargs.get("metrics") or {}).get(self.metric)
        step = state.global_step
        if (value is None or not self.after < step <= self.until or step == self.step
                or not math.isfinite(value)):
            return control
        if self.best is None or self.sign * value < self.sign * self.best:
            self.best, self.step = float(value), step
            self.trainer.save_model(str(self.folder))
        return control


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def make_continue_run(make_trainer: Callable[[dict[str, Any]], Any], baseline: Baseline, *,
                      baseline_seed: int, work_dir: Path, keep_checkpoints: bool = False,
                      higher_is_better: bool = False
                      ) -> Callable[..., list[tuple[int, float]]]:
    """The ``continue_run`` function of :func:`rdrop.tryout` for a Hugging Face baseline.

    ``continue_run(checkpoint, *, alpha, seed, max_steps)`` copies the checkpoint into
    ``work_dir`` (once; the copy for seeds other than ``baseline_seed`` leaves out the RNG
    state, so they draw their own), builds ``make_trainer(overrides)`` with ``output_dir`` a new
    folder in ``work_dir``, ``seed``, ``max_steps`` = the baseline's (so the learning-rate
    schedule is the baseline's; more only when the budget asks for steps beyond it),
    ``rdrop_alpha`` and ``rdrop_start_step`` = the checkpoint's step (``alpha=None``: a start
    beyond the run, so R-Drop never runs), resumes from the copy, stops after ``max_steps``
    optimizer steps and returns the ``(step, value)`` evaluations after the checkpoint. An
    R-Drop continuation saves its best model (by ``higher_is_better``) in ``best-model/`` of its
    folder, :func:`best_model_dir`.

    Raises:
        TypeError: ``make_trainer`` returned something other than an R-Drop trainer.
        ValueError: ``make_trainer`` ignored an override; the checkpoint is not from its model.
    """
    copies: dict[tuple[Path, bool], Path] = {}
    started: list[str] = []  # the runs that began training, in order

    def _copy(checkpoint: Path, with_rng: bool) -> Path:
        if (checkpoint, with_rng) not in copies:
            target = work_dir / "checkpoints" / (checkpoint.name + ("" if with_rng else "-seeded"))
            if with_rng:
                shutil.copytree(checkpoint, target)
            else:  # from our own copy (hard links where possible), without the RNG state
                source = _copy(checkpoint, True)
                shutil.copytree(source, target, copy_function=_link_or_copy,
                                ignore=lambda _, names: [n for n in names if _RNG.match(n)])
            copies[(checkpoint, with_rng)] = target
        return copies[(checkpoint, with_rng)]

    def continue_run(checkpoint: Path, *, alpha: float | None, seed: int, max_steps: int
                     ) -> list[tuple[int, float]]:
        start = int(_CHECKPOINT.match(Path(checkpoint).name).group(1))  # type: ignore[union-attr]
        name = _run_name(alpha, seed)
        run_dir = work_dir / "runs" / name
        schedule = max(baseline.max_steps, max_steps)
        if schedule > baseline.max_steps:
            logger.warning(
                "rdrop tryout: %s runs to step %d, beyond the baseline's max_steps=%d: its "
                "learning-rate schedule is stretched to %d steps (the budget asked for it).",
                name, max_steps, baseline.max_steps, schedule)
        overrides: dict[str, Any] = {
            "output_dir": str(run_dir), "seed": seed, "max_steps": schedule,
            "rdrop_alpha": 0.0 if alpha is None else float(alpha),
            "rdrop_start_step": schedule + 1 if alpha is None else start}
        trainer = make_trainer(dict(overrides))
        if not isinstance(trainer, RDropTrainerMixin):
            raise TypeError(
                f"make_trainer must return an R-Drop trainer (rdrop.integrations.hf."
                f"RDropTrainer or RDropSeq2SeqTrainer), got {type(trainer).__name__}: the "
                "continuations switch R-Drop on with rdrop_alpha and rdrop_start_step.")
        got = {"output_dir": str(trainer.args.output_dir), "seed": trainer.args.seed,
               "max_steps": trainer.args.max_steps, "rdrop_alpha": trainer.rdrop_alpha,
               "rdrop_start_step": trainer.rdrop_start_step}
        ignored = {k: (v, got[k]) for k, v in overrides.items() if got[k] != v}
        if ignored:
            raise ValueError(
                "make_trainer ignored overrides (asked, got): "
                + ", ".join(f"{k}={a!r} (got {b!r})" for k, (a, b) in ignored.items())
                + ". Build the arguments with them, e.g. RDropTrainingArguments(**{**yours, "
                "**overrides}).")
        check_checkpoint_matches(trainer.model, Path(checkpoint))  # reads headers only
        source = _copy(Path(checkpoint), with_rng=seed == baseline_seed)
        trainer.add_callback(_StopAt(max_steps))
        if alpha is not None:
            trainer.add_callback(_KeepBest(trainer, best_model_dir(work_dir, alpha, seed),
                                           baseline.metric, higher_is_better=higher_is_better,
                                           after=start, until=max_steps))
        started.append(name)
        logger.info("rdrop tryout: %s: resuming from a copy of %s (%s), to step %d.", name,
                    checkpoint, source, max_steps)
        trainer.train(resume_from_checkpoint=str(source))
        run_dir.mkdir(parents=True, exist_ok=True)
        trainer.state.save_to_json(str(run_dir / "trainer_state.json"))  # the run's log
        curve: dict[int, float] = {}
        for entry in trainer.state.log_history:
            if baseline.metric in entry and start < int(entry.get("step", -1)) <= max_steps:
                curve.setdefault(int(entry["step"]), float(entry[baseline.metric]))
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not keep_checkpoints:
            for folder in run_dir.glob("checkpoint-*"):
                shutil.rmtree(folder, ignore_errors=True)
        return sorted(curve.items())

    continue_run.started = started  # type: ignore[attr-defined]
    return continue_run


def _run_name(alpha: float | None, seed: int) -> str:
    return ("plain" if alpha is None else f"alpha{alpha:g}") + f"-seed{seed}"


def best_model_dir(work_dir: str | os.PathLike[str], alpha: float, seed: int) -> Path:
    """Where the tryout keeps the best model of the R-Drop continuation at ``alpha`` and
    ``seed``: ``<work_dir>/runs/alpha<alpha>-seed<seed>/best-model`` (``trainer.save_model``'s
    layout, so ``from_pretrained`` loads it).

    Example:
        >>> best_model_dir("tryout", 10.0, 1).as_posix()
        'tryout/runs/alpha10-seed1/best-model'
    """
    return Path(work_dir) / "runs" / _run_name(alpha, seed) / "best-model"


# ---------------------------------------------------------------------------------- tryout
def tryout(
    make_trainer: Callable[[dict[str, Any]], Any],
    output_dir: str | os.PathLike[str],
    *,
    metric: str = "eval_loss",
    higher_is_better: bool = False,
    budget: float | None = None,
    step_cost: float = 2.0,
    alphas: Sequence[float] = (1.0, 10.0),
    max_extensions: int = 3,
    seeds: int = 2,
    baseline_seed: int | None = None,
    rerun_baseline: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    keep_checkpoints: bool = False,
    window: int = PLATEAU_WINDOW,
    fraction: float = PLATEAU_FRACTION,
) -> TryoutResult:
    """Measure whether R-Drop pays on your finished Hugging Face run: :func:`rdrop.tryout`
    over continuations of your baseline built by your own ``make_trainer``.

    The plateau of ``metric`` in the baseline's ``log_history`` picks the checkpoint (the last
    ``checkpoint-*/`` at or before it); each continuation resumes model, optimizer, scheduler
    and (for the baseline's seed) RNG state from a copy of it, keeps the baseline's
    ``max_steps`` (the same learning-rate schedule) and stops at its budget. The baseline
    seed's plain continuation is the baseline itself (its curve after the checkpoint; it
    reproduces bit for bit on the same machine) unless ``rerun_baseline``. See
    :func:`rdrop.tryout` for the budget, the alpha search, the intervals and the verdict.

    Args:
        make_trainer: your way to build the trainer, ``make_trainer(overrides) ->
            RDropTrainer``, with the baseline's model, data and arguments updated by
            ``overrides``: ``output_dir``, ``seed``, ``max_steps``, ``rdrop_alpha`` and
            ``rdrop_start_step`` (for example ``RDropTrainingArguments(**{**yours,
            **overrides})``). Add no start callback.
        output_dir: the baseline run's ``output_dir`` (read only).
        metric: the evaluation metric (``eval_`` prefix optional; default ``eval_loss``).
        higher_is_better: its direction (``False`` for a loss).
        budget, step_cost, alphas, max_extensions, window, fraction: as :func:`rdrop.tryout`.
        seeds: how many seeds (``>= 2``), from the baseline's seed up.
        baseline_seed: the baseline's ``TrainingArguments.seed``; ``None``: read from a trainer
            that ``make_trainer`` builds without a ``seed`` override (not trained).
        rerun_baseline: rerun the baseline seed's plain continuation instead of reading it.
        work_dir: a new folder for the checkpoint copies and the runs (default: a new folder
            beside ``output_dir``, named ``<name>-rdrop-tryout-...``).
        keep_checkpoints: keep the continuations' own checkpoints (default: removed after
            each run; its ``trainer_state.json`` is kept, with the run's ``log_history``).

    Returns:
        :class:`rdrop.TryoutResult` (``checkpoint`` is your checkpoint's folder;
        ``best_model`` the folder with the best R-Drop model at the chosen alpha, saved by
        ``trainer.save_model`` at its best evaluation: load it with ``from_pretrained``).

    Raises:
        ValueError: no checkpoints in ``output_dir``; a ``trainer_state.json`` without
            evaluations (set ``eval_strategy``) or without ``metric``; a curve with no plateau
            yet (train longer or lower ``fraction``); a checkpoint from another model (names a
            few keys); ``make_trainer`` ignoring its overrides; as :func:`rdrop.tryout`.
        TypeError: ``make_trainer`` not returning an R-Drop trainer.

    Example:
        >>> from rdrop.integrations.hf.tryout import tryout  # also rdrop.integrations.hf.tryout
        >>> tryout(lambda overrides: None, "no-such-run")
        Traceback (most recent call last):
        ...
        ValueError: output_dir 'no-such-run' is not a folder: ...
    """
    if not callable(make_trainer):
        raise TypeError("make_trainer must be a function make_trainer(overrides: dict) -> "
                        f"RDropTrainer, got {make_trainer!r}.")
    baseline = read_baseline(output_dir, metric)
    if isinstance(seeds, bool) or not isinstance(seeds, int):
        raise TypeError(f"seeds must be a count (int >= 2), got {seeds!r}.")
    if work_dir is None:
        work = Path(tempfile.mkdtemp(prefix=f"{baseline.output_dir.name}-rdrop-tryout-",
                                     dir=baseline.output_dir.resolve().parent))
    else:
        work = Path(work_dir)
        if work.resolve() == baseline.output_dir.resolve() or (
                baseline.output_dir.resolve() in work.resolve().parents):
            raise ValueError(f"work_dir {str(work)!r} is inside the baseline's output_dir; "
                             "the tryout never writes there. Pass another folder.")
        if work.exists() and any(work.iterdir()):
            raise ValueError(f"work_dir {str(work)!r} is not empty; pass a new folder.")
        work.mkdir(parents=True, exist_ok=True)
    continue_run = None
    try:
        if baseline_seed is None:
            probe = make_trainer({"output_dir": str(work / "probe"),
                                  "max_steps": baseline.max_steps})
            if not isinstance(probe, RDropTrainerMixin):
                raise TypeError(
                    f"make_trainer must return an R-Drop trainer (rdrop.integrations.hf."
                    f"RDropTrainer or RDropSeq2SeqTrainer), got {type(probe).__name__}.")
            baseline_seed = int(probe.args.seed)
            del probe
            gc.collect()
            shutil.rmtree(work / "probe", ignore_errors=True)
        logger.info("rdrop tryout: baseline %s: %d evaluations of %s, %d steps, checkpoints at "
                    "%s, seed %d; runs in %s.", baseline.output_dir, len(baseline.steps),
                    baseline.metric, baseline.total_steps, sorted(baseline.checkpoints),
                    baseline_seed, work)
        continue_run = make_continue_run(make_trainer, baseline, baseline_seed=baseline_seed,
                                         work_dir=work, keep_checkpoints=keep_checkpoints,
                                         higher_is_better=higher_is_better)
        result = _tryout(
            baseline.steps, baseline.values, baseline.checkpoints, baseline.total_steps,
            continue_run, higher_is_better=higher_is_better, budget=budget,
            step_cost=step_cost, alphas=alphas, max_extensions=max_extensions, seeds=seeds,
            baseline_seed=baseline_seed, plain_from_curve=not rerun_baseline, window=window,
            fraction=fraction)
    except BaseException:
        if continue_run is None or not continue_run.started:  # type: ignore[attr-defined]
            shutil.rmtree(work, ignore_errors=True)  # refused before any training
        raise
    best = best_model_dir(work, result.alpha, result.best_seed)  # type: ignore[arg-type]
    result = dataclasses.replace(result, best_model=best if best.is_dir() else None)
    logger.info("rdrop tryout: the best R-Drop model is in %s.", result.best_model)
    return result
