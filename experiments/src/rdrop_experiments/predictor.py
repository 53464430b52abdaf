r"""The scale map's predictor (registered in docs/EXPERIMENTS.md, "Scale map", before its runs).

R-Drop's relative best-quality gain ``rel`` (positive = better) against the tuned baseline's
overfitting ``gap`` (validation minus training loss at its best-validation step), an ordinary
least-squares line :math:`rel = a + b \cdot gap` over every cell of the map that carries a
verdict (:mod:`rdrop_experiments.scale_map`), judged leave-one-family-out against the constant
"mean gain of the other families". Measured: the line does not beat the constant, so
``rdrop advise`` no longer predicts from it; it prints the tryout command instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["REGISTERED_FAMILIES", "Predictor", "fit_line", "fit_predictor", "predictor_markdown"]

# The families the predictor was registered on (docs/EXPERIMENTS.md, "Scale map"); families
# added later (issue 17's) are shown in the map but do not move the registered fit.
REGISTERED_FAMILIES = ("image", "language-modeling", "summarization", "text-classification",
                       "translation")


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
