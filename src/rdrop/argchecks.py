"""Argument checks shared by every rdrop entry point: one place, one message per mistake.

Each ``check_*`` raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad
value) whose message names the argument and says how to fix it, and returns the value in its
canonical form (``float`` for ``alpha``, ``int`` for ``ignore_index``...). Callers that expose an
argument under another name (``rdrop_chunk_size`` in the Hugging Face trainer) pass ``name=``.

All checks here look at Python values and tensor metadata only: none reads a tensor's data, so
none synchronizes with an accelerator. (``num_items_in_batch`` given as a CPU tensor is read; on
an accelerator its sign is checked later, in the loss's one finiteness sync.)
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = [
    "CONSISTENCIES",
    "REDUCTIONS",
    "STEP_CONSISTENCIES",
    "check_alpha",
    "check_chunk_size",
    "check_consistency",
    "check_ignore_index",
    "check_label_smoothing",
    "check_loss_combination",
    "check_num_items_in_batch",
    "check_positive_int",
    "check_reduction",
]

REDUCTIONS = ("mean", "sum", "none")
CONSISTENCIES = ("kl", "js", "mse")
# What a training step compares (RDrop, the trainers, Lightning): CONSISTENCIES, and "bernoulli"
# for multi-label sigmoid heads (rdrop.multilabel: BCE task terms, per-label Bernoulli KL).
STEP_CONSISTENCIES = (*CONSISTENCIES, "bernoulli")


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a count or index is always a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_alpha(alpha: float, *, name: str = "alpha") -> float:
    """Check the consistency weight: a finite real number ``>= 0``.

    Args:
        alpha: the value to check.
        name: the argument's name in the caller's API, for the message.

    Returns:
        ``float(alpha)``.

    Raises:
        TypeError: ``alpha`` is not a real number (a string, a tensor, ``None``, a bool).
        ValueError: ``alpha`` is negative, NaN or infinite.

    Example:
        >>> from rdrop.argchecks import check_alpha
        >>> check_alpha(5)
        5.0
    """
    if not _is_real(alpha):
        raise TypeError(
            f"{name} must be a float, got {type(alpha).__name__}. Pass a Python number "
            "(for a tensor, use float(t))."
        )
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(
            f"{name} must be a finite number >= 0, got {alpha}. {name} weighs the consistency "
            "term; use 0 to disable it (paper values: 5 translation, 1 language modeling, "
            "0.1-1 GLUE)."
        )
    return float(alpha)


def check_reduction(reduction: str, *, name: str = "reduction") -> str:
    """Check ``reduction`` is one of :data:`REDUCTIONS` (``"mean"``, ``"sum"``, ``"none"``).

    Raises:
        ValueError: any other value.

    Example:
        >>> from rdrop.argchecks import check_reduction
        >>> check_reduction("sum")
        'sum'
    """
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{name} must be one of {REDUCTIONS}, got {reduction!r}.")
    return reduction


def check_consistency(consistency: str, *, name: str = "consistency",
                      allowed: tuple[str, ...] = CONSISTENCIES) -> str:
    """Check ``consistency`` is one of ``allowed``: :data:`CONSISTENCIES` (``"kl"``, ``"js"``,
    ``"mse"``) for the softmax/regression losses, :data:`STEP_CONSISTENCIES` (also
    ``"bernoulli"``, multi-label heads) for a training step.

    Raises:
        ValueError: any other value.

    Example:
        >>> from rdrop.argchecks import STEP_CONSISTENCIES, check_consistency
        >>> check_consistency("js"), check_consistency("bernoulli", allowed=STEP_CONSISTENCIES)
        ('js', 'bernoulli')
    """
    if not isinstance(consistency, str) or consistency not in allowed:
        multilabel = ("; 'bernoulli' for multi-label sigmoid heads" if "bernoulli" in allowed
                      else "; for multi-label sigmoid heads use rdrop.multilabel_rdrop_loss"
                      if consistency == "bernoulli" else "")
        raise ValueError(
            f"{name} must be one of {allowed}, got {consistency!r} ('kl' is the paper's "
            f"symmetric KL, 'js' Jensen-Shannon, 'mse' for regression heads{multilabel})."
        )
    return consistency


def check_label_smoothing(label_smoothing: float, *, name: str = "label_smoothing") -> float:
    r"""Check the label smoothing :math:`\varepsilon \in [0, 1)` applied to each CE term.

    Returns:
        ``float(label_smoothing)``.

    Raises:
        TypeError: not a real number (``None`` included: use ``0.0`` for no smoothing).
        ValueError: outside ``[0, 1)`` or NaN.

    Example:
        >>> from rdrop.argchecks import check_label_smoothing
        >>> check_label_smoothing(0.1)
        0.1
    """
    if not _is_real(label_smoothing):
        raise TypeError(
            f"{name} must be a float in [0, 1), got {type(label_smoothing).__name__}; "
            "use 0.0 for no smoothing."
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {label_smoothing}.")
    return float(label_smoothing)


def check_ignore_index(ignore_index: int, *, name: str = "ignore_index") -> int:
    """Check ``ignore_index``: the integer target value of rows that do not count.

    Returns:
        ``int(ignore_index)``.

    Raises:
        TypeError: not an integer. ``None`` is refused: keep the default ``-100`` when no
            target is padding (no real class index is negative, so nothing is ignored).

    Example:
        >>> from rdrop.argchecks import check_ignore_index
        >>> check_ignore_index(-100)
        -100
    """
    if not _is_int(ignore_index):
        raise TypeError(
            f"{name} must be an int (the target value of padding rows), got "
            f"{type(ignore_index).__name__}. To count every row keep the default -100: "
            "class indices are never negative."
        )
    return int(ignore_index)


def check_positive_int(name: str, value: int, minimum: int) -> int:
    """Check that ``value`` is an int (not a bool) and ``>= minimum``.

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        minimum: the smallest allowed value.

    Returns:
        ``int(value)``.

    Raises:
        TypeError: not an int.
        ValueError: smaller than ``minimum``.

    Example:
        >>> from rdrop.argchecks import check_positive_int
        >>> check_positive_int("num_passes", 3, 2)
        3
    """
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_chunk_size(chunk_size: int | None, *, name: str = "chunk_size") -> int | None:
    """Check a chunk size: ``None`` (no chunking) or an int ``>= 1`` (rows per chunk).

    Raises:
        TypeError: not an int or ``None`` (``True`` included).
        ValueError: an int ``< 1``.

    Example:
        >>> from rdrop.argchecks import check_chunk_size
        >>> check_chunk_size(None) is None, check_chunk_size(1024)
        (True, 1024)
    """
    if chunk_size is None:
        return None
    if not _is_int(chunk_size):
        raise TypeError(
            f"{name} must be a positive int (rows per chunk) or None (no chunking), got "
            f"{type(chunk_size).__name__} {chunk_size!r}."
        )
    if chunk_size < 1:
        raise ValueError(
            f"{name} must be a positive int (rows per chunk) or None (no chunking), got "
            f"{chunk_size}."
        )
    return int(chunk_size)


def check_num_items_in_batch(
    num_items_in_batch: int | Tensor | None, *, name: str = "num_items_in_batch"
) -> int | Tensor | None:
    """Check the count that ``reduction="mean"`` divides by: ``None``, or a positive integer.

    An int must be ``>= 1``. A tensor must be an integer scalar (one element); on the CPU its
    value is checked here, on an accelerator it is checked in the loss's finiteness check (one
    device sync shared with it), so that this check costs no sync of its own.

    Zero is refused: a count of 0 means the whole accumulated batch is padding, and dividing by
    it would give NaN (or a silent sum, if clamped). Pass ``None`` to divide by the local count.

    Returns:
        The value unchanged (an int as ``int``).

    Raises:
        TypeError: not an int, an integer tensor or ``None`` (a float, a string, a float tensor).
        ValueError: an int ``< 1``, a CPU tensor ``< 1``, or a tensor with more than one element.

    Example:
        >>> import torch
        >>> from rdrop.argchecks import check_num_items_in_batch
        >>> check_num_items_in_batch(12), int(check_num_items_in_batch(torch.tensor(12)))
        (12, 12)
    """
    if num_items_in_batch is None:
        return None
    fix = (
        f"{name} is the number of counted (non-ignored) targets of the whole accumulated batch; "
        "pass a positive int, an integer tensor, or None to use this batch's own count."
    )
    if isinstance(num_items_in_batch, Tensor):
        if num_items_in_batch.is_floating_point() or num_items_in_batch.is_complex() or (
            num_items_in_batch.dtype == torch.bool
        ):
            raise TypeError(
                f"{name} must be an integer tensor, got dtype {num_items_in_batch.dtype} "
                f"(use .long()). {fix}"
            )
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                f"{name} must be a single count, got a tensor of shape "
                f"{tuple(num_items_in_batch.shape)}. {fix}"
            )
        # Reading a CPU tensor is free eagerly, but a graph break under torch.compile: there, as
        # on an accelerator, the loss's one finiteness sync checks it instead.
        on_cpu = num_items_in_batch.device.type == "cpu"
        if on_cpu and not torch.compiler.is_compiling() and int(num_items_in_batch) < 1:
            raise ValueError(f"{name} must be >= 1, got {int(num_items_in_batch)}. {fix}")
        return num_items_in_batch
    if not _is_int(num_items_in_batch):
        raise TypeError(f"{name} must be an int, got {type(num_items_in_batch).__name__}. {fix}")
    if num_items_in_batch < 1:
        raise ValueError(f"{name} must be >= 1, got {num_items_in_batch}. {fix}")
    return int(num_items_in_batch)


def check_loss_combination(
    *,
    consistency: str,
    reduction: str,
    label_smoothing: float,
    chunk_size: int | None = None,
    num_passes: int = 2,
) -> None:
    """Check settings that are valid alone but not together (each is assumed checked alone).

    * ``label_smoothing`` does not apply to ``consistency="mse"`` (regression has no classes);
    * ``chunk_size`` supports two passes, ``consistency="kl"`` and reduction ``"mean"``/``"sum"``.

    Call it at construction (``RDropLoss``, ``RDrop``) so the mistake surfaces before training.

    Raises:
        ValueError: an unsupported combination, naming both settings and the fix.

    Example:
        >>> from rdrop.argchecks import check_loss_combination
        >>> check_loss_combination(consistency="kl", reduction="mean", label_smoothing=0.1,
        ...                        chunk_size=4096)
    """
    if consistency in ("mse", "bernoulli") and label_smoothing != 0:
        what = ("regression targets have no classes to smooth" if consistency == "mse" else
                "multi-label targets are 0/1 per label: smooth them in the target instead")
        raise ValueError(
            f"label_smoothing={label_smoothing} does not apply to consistency={consistency!r} "
            f"({what}); use label_smoothing=0."
        )
    if chunk_size is not None and (num_passes != 2 or consistency != "kl" or reduction == "none"):
        raise ValueError(
            "chunk_size supports two passes, consistency='kl' and reduction 'mean' or 'sum'; got "
            f"num_passes={num_passes}, consistency={consistency!r}, reduction={reduction!r}. "
            "Use chunk_size=None for the other settings."
        )
