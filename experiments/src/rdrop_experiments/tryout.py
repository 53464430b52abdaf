"""``rdrop tryout RECORD``: the library's tryout (:func:`rdrop.tryout`) on a baseline record.

The harness reruns a baseline bit for bit from its seed, so every evaluation step is a
checkpoint: a continuation from step ``C`` is the record's config with R-Drop from ``C``
(``start_step=C``), or, for a seed other than the baseline's own, with every generator reseeded
at ``C`` (``branch_seed``, ``branch_step``: :func:`rdrop_experiments.protocol.
train_until_patience`), so that each seed pairs an R-Drop and a plain continuation from the same
checkpoint and data order. The baseline's own seed takes the record's curve as its plain
continuation. Compute is counted from the branch on, as a user branching from a saved
checkpoint would spend it; the rerun of the shared prefix (a cost of rerunning instead of
loading) is not counted. The Δs are of the family's reported test metric (the record's
``metric``, e.g. ROUGE-1 or BLEU) at the evaluation chosen on the selection metric, in the
reported metric's direction, so that the verdict reads the same quantity as the full
comparison. Results go under ``out`` (``runs/tryout`` by default), one record per
continuation, and ``tryout-<k>seeds.json`` with the result's fields (a rerun with more seeds
reuses the finished continuations and adds the new seeds').
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rdrop.training.autostart import PLATEAU_FRACTION, PLATEAU_WINDOW
from rdrop.training.tryout import TryoutResult, tryout
from rdrop_experiments.config import NON_RESULT_FIELDS, ConfigError
from rdrop_experiments.registry import get_experiment
from rdrop_experiments.runner import run_experiment

__all__ = ["TryoutError", "record_tryout"]


class TryoutError(ValueError):
    """A record the tryout cannot start from (the message says why and what to do)."""


def _load(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise TryoutError(f"{path}: no such file.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TryoutError(f"{path}: not a readable record ({exc.__class__.__name__}).") from None
    if not isinstance(rec, dict) or "curves" not in rec or "experiment" not in rec:
        raise TryoutError(f"{path}: not a record of `rdrop run` (no 'curves'/'experiment').")
    if rec.get("method") != "baseline":
        raise TryoutError(f"{path}: a {rec.get('method')!r} run; the tryout branches from a "
                          "baseline run (method baseline).")
    return rec


def record_tryout(path: str | Path, *, out: str | Path = "runs/tryout", seeds: int = 2,
                  alphas: tuple[float, ...] = (1.0, 10.0), budget: float | None = None,
                  progress: bool = True) -> TryoutResult:
    """Run :func:`rdrop.tryout` from the baseline record at ``path``.

    Args:
        path: a baseline record of ``rdrop run`` (``method == "baseline"``).
        out: where the continuations' records and ``tryout.json`` go.
        seeds: seeds in all, the record's own first (``>= 2``).
        alphas: the alpha grid (extended at an edge by :func:`rdrop.tryout`).
        budget: plain-step equivalents after the branch (default: the baseline's own).
        progress: progress lines while training.

    Returns:
        The :class:`rdrop.tryout.TryoutResult`; also written to ``out/tryout-<k>seeds.json``.

    Raises:
        TryoutError: not a baseline record; its curve has no plateau yet (from
            :func:`rdrop.tryout`, as a ``ValueError``).
    """
    path = Path(path)
    rec = _load(path)
    extra = rec.get("extra", {})
    key = extra.get("selection_metric")
    if not key:
        raise TryoutError(f"{path}: the record names no selection_metric (a first-protocol "
                          "record?); rerun the baseline with `rdrop run`.")
    # the family's reported metric (ROUGE-1, BLEU, ...), which may differ from the one
    # selection reads (a validation loss): the tryout's Δs are of it, in its own direction
    test_key = "test_" + str(rec.get("metric") or key.removeprefix("valid_"))
    curve = [c for c in rec["curves"] if key in c and test_key in c]
    exp = get_experiment(rec["experiment"])
    fields = {f.name for f in dataclasses.fields(exp.config)}
    base = {k: v for k, v in rec["config"].items() if k in fields and k not in NON_RESULT_FIELDS}
    seed = int(rec["seed"])
    variant = rec.get("variant") if rec.get("variant") not in (None, "default") else None
    out = Path(out)

    def continue_run(checkpoint: int, *, alpha: float | None, seed: int,
                     max_steps: int) -> list[tuple[int, float, float]]:
        overrides = {**base, "seeds": 1, "first_seed": int(rec["seed"]), "max_steps": max_steps,
                     "methods": "rdrop" if alpha is not None else "baseline"}
        if alpha is not None:
            overrides.update(alpha=alpha, start_step=checkpoint)
        if seed != int(rec["seed"]):
            overrides.update(branch_seed=seed, branch_step=checkpoint)
        try:
            records = run_experiment(rec["experiment"], overrides, out=out, variant=variant,
                                     grid=False, progress=progress)
        except ConfigError as exc:
            raise TryoutError(f"{path}: {exc}") from None
        points = records[0]["curves"]
        return [(int(c["step"]), float(c[key]), float(c[test_key])) for c in points
                if c["step"] > checkpoint and key in c]

    steps = [int(c["step"]) for c in curve]
    result = tryout(
        steps, [float(c[key]) for c in curve], {s: s for s in steps},
        int(extra.get("steps", steps[-1] if steps else 0)), continue_run,
        higher_is_better=bool(extra.get("selection_higher_is_better", False)), budget=budget,
        alphas=alphas, seeds=seeds, baseline_seed=seed, plain_from_curve=True,
        test_values=[float(c[test_key]) for c in curve],
        test_higher_is_better=bool(rec.get("higher_is_better",
                                           extra.get("selection_higher_is_better", False))),
        window=PLATEAU_WINDOW, fraction=PLATEAU_FRACTION)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tryout-{len(result.seeds)}seeds.json").write_text(json.dumps(
        {"record": str(path), "experiment": rec["experiment"], "seed": seed,
         "test_metric": test_key,
         **dataclasses.asdict(result)}, indent=1, default=str) + "\n")
    return result
