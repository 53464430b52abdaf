"""The checks of every rdrop entry point, in one place: arguments, tensors, and the one sync.
They live in the losses wing, whose arguments most of them are; the training wing and the
integrations import them from here (the dependency goes one way).

Arguments are checked once, where the user hands them over (a loss function's call, a module's or
a trainer's construction); the cores they reach take validated values. The defaults of the knobs
are named here once, and every entry point's signature uses them.

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
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ALPHA",
    "CHUNK_SIZE",
    "CONSISTENCIES",
    "IGNORE_INDEX",
    "REDUCTIONS",
    "STEP_CONSISTENCIES",
    "Count",
    "Targets",
    "check_alpha",
    "check_chunk_size",
    "check_class_target",
    "check_consistency",
    "check_counts",
    "check_fused_inputs",
    "check_ignore_index",
    "check_label_smoothing",
    "check_loss_arguments",
    "check_loss_combination",
    "check_num_items_in_batch",
    "check_pair",
    "check_positive_int",
    "check_reduction",
    "check_result",
    "non_finite_hidden_rows",
    "non_finite_rows",
    "raise_count",
]

REDUCTIONS = ("mean", "sum", "none")
CONSISTENCIES = ("kl", "js", "mse")
# What a training step compares (RDrop, the trainers, Lightning): CONSISTENCIES, and "bernoulli"
# for multi-label sigmoid heads (rdrop.losses.multilabel: BCE task terms, per-label Bernoulli KL).
STEP_CONSISTENCIES = (*CONSISTENCIES, "bernoulli")

# ---------------------------------------------------------------------- defaults, named once
ALPHA = 1.0  # the consistency weight (paper: 5 translation, 0.7 summarization, 1 LM)
IGNORE_INDEX = -100  # PyTorch's, the HF Trainer's and its collators' padding label
# Rows per chunk of the chunked and fused losses (and the automatic chunked path): the fused
# loss measured best at 256 (0.33 GB vs 0.59 GB at 512, same time; benchmarks/README.md), and
# the chunked logits loss within 1.10-1.17x of the compiled formula for 128 to 1024.
CHUNK_SIZE = 256


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
        >>> from rdrop.losses.checks import check_alpha
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


def _one_of(name: str, value: str, choices: tuple[str, ...], hint: str = "") -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}{hint}.")
    return value


def check_reduction(reduction: str, *, name: str = "reduction") -> str:
    """Check ``reduction`` is one of :data:`REDUCTIONS` (``"mean"``, ``"sum"``, ``"none"``).

    Raises:
        ValueError: any other value.

    Example:
        >>> from rdrop.losses.checks import check_reduction
        >>> check_reduction("sum")
        'sum'
    """
    return _one_of(name, reduction, REDUCTIONS)


def check_consistency(consistency: str, *, name: str = "consistency",
                      allowed: tuple[str, ...] = CONSISTENCIES) -> str:
    """Check ``consistency`` is one of ``allowed``: :data:`CONSISTENCIES` (``"kl"``, ``"js"``,
    ``"mse"``) for the softmax/regression losses, :data:`STEP_CONSISTENCIES` (also
    ``"bernoulli"``, multi-label heads) for a training step.

    Raises:
        ValueError: any other value.

    Example:
        >>> from rdrop.losses.checks import STEP_CONSISTENCIES, check_consistency
        >>> check_consistency("js"), check_consistency("bernoulli", allowed=STEP_CONSISTENCIES)
        ('js', 'bernoulli')
    """
    multilabel = ("; 'bernoulli' for multi-label sigmoid heads" if "bernoulli" in allowed
                  else "; for multi-label sigmoid heads use rdrop.multilabel_rdrop_loss"
                  if consistency == "bernoulli" else "")
    return _one_of(name, consistency, allowed, " ('kl' is the paper's symmetric KL, 'js' "
                   f"Jensen-Shannon, 'mse' for regression heads{multilabel})")


def check_label_smoothing(label_smoothing: float, *, name: str = "label_smoothing") -> float:
    r"""Check the label smoothing :math:`\varepsilon \in [0, 1)` applied to each CE term.

    Returns:
        ``float(label_smoothing)``.

    Raises:
        TypeError: not a real number (``None`` included: use ``0.0`` for no smoothing).
        ValueError: outside ``[0, 1)`` or NaN.

    Example:
        >>> from rdrop.losses.checks import check_label_smoothing
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
        >>> from rdrop.losses.checks import check_ignore_index
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
        >>> from rdrop.losses.checks import check_positive_int
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
        >>> from rdrop.losses.checks import check_chunk_size
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
        >>> from rdrop.losses.checks import check_num_items_in_batch
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
        >>> from rdrop.losses.checks import check_loss_combination
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


# --------------------------------------------------------------------------- tensor checks
def check_pair(logits1: Tensor, logits2: Tensor) -> None:
    """Two passes' logits: floating tensors of one shape and device, classes last."""
    for name, t in (("logits1", logits1), ("logits2", logits2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor of logits, got dtype {t.dtype}.")
    if logits1.shape != logits2.shape:
        raise ValueError(
            f"the two passes must have the same shape, got {tuple(logits1.shape)} and "
            f"{tuple(logits2.shape)}. Pass the outputs of the same model on the same batch."
        )
    if logits1.dim() < 1 or logits1.shape[-1] < 1:
        raise ValueError(f"logits need a class dimension last, got shape {tuple(logits1.shape)}.")
    if logits1.device != logits2.device:
        raise ValueError(
            f"the two passes are on different devices ({logits1.device} and {logits2.device}); "
            "compute both with the same model on the same device."
        )


_WARNED_LAYOUTS: set[tuple[int, ...]] = set()


def _warn_ambiguous_layout(shape: tuple[int, ...], target_shape: tuple[int, ...]) -> None:
    """Once per logits shape: both readings of ``(B, C, ...)`` logits fit the target."""
    if shape in _WARNED_LAYOUTS:
        return
    _WARNED_LAYOUTS.add(shape)
    warnings.warn(
        f"logits of shape {shape} with target {target_shape} fit two layouts: classes last "
        f"({shape[-1]} classes, rdrop's reading) and classes in dim 1 ({shape[1]} classes, "
        "F.cross_entropy's (B, C, T) / (B, C, H, W) layout), because those sizes are equal. "
        "rdrop reads the classes last; if yours are in dim 1, pass logits.movedim(1, -1). "
        "(Warned once per shape.)",
        UserWarning,
        stacklevel=4,
    )


def check_class_target(logits: Tensor, target: Tensor) -> None:
    """Class-index targets of the logits' rows: integer, ``logits.shape[:-1]``, same device."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold class indices (an integer tensor), got dtype {target.dtype}. "
            "For regression heads use consistency='mse'."
        )
    channels_first = (logits.shape[0], *logits.shape[2:])
    if logits.dim() >= 3 and tuple(target.shape) == channels_first == tuple(logits.shape[:-1]):
        _warn_ambiguous_layout(tuple(logits.shape), tuple(target.shape))
    if logits.dim() >= 3 and tuple(target.shape) == channels_first != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} matches logits {tuple(logits.shape)} with the "
            "classes in dim 1 (F.cross_entropy's layout); rdrop wants the classes last: pass "
            "logits.movedim(1, -1)."
        )
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}: expected target of shape {tuple(logits.shape[:-1])} "
            "(logits are (N, C) or (B, T, V) with the classes last; shift causal-LM labels first)."
        )
    if logits.shape[-1] == 1:
        # softmax over one class is 1 whatever the logit: CE and KL would be 0, silently.
        raise ValueError(
            f"logits have a single class (shape {tuple(logits.shape)}): its softmax is 1 "
            "whatever the logit, so the loss would be 0. For a binary head use two logits; for "
            "a regression head (or one logit) use consistency='mse' with a floating target."
        )
    if target.device != logits.device:
        raise ValueError(
            f"target is on {target.device} but the logits are on {logits.device}; move it with "
            "target.to(logits.device)."
        )


def check_loss_arguments(*, ignore_index: int, label_smoothing: float, reduction: str,
                         consistency: str, chunk_size: int | None = None,
                         num_passes: int = 2,
                         allowed: tuple[str, ...] = CONSISTENCIES) -> None:
    """The settings of a loss, each alone and then together: the one argument check of every
    loss entry point (a function's call, a module's construction).

    ``allowed``: the consistencies this entry point takes (:data:`STEP_CONSISTENCIES` for a
    training step).

    Raises:
        TypeError, ValueError: as the ``check_*`` above and :func:`check_loss_combination`.

    Example:
        >>> check_loss_arguments(ignore_index=-100, label_smoothing=0.1, reduction="mean",
        ...                      consistency="kl", chunk_size=256)
    """
    check_reduction(reduction)
    check_consistency(consistency, allowed=allowed)
    check_label_smoothing(label_smoothing)
    check_ignore_index(ignore_index)
    check_chunk_size(chunk_size)
    check_loss_combination(consistency=consistency, reduction=reduction,
                           label_smoothing=label_smoothing, chunk_size=chunk_size,
                           num_passes=num_passes)


class Targets:
    """Class targets read once: int64 indices, the rows that count, and the out-of-range rows.

    Any integer dtype is accepted (uint8, int32...) and read as int64 before it is compared with
    ``ignore_index`` (so a uint8 target cannot wrap around to -100). With ``check``, a counted
    target outside ``[0, C)`` is replaced by 0 for the arithmetic and flagged in ``bad``, which
    the one finiteness sync turns into a clear error; without it, ``gather`` sees the raw index
    and PyTorch raises its own index error, so no wrong row is ever silently computed.
    """

    def __init__(self, target: Tensor, num_classes: int, ignore_index: int, check: bool) -> None:
        target = target.long()
        self.keep = target != ignore_index
        if check:
            self.bad: Tensor | None = self.keep & ((target < 0) | (target >= num_classes))
            self.index = torch.where(self.keep & ~self.bad, target, torch.zeros_like(target))
        else:
            self.bad = None
            self.index = torch.where(self.keep, target, torch.zeros_like(target))
        self.raw = target
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.check = check
        self.padding_bad: Tensor | None = None

    def note_padding(self, bad_rows: Tensor) -> None:
        """Flag rows that do not count but whose gradient would be NaN (checked in the sync)."""
        if self.check:
            self.padding_bad = bad_rows & ~self.keep


class Count(NamedTuple):
    """A count a mean divides by that the caller gave (``num_items_in_batch``), and the rows of
    this batch it counts: it must cover them, or the loss is silently scaled up.

    Attributes:
        name: the argument's name, for the message.
        value: the count as the loss divides by it (a Python number or a scalar tensor).
        keep: bool tensor, ``True`` at this batch's rows that the count counts.
        what: what it counts, for the message (``"counted targets"``, ``"utterances"``).
        how: how to count them right, for the message.
    """

    name: str
    value: Tensor | float
    keep: Tensor
    what: str = "counted targets"
    how: str = "count targets != ignore_index (after the causal shift, for a causal LM)"


def check_counts(counts: Sequence[Count]) -> Tensor | None:
    """Every loss's one count check, as a lazy bool for the loss's one device sync: each given
    count is positive and at least this batch's own count of what it counts (a smaller one
    would scale the loss up, silently). ``None`` when there is nothing to check; when the bool
    is false, :func:`raise_count` says which count is wrong and how to fix it.

    Example:
        >>> import torch
        >>> keep = torch.tensor([True, True, False])
        >>> bool(check_counts([Count("num_items_in_batch", 2.0, keep)]))
        True
        >>> bool(check_counts([Count("num_items_in_batch", 1.0, keep)]))
        False
    """
    ok: Tensor | None = None
    for count in counts:
        value = torch.as_tensor(count.value, device=count.keep.device)
        good = (value > 0) & (value >= count.keep.sum())
        ok = good if ok is None else ok & good
    return ok


def raise_count(counts: Sequence[Count]) -> None:
    """Raise for the first count that :func:`check_counts` refused (slow path, after the sync).

    Raises:
        ValueError: a count below 1, or below this batch's own count, naming it and the fix.
    """
    for count in counts:
        value, own = float(count.value), int(count.keep.sum())
        if value < 1:
            raise ValueError(
                f"{count.name} must be >= 1, got {value:g}. It is the number of {count.what} of "
                "the whole accumulated batch; pass None to use this batch's own count."
            )
        if value < own:
            raise ValueError(
                f"{count.name}={value:g} is smaller than this batch's own count of {count.what} "
                f"({own}), which would scale the loss up by {own / value:.3g}x or more. It is the "
                f"number of {count.what} of the whole accumulated batch (and, under DDP, of all "
                f"processes), so at least this batch's: {count.how}, or pass None to use this "
                "batch's own count."
            )


def check_result(
    loss: Tensor | None,
    inputs: Sequence[Tensor],
    *,
    denom: Tensor | float,
    targets: Targets | None,
    label_smoothing: float,
    values: Tensor | None = None,
    counted: Tensor | None = None,
    counts: Sequence[Count] = (),
) -> None:
    """The one device sync of ``check_finite``: the reduced loss is finite, the targets that
    count are in range, a tensor ``num_items_in_batch`` is positive and (``counted``: the rows
    that count, when ``num_items_in_batch`` was given for a mean) at least this batch's own
    count, as is every other given count of ``counts`` (:func:`check_counts`); all in one fused
    ``bool``. Only when that fails are the inputs read again, to say which of these went
    wrong."""
    if counted is not None:
        counts = [Count("num_items_in_batch", denom, counted), *counts]
    ok: Tensor | None = None
    if loss is not None:
        ok = torch.isfinite(loss.detach()).all()
    if isinstance(denom, Tensor):
        ok = denom > 0 if ok is None else ok & (denom > 0)
    enough = check_counts(counts)
    if enough is not None:
        ok = enough if ok is None else ok & enough.to(ok.device)
    if targets is not None and targets.bad is not None:
        good = ~targets.bad.any()
        ok = good if ok is None else ok & good.to(ok.device)
    if targets is not None and targets.padding_bad is not None:
        good = ~targets.padding_bad.any()
        ok = good if ok is None else ok & good.to(ok.device)
    if ok is None or bool(ok):
        return
    _raise_diagnosis(loss, inputs, denom=denom, targets=targets,
                     label_smoothing=label_smoothing, values=values, counts=counts)


def _raise_diagnosis(
    loss: Tensor | None,
    inputs: Sequence[Tensor],
    *,
    denom: Tensor | float,
    targets: Targets | None,
    label_smoothing: float,
    values: Tensor | None = None,
    counts: Sequence[Count] = (),
) -> None:
    # Slow path, reached only when the check failed: find the first cause the user can fix.
    if isinstance(denom, Tensor) and not bool(denom > 0):
        raise ValueError(
            f"num_items_in_batch must be >= 1, got {int(denom)}. It is the number of counted "
            "(non-ignored) targets of the whole accumulated batch; pass None to use this "
            "batch's own count."
        )
    raise_count(counts)
    if targets is not None and targets.bad is not None and bool(targets.bad.any()):
        found = targets.raw[targets.bad]
        raise ValueError(
            f"target holds class indices outside [0, {targets.num_classes}) at rows that count: "
            f"min {int(found.min())}, max {int(found.max())} ({found.numel()} rows). Targets must "
            f"be class indices below the number of classes (logits.shape[-1]); padding rows must "
            f"equal ignore_index={targets.ignore_index} (set ignore_index to your padding value)."
        )
    loss_finite = loss is None or bool(torch.isfinite(loss.detach()).all())
    padding_bad = targets.padding_bad if targets is not None else None
    if loss_finite and padding_bad is not None and bool(padding_bad.any()):
        n = int(padding_bad.sum())
        raise FloatingPointError(
            f"R-Drop loss is finite, but {n} row(s) that do not count (target == ignore_index) "
            "hold NaN or +inf logits (or, for 'kl', a class masked with "
            "-inf in one pass only): their loss is 0 but their gradient would be NaN (as with "
            "F.cross_entropy), and would reach the weights. Fix the model's output at padding "
            "positions (e.g. a fully masked attention row), or pass check_finite=False."
        )
    detached = [t.detach() for t in inputs]
    nan = [f"pass {i + 1}" for i, t in enumerate(detached) if bool(torch.isnan(t).any())]
    if nan:
        raise FloatingPointError(
            f"R-Drop loss is not finite (NaN in the logits of {', '.join(nan)}). The model "
            "diverged or produced invalid outputs: lower the learning rate, clip gradients, "
            "prefer bf16 over fp16, and check the inputs. Pass check_finite=False to skip "
            "this check."
        )
    if values is not None and not bool(torch.isfinite(values.detach()).all()):
        raise ValueError(
            "R-Drop loss is not finite: the regression target holds NaN or inf. Drop or "
            "impute those samples before the loss."
        )
    posinf = [f"pass {i + 1}" for i, t in enumerate(detached) if bool(torch.isposinf(t).any())]
    if posinf:
        raise FloatingPointError(
            f"R-Drop loss is not finite (+inf in the logits of {', '.join(posinf)}): softmax of "
            "+inf is undefined. Clamp the logits or check the model's output layer."
        )
    neginf = [torch.isneginf(t) for t in detached]
    if any(bool(m.any()) for m in neginf):
        if targets is not None and label_smoothing > 0:
            raise ValueError(
                f"R-Drop loss is infinite: a logit is -inf and label_smoothing={label_smoothing}"
                " > 0. Label smoothing gives every class, masked ones included, a target mass "
                "of label_smoothing / num_classes, so a masked class adds that much times its "
                "-log-probability: infinite for -inf, and as large as the mask for a finite "
                "one (a mask of torch.finfo(dtype).min gives a loss near 1e36). Masked classes "
                "and label smoothing do not mix: use label_smoothing=0, or drop the masked "
                "classes from the logits (and remap the targets) before the loss."
            )
        if targets is not None and any(
            m.shape[-1] == targets.num_classes  # logits (not the fused path's hidden states)
            and bool((m.gather(-1, targets.index.unsqueeze(-1)).squeeze(-1) & targets.keep).any())
            for m in neginf
        ):
            raise ValueError(
                "R-Drop loss is infinite: the target class of a counted row has logit -inf "
                "(probability 0). Do not mask a row's own target class; set that row's target "
                "to ignore_index if it should not count."
            )
        if any(bool((m != neginf[0]).any()) for m in neginf[1:]):
            raise ValueError(
                "R-Drop loss is infinite: a class is masked (-inf) in one pass but not in "
                "another, so the KL between the passes is infinite. Mask the same classes in "
                "every pass."
            )
    raise FloatingPointError(
        "R-Drop loss is not finite (overflow in the loss). The model diverged or produced "
        "invalid outputs: lower the learning rate, clip gradients, prefer bf16 over fp16, and "
        "check the inputs. Pass check_finite=False to skip this check."
    )


@torch.no_grad()
def non_finite_rows(passes: list[Tensor]) -> Tensor:
    """Rows where any pass holds a NaN or +inf logit (-inf is a masked class, allowed).

    One fp32 row sum per pass, no full-size temporary: the sum is NaN or +inf exactly when the
    row holds a NaN or a +inf (a +inf beside a -inf sums to NaN), -inf when only -inf."""
    sums = torch.stack([x.detach().sum(-1, dtype=torch.float32) for x in passes])
    return (torch.isnan(sums) | (sums == float("inf"))).any(0)


@torch.no_grad()
def non_finite_hidden_rows(h1: Tensor, h2: Tensor) -> Tensor:
    """Rows where either pass's hidden state holds a NaN or an inf (any inf makes NaN logits)."""
    return ~(torch.isfinite(h1).all(-1) & torch.isfinite(h2).all(-1))


def check_fused_inputs(hidden1: Tensor, hidden2: Tensor, weight: Tensor, bias: Tensor | None,
                  target: Tensor) -> None:
    """The fused loss's tensors: hidden states of one shape and dtype, a ``(V, H)`` weight,
    an optional ``(V,)`` bias, class-index targets of the hidden states' rows."""
    named = {"hidden1": hidden1, "hidden2": hidden2, "weight": weight}
    if bias is not None:
        named["bias"] = bias
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}.")
        if t.dtype != hidden1.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but hidden1 has {hidden1.dtype}; the projection "
                "needs one dtype (cast the hidden states or run under autocast before the head)."
            )
    if hidden1.shape != hidden2.shape or hidden1.dim() < 1:
        raise ValueError(
            f"hidden1 and hidden2 must have the same shape (..., H), got {tuple(hidden1.shape)} "
            f"and {tuple(hidden2.shape)}."
        )
    if weight.dim() != 2 or weight.shape[1] != hidden1.shape[-1]:
        raise ValueError(
            f"weight must have shape (V, H) with H = hidden1.shape[-1] = {hidden1.shape[-1]}, "
            f"got {tuple(weight.shape)} (pass the nn.Linear head's .weight)."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold class indices (an integer tensor), got {target.dtype}.")
    if tuple(target.shape) != tuple(hidden1.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal hidden1.shape[:-1] = "
            f"{tuple(hidden1.shape[:-1])} (shift causal-LM labels first)."
        )
