"""``rdrop compare``: pair the run records of two result folders and say how far the reruns moved.

Two records are the same run when their config hash (``key``), ``method`` and ``seed`` agree;
the experiment's name is not part of the pairing, so a family renamed between the two folders
still pairs (its config hash names what ran). ``rdrop compare OLD NEW`` prints the table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rdrop_experiments.formatting import number
from rdrop_experiments.stats import display_scale
from rdrop_experiments.storage import check_one_record_per_run, load_results

__all__ = ["Pair", "compare_folders", "format_comparison", "pair_records"]


@dataclass(frozen=True)
class Pair:
    """One run found in both folders.

    Attributes:
        experiment: the name in the new folder (``old_experiment`` the name in the old one).
        method, seed, setting: what ran. metric: the primary metric.
        old, new: the primary test value at the best-validation checkpoint (record units).
        same_curves: every curve point (validation and test values, steps, sample passes) equal.
    """

    experiment: str
    old_experiment: str
    method: str
    setting: str
    seed: int
    metric: str
    old: float
    new: float
    same_curves: bool

    @property
    def difference(self) -> float:
        """``new - old`` in record units."""
        return self.new - self.old

    @property
    def exact(self) -> bool:
        """The rerun reproduced the run: same test value and every curve point equal."""
        return self.difference == 0 and self.same_curves


def _curve_values(rec: dict[str, Any]) -> list[tuple[Any, ...]]:
    skip = {"wall_s"}  # wall time differs between any two runs
    return [tuple(sorted((k, v) for k, v in point.items() if k not in skip))
            for point in rec.get("curves") or []]


def pair_records(old: Sequence[dict[str, Any]],
                 new: Sequence[dict[str, Any]]) -> tuple[list[Pair], int, int]:
    """Pair records by ``(key, method, seed)``.

    Returns:
        ``(pairs, only_old, only_new)``: the pairs, in the new records' order, and how many
        records of each side have no partner.

    Raises:
        ValueError: one side holds two records of the same run (two folders were merged).

    Example:
        >>> rec = {"experiment": "x", "key": "k", "method": "rdrop", "seed": 0,
        ...        "setting": "alpha=1", "metric": "accuracy", "value": 0.5, "curves": []}
        >>> pairs, only_old, only_new = pair_records([rec], [dict(rec, value=0.75)])
        >>> pairs[0].difference, only_old, only_new
        (0.25, 0, 0)
    """
    def index(records: Sequence[dict[str, Any]], side: str) -> dict[tuple[Any, ...], dict]:
        check_one_record_per_run(records, where=side, by_experiment=False)
        # A record written before records named their config (no key) pairs with nothing.
        return {(rec["key"], rec["method"], int(rec["seed"])) if rec.get("key") else (id(rec),):
                rec for rec in records}

    old_by, new_by = index(old, "the old folder"), index(new, "the new folder")
    pairs = []
    for k, n in new_by.items():
        o = old_by.get(k)
        if o is None:
            continue
        pairs.append(Pair(
            experiment=n["experiment"], old_experiment=o["experiment"], method=n["method"],
            setting=n.get("setting", ""), seed=int(n["seed"]), metric=n["metric"],
            old=float(o["value"]), new=float(n["value"]),
            same_curves=_curve_values(o) == _curve_values(n)))
    return pairs, len(old_by.keys() - new_by.keys()), len(new_by.keys() - old_by.keys())


def _scaled(metric: str, x: float) -> str:
    scale, digits = display_scale(metric)
    return number(x * scale, digits + 2)


def format_comparison(pairs: Sequence[Pair], only_old: int, only_new: int) -> str:
    """A Markdown summary per experiment and method, then one row per pair that moved.

    Values are in report units (x100 for [0, 1] metrics), as in ``rdrop report``.
    """
    lines = [f"{len(pairs)} run(s) in both folders; {only_old} only in the old one, "
             f"{only_new} only in the new one.", ""]
    if not pairs:
        return "\n".join(lines)
    identical = sum(p.exact for p in pairs)
    lines += [f"{identical} of {len(pairs)} reproduce exactly (test value and every curve "
              "point equal).", "",
              "| experiment | method | runs | exact | max \\|new - old\\| | mean new - old |",
              "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[Pair]] = {}
    for p in pairs:
        groups.setdefault((p.experiment, p.method), []).append(p)
    for (exp, method), ps in sorted(groups.items()):
        diffs = [p.difference for p in ps]
        exact = sum(p.exact for p in ps)
        lines.append(f"| {exp} | {method} | {len(ps)} | {exact} | "
                     f"{_scaled(ps[0].metric, max(abs(d) for d in diffs))} | "
                     f"{_scaled(ps[0].metric, math.fsum(diffs) / len(diffs))} |")
    moved = [p for p in pairs if not p.exact]
    if moved:
        lines += ["", "Runs that moved:", "",
                  "| experiment | setting | method | seed | old | new | curves equal |",
                  "|---|---|---|---|---|---|---|"]
        for p in moved:
            lines.append(f"| {p.experiment} | {p.setting} | {p.method} | {p.seed} | "
                         f"{_scaled(p.metric, p.old)} | {_scaled(p.metric, p.new)} | "
                         f"{'yes' if p.same_curves else 'no'} |")
    return "\n".join(lines)


def compare_folders(old: str | os.PathLike[str], new: str | os.PathLike[str]) -> str:
    """Load both folders' complete records and :func:`format_comparison` them.

    Raises:
        FileNotFoundError: a folder does not exist.
    """
    for folder in (old, new):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no results folder {os.fspath(folder)!r}.")
    pairs, only_old, only_new = pair_records(load_results(old), load_results(new))
    return format_comparison(pairs, only_old, only_new)
