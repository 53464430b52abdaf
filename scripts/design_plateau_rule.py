"""Choose the plateau rule's parameters on the second protocol's committed baseline curves.

The rule (:class:`rdrop.PlateauStart`) fires at the first evaluation ``i >= W`` where
the best value improved by at most a fraction ``q`` of its improvement so far over the last ``W``
evaluations. This script scores a grid of ``(W, q)`` on every committed baseline run of the
second protocol (``results/<family>/baseline-*.json``; the scale map's cells and every R-Drop
run are left out) and prints one row per ``(W, q)``:

* ``before best``: curves where the rule fired strictly before the best-validation step, among
  those where that is possible (the best at an evaluation ``>= W``);
* ``never``: curves where it never fired;
* ``progress``: the median share of the improvement up to the best already made when it fired
  (``(b_0 - b_f) / (b_0 - b_best)``);
* ``dist``: the mean distance, in evaluations, from the plateau's onset (the first evaluation
  with >= 90% of that improvement) to where the rule fired.

The choice: ``W >= 3`` (with ``W = 2`` the language-modeling curves' flat stretch at steps
30-45, an artefact of the warm-up, fires the rule at step 60 with less than half the
improvement made); among those, the settings that fire in every curve with at least 6
evaluations (a shorter run cannot show a plateau before its optimum); among those, the smallest
``dist``, ties to the larger ``W``. The first version of this criterion (no ``W`` bound,
``never`` ignored) picked ``W = 2, q = 0.1``; the early firing above is why it was replaced,
before any run used the rule. Run: ``python scripts/design_plateau_rule.py [--results results]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rdrop.training.autostart import plateau_step

FAMILIES = ("image", "language-modeling", "summarization", "text-classification", "translation")
WINDOWS = (1, 2, 3, 4, 5)
FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
ONSET = 0.9
MIN_WINDOW = 3
MIN_EVALS = 6


def curves(results: Path) -> list[dict]:
    """One entry per committed second-protocol baseline run: steps, values, direction, best."""
    out = []
    for family in FAMILIES:
        for path in sorted((results / family).glob("baseline-seed*.json")):
            record = json.loads(path.read_text())
            key = record["extra"]["selection_metric"]
            points = [c for c in record["curves"] if f"valid_{key}" in c or key in c]
            out.append({
                "name": f"{family} s{record['seed']} p{record['config']['dropout']}",
                "steps": [c["step"] for c in points],
                "values": [c.get(f"valid_{key}", c.get(key)) for c in points],
                "higher": bool(record["extra"]["selection_higher_is_better"]),
                "best_step": record["best_step"],
            })
    return out


def score(curve: dict, window: int, fraction: float) -> tuple[int | None, float, int]:
    """(fire index or None, progress at firing, onset index) of one curve."""
    sign = -1.0 if curve["higher"] else 1.0
    bests, best = [], float("inf")
    for v in curve["values"]:
        best = min(best, sign * v)
        bests.append(best)
    best_i = curve["steps"].index(curve["best_step"])
    total = bests[0] - bests[best_i]
    onset = next(i for i, b in enumerate(bests) if bests[0] - b >= ONSET * total)
    fired = plateau_step(curve["values"], curve["steps"], window=window, fraction=fraction,
                         higher_is_better=curve["higher"])
    if fired is None:
        return None, float("nan"), onset
    f = curve["steps"].index(fired)
    return f, (bests[0] - bests[f]) / total if total > 0 else float("nan"), onset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    runs = curves(args.results)
    print(f"{len(runs)} baseline curves from {args.results}/{{{','.join(FAMILIES)}}}")
    print("| W | q | before best | never | progress (median) | dist (mean evals) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for window in WINDOWS:
        for fraction in FRACTIONS:
            before = possible = never = 0
            progress, dist = [], []
            for curve in runs:
                f, prog, onset = score(curve, window, fraction)
                best_i = curve["steps"].index(curve["best_step"])
                possible += best_i > window
                if f is None:
                    never += 1
                    continue
                before += best_i > window and f < best_i
                progress.append(prog)
                dist.append(abs(f - onset))
            med = statistics.median(progress) if progress else float("nan")
            mean_dist = statistics.fmean(dist) if dist else float("nan")
            short_never = sum(1 for c in runs if len(c["steps"]) < MIN_EVALS
                              and score(c, window, fraction)[0] is None)
            rows.append((window, fraction, before, possible, never - short_never, med,
                         mean_dist))
            print(f"| {window} | {fraction} | {before}/{possible} | {never} | {med:.2f} | "
                  f"{mean_dist:.2f} |")
    ok = [r for r in rows if r[0] >= MIN_WINDOW and r[4] == 0]
    chosen = min(ok, key=lambda r: (r[6], -r[0]))
    print(f"\nchosen: W={chosen[0]} q={chosen[1]} (W >= {MIN_WINDOW}, fires in every curve "
          f"with >= {MIN_EVALS} evaluations, nearest the onset)")
    print("\nper curve at the chosen setting (fired step, best step):")
    for curve in runs:
        f, prog, _ = score(curve, chosen[0], chosen[1])
        fired = None if f is None else curve["steps"][f]
        print(f"  {curve['name']}: fired {fired}, best {curve['best_step']}, progress {prog:.2f}")


if __name__ == "__main__":
    main()
