"""How every report writes a number: one place, so a missing value reads ``n/a`` everywhere.

A value that is None, NaN or infinite is :data:`NA`. Differences carry their sign, ratios an
``x``, p values three decimals down to ``<0.001``.

Example:
    >>> signed(1.234), number(float("nan")), ratio(2.0), p_value(0.0004)
    ('+1.23', 'n/a', '2.00x', '<0.001')
    >>> ci(1.0, 0.5, 1.5), ci(1.0, 0.5, 1.5, p=0.04)
    ('+1.00 [+0.50, +1.50]', '+1.00 [+0.50, +1.50], 0.040')
"""

from __future__ import annotations

import math

__all__ = ["NA", "ci", "is_number", "number", "p_value", "percent", "ratio", "signed"]

NA = "n/a"


def is_number(x: float | None) -> bool:
    """Whether ``x`` is a finite number (None, NaN and inf are not)."""
    return x is not None and math.isfinite(x)


def number(x: float | None, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals."""
    return f"{x:.{digits}f}" if is_number(x) else NA


def signed(x: float | None, digits: int = 2) -> str:
    """``x`` with its sign (a difference)."""
    return f"{x:+.{digits}f}" if is_number(x) else NA


def ratio(x: float | None, digits: int = 2) -> str:
    """``x`` as a multiple (``1.50x``)."""
    return f"{x:.{digits}f}x" if is_number(x) else NA


def percent(x: float | None, digits: int = 1, *, sign: bool = True) -> str:
    """A fraction as a percentage (``0.031`` -> ``+3.1%``)."""
    if not is_number(x):
        return NA
    return f"{100 * x:+.{digits}f}%" if sign else f"{100 * x:.{digits}f}%"


def p_value(x: float | None) -> str:
    """A p value: three decimals, ``<0.001`` below that."""
    if not is_number(x):
        return NA
    return f"{x:.3f}" if x >= 0.001 else "<0.001"


def ci(mean: float | None, low: float | None, high: float | None, *, p: float | None = None,
       digits: int = 2) -> str:
    """A difference with its interval, ``+m [+lo, +hi]``; with ``p``, then ``, p``."""
    text = f"{signed(mean, digits)} [{signed(low, digits)}, {signed(high, digits)}]"
    return text if p is None else f"{text}, {p_value(p)}"
