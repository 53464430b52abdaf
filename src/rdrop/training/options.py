"""How a training step runs its passes and compares them: one frozen options object, checked once.

Every entry point (:class:`rdrop.RDrop`, the Lightning module, the Hugging Face trainers, the
experiment harness) builds one :class:`StepOptions` from its own arguments and hands it to
:class:`rdrop.training.step.TrainingStep`; the step trusts it. The rules that tie options
together (the stop-gradient variant needs two passes, the subset variant needs two passes and a
per-row mean, the fused head computes the symmetric KL of two passes, ...) live in
:meth:`StepOptions.validate` and nowhere else. The loss's own rules (label smoothing with a
regression head, the chunked loss's settings) are the losses wing's
(:func:`rdrop.losses.checks.check_loss_arguments`, shared with :func:`rdrop.rdrop_loss`), called
from there. *When* R-Drop runs is :class:`rdrop.Schedule`'s, not this object's.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any

from rdrop.losses.checks import (
    IGNORE_INDEX,
    STEP_CONSISTENCIES,
    check_loss_arguments,
    check_positive_int,
)
from rdrop.losses.subset import check_second_pass_fraction
from rdrop.training.noise import Noise, parse_noise

__all__ = ["MODES", "StepOptions", "option_property"]

MODES = ("concat", "twice")


@dataclass(frozen=True)
class StepOptions:
    """The options of a training step, checked once at construction (:meth:`validate`).

    Values are kept in their canonical form (``int``, ``float``, a parsed
    :class:`rdrop.training.noise.Noise`), so two options objects built from equal arguments
    compare equal.

    Args:
        consistency: ``"kl"``, ``"js"``, ``"mse"`` (regression heads) or ``"bernoulli"``
            (multi-label sigmoid heads).
        ignore_index, label_smoothing, reduction, chunk_size, check_finite: as in
            :func:`rdrop.rdrop_loss` (``chunk_size``: rows per chunk of the chunked loss, or of
            the fused head's loss with ``fused_linear``).
        num_passes: ``m >= 2`` passes on an R-Drop step.
        mode: ``"concat"`` (one forward over ``[x; x]``) or ``"twice"`` (one forward per pass).
        stop_gradient: the second pass runs under ``torch.no_grad`` (needs two passes).
        second_pass_fraction: ``r`` in ``(0, 1]``: the second pass on the first ``ceil(r * B)``
            rows only (needs two passes, a class or regression head and ``reduction="mean"``).
        noise: where the passes' randomness comes from (:func:`rdrop.training.noise.parse_noise`).
        fused_linear: the loss from the output layer's input and weights (the Hugging Face
            trainers' language-model path): two passes, ``"kl"``, an int ``chunk_size``.
        prefix: not stored: the prefix of the option names in the entry point's own API
            (``"rdrop_"`` for the Hugging Face trainers), so that a message names the argument
            the user wrote.

    Raises:
        TypeError, ValueError: see :meth:`validate`.

    Example:
        >>> StepOptions(num_passes=3).num_passes, str(StepOptions(noise="dropout:0.1").noise)
        (3, 'dropout:0.1')
        >>> StepOptions(num_passes=3, second_pass_fraction=0.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: second_pass_fraction=0.5 compares two passes ... got num_passes=3 (use ...
    """

    consistency: str = "kl"
    ignore_index: int = IGNORE_INDEX
    label_smoothing: float = 0.0
    reduction: str = "mean"
    chunk_size: int | None = None
    check_finite: bool = True
    num_passes: int = 2
    mode: str = "concat"
    stop_gradient: bool = False
    second_pass_fraction: float = 1.0
    noise: str | Noise | None = "dropout"
    fused_linear: bool = False
    prefix: InitVar[str] = ""

    def __post_init__(self, prefix: str) -> None:
        self.validate(prefix=prefix)

    def validate(self, *, prefix: str = "") -> None:
        """Check each option, then every rule that ties options together, and store the
        canonical values. Construction calls it, once.

        The rules:

        * ``stop_gradient=True`` needs ``num_passes=2`` (one gradient pass, one detached target);
        * ``second_pass_fraction < 1`` needs ``num_passes=2``, a class or regression head (not
          ``"bernoulli"``), ``reduction="mean"`` and the logits (not ``fused_linear``);
        * ``fused_linear=True`` needs ``num_passes=2``, ``consistency="kl"`` and an int
          ``chunk_size``;
        * the loss's: ``label_smoothing`` not with ``"mse"`` or ``"bernoulli"``; ``chunk_size``
          only with two passes, ``"kl"`` and a reduction other than ``"none"``
          (:func:`rdrop.losses.checks.check_loss_combination`).

        Args:
            prefix: the prefix of the option names in the messages (see the class).

        Raises:
            TypeError: an option of the wrong type (a bool flag that is not a bool, a string
                where a number goes...).
            ValueError: an option out of range, or options that do not go together; the message
                names them and how to fix it.
        """
        p = prefix
        set_ = object.__setattr__
        set_(self, "num_passes", check_positive_int(f"{p}num_passes", self.num_passes, 2))
        if self.mode not in MODES:
            raise ValueError(f"{p}mode must be one of {MODES}, got {self.mode!r}.")
        for name in ("stop_gradient", "check_finite", "fused_linear"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"{p}{name} must be a bool, got {type(getattr(self, name)).__name__}.")
        set_(self, "second_pass_fraction", check_second_pass_fraction(
            self.second_pass_fraction, name=f"{p}second_pass_fraction"))
        try:
            set_(self, "noise", parse_noise(self.noise))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{p}{err}") from None
        n, fraction = self.num_passes, self.second_pass_fraction
        if self.stop_gradient and n != 2:
            raise ValueError(
                f"{p}stop_gradient=True uses one gradient pass and one detached target pass; "
                f"{p}num_passes must be 2, got {n}."
            )
        if fraction < 1.0:
            wrong = [f"{p}num_passes={n} (use {p}num_passes=2)"] if n != 2 else []
            if self.consistency == "bernoulli":
                wrong.append(f"{p}consistency='bernoulli' (the subset loss takes a class or "
                             "regression head: 'kl', 'js' or 'mse')")
            if self.reduction != "mean":
                wrong.append(f"{p}reduction={self.reduction!r} (use reduction='mean')")
            if self.fused_linear:
                wrong.append(f"{p}fused_linear=True (use {p}fused_linear=False: the subset loss "
                             "compares logits)")
            if wrong:
                raise ValueError(
                    f"{p}second_pass_fraction={fraction} compares two passes with per-row means "
                    f"over B and over the subset (rdrop.losses.subset); got {'; '.join(wrong)}. "
                    f"Change those, or use {p}second_pass_fraction=1.0."
                )
        if self.fused_linear:
            if n != 2:
                raise ValueError(
                    f"{p}fused_linear=True supports {p}num_passes=2 only (the fused loss "
                    f"compares two passes), got {n}. Use {p}num_passes=2 or "
                    f"{p}fused_linear=False."
                )
            if self.consistency != "kl":
                raise ValueError(
                    f"{p}fused_linear=True computes the symmetric KL only, got {p}consistency="
                    f"{self.consistency!r}. Use {p}consistency='kl' or {p}fused_linear=False."
                )
            if self.chunk_size is None:
                raise TypeError(
                    f"{p}fused_linear=True computes the loss {p}chunk_size rows at a time: "
                    f"{p}chunk_size must be a positive int, got None (256, "
                    "rdrop.losses.checks.CHUNK_SIZE, measured best)."
                )
        check_loss_arguments(ignore_index=self.ignore_index,
                             label_smoothing=self.label_smoothing, reduction=self.reduction,
                             consistency=self.consistency, chunk_size=self.chunk_size,
                             num_passes=n, allowed=STEP_CONSISTENCIES)
        set_(self, "ignore_index", int(self.ignore_index))
        set_(self, "label_smoothing", float(self.label_smoothing))


def option_property(name: str, *, via: str = "options") -> property:
    """A read-only property for option ``name`` of the :class:`StepOptions` an object holds in
    its attribute ``via``: one copy of each option, so that setting it fails loudly instead of
    being ignored by the step.

    Args:
        name: a field of :class:`StepOptions`.
        via: the attribute of the object that holds its options.

    Example:
        >>> class Holder:
        ...     num_passes = option_property("num_passes")
        ...     def __init__(self):
        ...         self.options = StepOptions(num_passes=3)
        >>> Holder().num_passes
        3
        >>> Holder().num_passes = 4  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AttributeError: ...
    """
    if name not in StepOptions.__dataclass_fields__:
        raise ValueError(f"{name!r} is not an option of StepOptions.")

    def get(obj: Any) -> Any:
        return getattr(getattr(obj, via), name)

    get.__name__ = name
    return property(get, doc=f"The step's ``{name}`` (its :class:`StepOptions`).")
