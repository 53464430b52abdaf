r"""The R-Drop training step: given the schedule's decision, run the passes and return the loss.

Every entry point runs its training step through this module: :class:`rdrop.RDrop`, the Hugging
Face trainers (:mod:`rdrop.integrations.hf`, and TRL's through them), the Lightning module
(:mod:`rdrop.integrations.lightning`) and the experiment harness (``rdrop_experiments.training``).
So the input checks and the pass logic exist once and every entry point gets them.

One step, in three parts::

    step = TrainingStep(StepOptions(...))          # built once, its options checked once
    decision = schedule.decision(s)                 # when (rdrop.Schedule, also checked once)
    plan = step.plan(decision)                      # how many passes, and how they run
    result = step.run(model, args, kwargs, target, plan)   # the passes, then the loss

1. **When** (:meth:`rdrop.Schedule.decision`): a pure function of the optimizer step.
2. **How** (:meth:`TrainingStep.plan` -> :class:`PassPlan`): ``passes`` forwards (1 on a plain
   step), in one forward over the concatenated copies (``mode="concat"``) or one forward per
   pass (``mode="twice"``), the last ``detached`` of them under ``torch.no_grad`` (the
   stop-gradient variant).
3. **The passes and the loss** (:meth:`TrainingStep.run`): the inputs duplicated by
   :func:`rdrop.training.batching.concat_inputs`, checked once against a plain forward (an input
   whose dim 0 equals ``B`` by coincidence, a sequence-first ``nn.LSTM``), the logits split, then
   the loss of the passes (:class:`LogitsLoss`, or an entry point's own, e.g. the fused output layer
   of the HF trainers):

   .. math::
       \mathcal{L} = \sum_{k=1}^{m} CE(P^k, y) + \alpha_s \cdot \overline{D}(P^j, P^k)
       \quad\text{(R-Drop step)}, \qquad
       \mathcal{L} = CE(P^1, y) \quad\text{(plain step)},

   and with ``stop_gradient``:
   :math:`\mathcal{L} = CE(P^1, y) + \alpha_s\, D_{sym}(P^1, \mathrm{sg}(P^2))`.

Where the next options plug in
------------------------------
* ``start_step`` (plain single-pass training before optimizer step ``s0``, or an automatic
  start, :class:`rdrop.AutoStart`): a *when* option of
  :func:`rdrop.training.schedule.rdrop_step` (inactive for ``s < s0``; a start rule's
  :class:`rdrop.Schedule` for an automatic start); this module runs the plain step as for any
  inactive decision.
* ``second_pass_fraction=r`` (the second pass on the first ``ceil(r * B)`` rows only): a *how*
  option. :meth:`TrainingStep.plan` records it in the plan (:attr:`PassPlan.fraction`); the
  passes come from :func:`rdrop.training.subset.subset_inputs` (one forward over ``[x; x[:n]]`` in
  concat mode, else a second forward over ``x[:n]``, under ``torch.no_grad`` with ``stop_gradient``)
  and the loss is the loss's ``subset`` method (:meth:`LogitsLoss.subset`,
  :func:`rdrop.subset_rdrop_loss`).
* ``noise=`` (where each pass's randomness comes from): the ``pass_context`` hook. It is called
  as ``pass_context(passes, plan)`` and entered around each forward, with ``passes`` the
  ``range`` of pass indices that forward computes (``range(0, m)`` for the one concat forward,
  ``range(k, k + 1)`` for pass ``k`` of separate forwards, ``range(0, 1)`` on a plain step), so
  a source of noise can switch dropout on, perturb embeddings or set per-pass rates there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from rdrop.losses.checks import IGNORE_INDEX, check_loss_arguments, check_num_items_in_batch
from rdrop.losses.functional import RDropOutput, _multi_pass, _single_pass
from rdrop.losses.multilabel import MultiLabelLoss
from rdrop.losses.subset import _subset_rdrop_loss
from rdrop.training.batching import ConcatLayout, InputName, concat_inputs, extract_logits
from rdrop.training.inspection import batchnorm_layers
from rdrop.training.options import MODES, StepOptions, option_property
from rdrop.training.schedule import RDropStep
from rdrop.training.subset import SubsetLayout, subset_inputs

__all__ = ["MODES", "LogitsLoss", "PassLoss", "PassPlan", "StepResult", "TrainingStep", "eager",
           "pass_loss"]

PassContext = Callable[[range, "PassPlan"], AbstractContextManager[Any]]
BatchCheck = Callable[[tuple[Any, ...], dict[str, Any], "ConcatLayout | None"], None]
Align = Callable[[list[Tensor], Tensor], tuple[list[Tensor], Tensor]]


def eager(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` outside any compiled graph (a graph break while torch.compile traces).

    ``torch.compiler.disable`` imports ``torch._dynamo`` (~3 s), so it is applied only while
    compiling, never at ``import rdrop`` or in eager training.
    """
    if torch.compiler.is_compiling():
        return torch.compiler.disable(fn)(*args)
    return fn(*args)


@dataclass(frozen=True)
class PassPlan:
    """How one step runs its passes (:meth:`TrainingStep.plan` of a schedule decision).

    Attributes:
        passes: forward passes of this step: ``num_passes`` on an R-Drop step, 1 on a plain one.
        alpha: the consistency weight of this step (0.0 on a plain step).
        concat: one forward over the concatenated copies (True) or one forward per pass.
        detached: how many of the last passes run under ``torch.no_grad`` (stop-gradient: 1).
        fraction: the second pass runs on the first ``ceil(fraction * B)`` rows (1.0: all).
    """

    passes: int
    alpha: float
    concat: bool
    detached: int = 0
    fraction: float = 1.0

    @property
    def active(self) -> bool:
        """Whether this step compares passes (R-Drop) or is a plain single-pass step."""
        return self.passes > 1


class PassLoss(Protocol):
    """The loss of a step's passes: ``loss(passes, target, alpha, num_items_in_batch)``.

    One pass is a plain step (the task loss; ``consistency_loss`` 0); several are R-Drop with
    ``loss = task_loss + alpha * consistency_loss``.
    """

    def __call__(self, passes: list[Tensor], target: Tensor, alpha: float,
                 num_items_in_batch: int | Tensor | None) -> RDropOutput: ...


@dataclass(frozen=True)
class LogitsLoss:
    """The R-Drop loss of logits: :func:`rdrop.losses.functional.single_pass_loss` of one pass,
    :func:`rdrop.multi_pass_rdrop_loss` of several.

    The loss functions run with a fixed ``alpha`` of 1 and the step's alpha is applied after
    them: they check their ``alpha`` in Python, which under ``torch.compile`` would guard on
    (and recompile for) every warm-up value.

    Attributes:
        consistency, ignore_index, label_smoothing, reduction, chunk_size, check_finite: as in
            :func:`rdrop.rdrop_loss`, checked once at construction; a call checks
            only its ``num_items_in_batch``.

    Raises:
        TypeError, ValueError: invalid settings (at construction).

    Example:
        >>> import torch
        >>> from rdrop.losses.functional import rdrop_loss
        >>> p1, p2, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
        >>> out = LogitsLoss()([p1, p2], y, 0.5, None)
        >>> bool(torch.allclose(out.loss, rdrop_loss(p1, p2, y, alpha=0.5).loss))
        True
    """

    consistency: str = "kl"
    ignore_index: int = IGNORE_INDEX
    label_smoothing: float = 0.0
    reduction: str = "mean"
    chunk_size: int | None = None
    check_finite: bool = True

    def __post_init__(self) -> None:
        check_loss_arguments(ignore_index=self.ignore_index,
                             label_smoothing=self.label_smoothing, reduction=self.reduction,
                             consistency=self.consistency, chunk_size=self.chunk_size)
        if not isinstance(self.check_finite, bool):
            raise TypeError(
                f"check_finite must be a bool, got {type(self.check_finite).__name__}.")

    def __call__(self, passes: list[Tensor], target: Tensor, alpha: float,
                 num_items_in_batch: int | Tensor | None = None) -> RDropOutput:
        kwargs: dict[str, Any] = {
            "ignore_index": self.ignore_index, "label_smoothing": self.label_smoothing,
            "reduction": self.reduction, "consistency": self.consistency,
            "num_items_in_batch": check_num_items_in_batch(num_items_in_batch),
            "check_finite": self.check_finite,
        }
        if len(passes) == 1:
            return _single_pass(passes[0], target, **kwargs)
        out = _multi_pass(passes, target, alpha=1.0, chunk_size=self.chunk_size, **kwargs)
        return RDropOutput(out.task_loss + alpha * out.consistency_loss, out.task_loss,
                           out.consistency_loss)

    def subset(self, first: Tensor, second: Tensor, target: Tensor, alpha: float, *,
               stop_gradient: bool, num_items_in_batch: int | Tensor | None = None,
               num_items_in_subset: int | Tensor | None = None) -> RDropOutput:
        """:func:`rdrop.subset_rdrop_loss` of a first pass over ``B`` rows and a second
        over the first ``n`` (``reduction="mean"``; computed unchunked), the step's alpha
        applied after it as in :meth:`__call__`."""
        out = _subset_rdrop_loss(first, second, target, alpha=1.0,
                                 ignore_index=self.ignore_index,
                                 label_smoothing=self.label_smoothing,
                                 consistency=self.consistency, stop_gradient=stop_gradient,
                                 num_items_in_batch=num_items_in_batch,
                                 num_items_in_subset=num_items_in_subset,
                                 check_finite=self.check_finite)
        return RDropOutput(out.task_loss + alpha * out.consistency_loss, out.task_loss,
                           out.consistency_loss)


def pass_loss(consistency: str = "kl", *, ignore_index: int = IGNORE_INDEX,
              label_smoothing: float = 0.0, reduction: str = "mean",
              chunk_size: int | None = None, check_finite: bool = True) -> PassLoss:
    """The step's loss for a head: :class:`rdrop.losses.multilabel.MultiLabelLoss` (BCE task terms,
    per-label Bernoulli KL) for ``consistency="bernoulli"``, :class:`LogitsLoss` otherwise.
    The one place an entry point's ``consistency`` picks the head's loss; the options are
    checked here (as :class:`LogitsLoss` checks its own).

    Raises:
        TypeError, ValueError: an invalid option (``label_smoothing`` or ``chunk_size`` with
            ``"bernoulli"`` among them).

    Example:
        >>> type(pass_loss("bernoulli")).__name__, type(pass_loss("kl")).__name__
        ('MultiLabelLoss', 'LogitsLoss')
    """
    return _options_loss(StepOptions(consistency=consistency, ignore_index=ignore_index,
                                     label_smoothing=label_smoothing, reduction=reduction,
                                     chunk_size=chunk_size, check_finite=check_finite))


def _options_loss(options: StepOptions) -> PassLoss:
    """The loss of :func:`pass_loss` for checked options."""
    if options.consistency == "bernoulli":
        return MultiLabelLoss(reduction=options.reduction, check_finite=options.check_finite)
    return LogitsLoss(consistency=options.consistency, ignore_index=options.ignore_index,
                      label_smoothing=options.label_smoothing, reduction=options.reduction,
                      chunk_size=options.chunk_size, check_finite=options.check_finite)


_LOSS_OPTIONS = ("consistency", "ignore_index", "label_smoothing", "reduction", "chunk_size",
                 "check_finite")


def _loss_options(loss: PassLoss | None) -> dict[str, Any]:
    """The options a loss object was built with (for a step built from keywords)."""
    if isinstance(loss, MultiLabelLoss):
        return {"consistency": "bernoulli", "reduction": loss.reduction,
                "check_finite": loss.check_finite}
    if isinstance(loss, LogitsLoss):
        return {name: getattr(loss, name) for name in _LOSS_OPTIONS}
    return {}


@dataclass(frozen=True)
class StepResult:
    """What :meth:`TrainingStep.run` returns.

    Attributes:
        out: the loss and its parts; ``out.logits`` is the first pass (after ``align``).
        passes: each pass's logits (after ``align``).
        target: the target the loss compared them with (after ``align``).
        output: the model's raw output of the first forward (all copies in concat mode).
        layout: how the copies were concatenated (``None`` without a concat forward; a
            :class:`rdrop.training.subset.SubsetLayout` for ``[x; x[:n]]``).
    """

    out: RDropOutput
    passes: list[Tensor]
    target: Tensor
    output: Any
    layout: ConcatLayout | SubsetLayout | None

    def first_output(self) -> Any:
        """The model output of the first pass (the concat output split back to one copy)."""
        if self.layout is None or self.layout.copies == 1:
            return self.output
        return self.layout.split_output(self.output)[0]


class TrainingStep:
    """Run the passes of one training step and return the R-Drop loss (see the module doc).

    The step's options are a :class:`rdrop.training.options.StepOptions`, checked there, once;
    the rest are how an entry point wires the step to its model.

    Args:
        options: the options (default ``StepOptions()``). Without it, the keywords
            ``num_passes``, ``mode``, ``stop_gradient`` and ``second_pass_fraction`` build it,
            with the loss's options read from ``loss`` (:class:`LogitsLoss`,
            :class:`rdrop.losses.multilabel.MultiLabelLoss`), so that their rules are checked
            too; with it, those keywords are refused.
        loss: the loss of the passes: default the options' (:class:`LogitsLoss`, or
            :class:`rdrop.losses.multilabel.MultiLabelLoss` for ``"bernoulli"``); an entry
            point's own (the fused output layer of the HF trainers) computes what the options
            say. With ``second_pass_fraction < 1`` it needs a ``subset`` method.
        logits_fn: selects the logits from the model's output (default
            :func:`rdrop.training.batching.extract_logits`).
        batched, unbatched: which inputs carry the batch
            (:func:`rdrop.training.batching.concat_inputs`).
        check_inputs: on the first concat forward, check in eval mode and without gradients
            that each copy of the duplicated batch gives the plain forward's logits (two extra
            forwards, once): an input duplicated by coincidence fails here.
        pass_context: ``pass_context(passes, plan)`` gives a context manager entered around
            each forward (``passes``: the ``range`` of pass indices it computes).
        check_batch: called with the inputs as the model will see them and their layout
            (``None`` for a single plain forward) before each forward: an entry point's own
            refusals (the HF trainers' packed-batch metadata check).
        align: maps ``(passes, target)`` to what the loss compares (a causal LM's shift).
        num_passes, mode, stop_gradient, second_pass_fraction: the options as keywords (see
            ``options``).

    Raises:
        TypeError, ValueError (at construction): invalid options
            (:meth:`rdrop.training.options.StepOptions.validate`), both ``options`` and option
            keywords, a loss without ``subset`` for ``second_pass_fraction < 1``, a
            ``logits_fn`` that is not callable.
        ValueError (at :meth:`run`): an empty batch on an R-Drop step; a failed input check;
            batch size 1 with BatchNorm in concat mode; logits without ``passes * B`` rows.
        TypeError (at :meth:`run`): the output holds no logits.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from rdrop.training.options import StepOptions
        >>> from rdrop.training.schedule import Schedule
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3))
        >>> step = TrainingStep(StepOptions(num_passes=2))
        >>> x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
        >>> plan = step.plan(Schedule(alpha=1.0).decision(0))
        >>> result = step.run(net, (x,), {}, y, plan)
        >>> plan.passes, result.out.logits.shape, bool(result.out.consistency_loss > 0)
        (2, torch.Size([5, 3]), True)
    """

    def __init__(self, options: StepOptions | None = None, *, loss: PassLoss | None = None,
                 logits_fn: Callable[[Any], Tensor] = extract_logits,
                 batched: Collection[InputName] | None = None,
                 unbatched: Collection[InputName] | None = None, check_inputs: bool = True,
                 pass_context: PassContext | None = None, check_batch: BatchCheck | None = None,
                 align: Align | None = None, num_passes: int | None = None,
                 mode: str | None = None, stop_gradient: bool | None = None,
                 second_pass_fraction: float | None = None) -> None:
        given = {name: value for name, value in (
            ("num_passes", num_passes), ("mode", mode), ("stop_gradient", stop_gradient),
            ("second_pass_fraction", second_pass_fraction)) if value is not None}
        if options is None:
            options = StepOptions(**given, **_loss_options(loss))
        elif not isinstance(options, StepOptions):
            raise TypeError(
                f"options must be a rdrop.training.options.StepOptions, got "
                f"{type(options).__name__}; or give num_passes=... and the others as keywords.")
        elif given:
            raise TypeError(
                f"TrainingStep takes its options as options= or as keywords, not both; got "
                f"options and {sorted(given)}. Use dataclasses.replace(options, ...) to change "
                "some of them.")
        if loss is None:
            loss = _options_loss(options)
        elif options.second_pass_fraction < 1.0 and not hasattr(loss, "subset"):
            raise ValueError(
                f"second_pass_fraction={options.second_pass_fraction} compares two passes with a "
                f"loss that can take a subset of the rows (a subset method, as LogitsLoss); got "
                f"{type(loss).__name__}. Use the logits loss, or second_pass_fraction=1.0."
            )
        if not isinstance(check_inputs, bool):
            raise TypeError(f"check_inputs must be a bool, got {type(check_inputs).__name__}.")
        if not callable(logits_fn):
            raise TypeError(f"logits_fn must be callable, got {type(logits_fn).__name__}.")
        self.options = options
        self.loss = loss
        self.logits_fn = logits_fn
        self.batched, self.unbatched = batched, unbatched
        self.check_inputs = check_inputs
        self.pass_context, self.check_batch, self.align = pass_context, check_batch, align
        self._inputs_checked = False
        self._batchnorms: tuple[nn.Module, ...] | None = None

    num_passes = option_property("num_passes")
    mode = option_property("mode")
    stop_gradient = option_property("stop_gradient")
    second_pass_fraction = option_property("second_pass_fraction")

    def __repr__(self) -> str:
        return f"TrainingStep({self.options!r}, loss={self.loss!r})"

    # --------------------------------------------------------------------------------- plan
    def plan(self, decision: RDropStep) -> PassPlan:
        """The passes of a step with this schedule decision.

        Example:
            >>> TrainingStep(num_passes=3).plan(RDropStep(active=True, alpha=0.5))
            PassPlan(passes=3, alpha=0.5, concat=True, detached=0, fraction=1.0)
            >>> TrainingStep(stop_gradient=True).plan(RDropStep(active=False, alpha=0.0))
            PassPlan(passes=1, alpha=0.0, concat=False, detached=0, fraction=1.0)
        """
        if not decision.active:
            return PassPlan(passes=1, alpha=0.0, concat=False)
        fraction = self.second_pass_fraction
        if self.stop_gradient:
            return PassPlan(passes=2, alpha=decision.alpha, concat=False, detached=1,
                            fraction=fraction)
        return PassPlan(passes=self.num_passes, alpha=decision.alpha,
                        concat=self.mode == "concat", fraction=fraction)

    # ---------------------------------------------------------------------------------- run
    def run(self, model: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
            target: Tensor, plan: PassPlan, *, num_items_in_batch: int | Tensor | None = None,
            num_items_in_subset: int | Tensor | None = None,
            module: nn.Module | None = None) -> StepResult:
        """Run ``plan``'s passes of ``model(*args, **kwargs)`` and the loss against ``target``.

        Args:
            model: what to call for a forward (the model, or its DDP/compiled wrapper).
            args, kwargs: the inputs of one (single-copy) call.
            target: the targets of one copy.
            plan: from :meth:`plan`.
            num_items_in_batch: the count to normalize by (gradient accumulation, DDP).
            num_items_in_subset: with ``plan.fraction < 1``, the count of the second pass's
                rows over the whole accumulated batch (:func:`rdrop.losses.subset.subset_count`);
                give it together with ``num_items_in_batch``.
            module: the ``nn.Module`` whose train/eval modes the input check switches and whose
                BatchNorm layers are looked at (default: ``model``).

        Returns:
            :class:`StepResult`.
        """
        args = tuple(args)
        module = module if module is not None else model  # type: ignore[assignment]
        if plan.active and isinstance(target, Tensor) and target.dim() and not target.shape[0]:
            raise ValueError(
                f"the batch is empty (target of shape {tuple(target.shape)}): R-Drop compares "
                "the passes of at least one sample. Skip empty batches before the training step "
                "(e.g. DataLoader(..., drop_last=True) or a filter in the collator)."
            )
        if plan.fraction < 1.0 and plan.active:
            output, passes, layout = self._subset(model, module, args, kwargs, plan)
        elif plan.concat:
            output, passes, layout = self._concat(model, module, args, kwargs, plan)
        else:
            (output, passes), layout = self._separate(model, args, kwargs, plan), None
        if self.align is not None:
            passes, target = self.align(passes, target)
        if plan.fraction < 1.0 and plan.active:
            out = self.loss.subset(  # type: ignore[attr-defined]
                passes[0], passes[1], target, plan.alpha, stop_gradient=bool(plan.detached),
                num_items_in_batch=num_items_in_batch, num_items_in_subset=num_items_in_subset)
        elif plan.detached:
            out = self._stop_gradient_loss(passes, target, plan, num_items_in_batch)
        else:  # called here, not one frame deeper: each frame adds a graph under torch.compile
            out = self.loss(passes, target, plan.alpha, num_items_in_batch)
        out = RDropOutput(out.loss, out.task_loss, out.consistency_loss, logits=passes[0])
        return StepResult(out=out, passes=passes, target=target, output=output, layout=layout)

    def _context(self, passes: range, plan: PassPlan) -> AbstractContextManager[Any]:
        if self.pass_context is None:
            return contextlib.nullcontext()
        return self.pass_context(passes, plan)

    def _separate(self, model: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any], plan: PassPlan) -> tuple[Any, list[Tensor]]:
        """One forward per pass; the last ``plan.detached`` under ``torch.no_grad``."""
        if self.check_batch is not None:
            self.check_batch(args, kwargs, None)
        first_output: Any = None
        passes: list[Tensor] = []
        for k in range(plan.passes):
            grad = contextlib.nullcontext() if k < plan.passes - plan.detached else torch.no_grad()
            with grad, self._context(range(k, k + 1), plan):
                output = model(*args, **kwargs)
                passes.append(self.logits_fn(output))
            if k == 0:
                first_output = output
        return first_output, passes

    def _concat(self, model: Callable[..., Any], module: nn.Module, args: tuple[Any, ...],
                kwargs: dict[str, Any], plan: PassPlan
                ) -> tuple[Any, list[Tensor], ConcatLayout]:
        """One forward over ``plan.passes`` copies of the batch, split into the passes."""
        m = plan.passes
        if self.check_inputs and not self._inputs_checked:
            eager(TrainingStep._check_concat, self, model, module, args, kwargs, m)
        dup_args, dup_kwargs, layout = concat_inputs(args, kwargs, m, batched=self.batched,
                                                     unbatched=self.unbatched)
        if layout.batch_size == 1 and not layout.packed and self._batchnorms is None:
            eager(TrainingStep._find_batchnorms, self, module)
        if layout.batch_size == 1 and not layout.packed and any(
            bn.training for bn in self._batchnorms or ()
        ):
            raise ValueError(
                "batch size 1 with BatchNorm in concat mode: BatchNorm normalizes the copies of "
                "the one sample against each other, which makes both passes nearly equal and "
                "the consistency term ~0. Use a batch size >= 2, mode='twice', or put the "
                "BatchNorm layers in eval mode."
            )
        if self.check_batch is not None:
            self.check_batch(dup_args, dup_kwargs, layout)
        with self._context(range(0, m), plan):
            output = model(*dup_args, **dup_kwargs)
        return output, layout.split(self.logits_fn(output)), layout

    def _subset(self, model: Callable[..., Any], module: nn.Module, args: tuple[Any, ...],
                kwargs: dict[str, Any], plan: PassPlan
                ) -> tuple[Any, list[Tensor], SubsetLayout | None]:
        """The first pass on all ``B`` rows, the second on the first ``n``: one forward over
        ``[x; x[:n]]`` (concat), or a second forward over ``x[:n]`` (twice, stop-gradient)."""
        if plan.concat:
            if self.check_inputs and not self._inputs_checked:  # the same rule picks the rows
                eager(TrainingStep._check_concat, self, model, module, args, kwargs, 2)
            dup_args, dup_kwargs, layout = subset_inputs(
                args, kwargs, plan.fraction, append=True, batched=self.batched,
                unbatched=self.unbatched)
            if self.check_batch is not None:
                self.check_batch(dup_args, dup_kwargs, layout)  # type: ignore[arg-type]
            with self._context(range(0, 2), plan):
                output = model(*dup_args, **dup_kwargs)
            return output, layout.split(self.logits_fn(output)), layout
        sub_args, sub_kwargs, _ = subset_inputs(
            args, kwargs, plan.fraction, append=False, batched=self.batched,
            unbatched=self.unbatched)
        if self.check_batch is not None:
            self.check_batch(args, kwargs, None)
        with self._context(range(0, 1), plan):
            output = model(*args, **kwargs)
            first = self.logits_fn(output)
        grad = torch.no_grad() if plan.detached else contextlib.nullcontext()
        with grad, self._context(range(1, 2), plan):
            second = self.logits_fn(model(*sub_args, **sub_kwargs))
        return output, [first, second], None

    def _find_batchnorms(self, module: nn.Module) -> None:
        names = batchnorm_layers(module) if isinstance(module, nn.Module) else []
        self._batchnorms = tuple(module.get_submodule(n) for n in names)

    def _stop_gradient_loss(self, passes: list[Tensor], target: Tensor, plan: PassPlan,
                            num_items_in_batch: int | Tensor | None) -> RDropOutput:
        # The detached passes carry no graph, so the consistency's gradient flows into the
        # gradient passes only, and their CE (a constant) is left out of the task term.
        grad_passes = passes[: plan.passes - plan.detached]
        task = self.loss(grad_passes, target, 0.0, num_items_in_batch).task_loss
        cons = self.loss(passes, target, plan.alpha, num_items_in_batch).consistency_loss
        return RDropOutput(task + plan.alpha * cons, task, cons)

    # ---------------------------------------------------------------------------- the check
    def _check_concat(self, model: Callable[..., Any], module: nn.Module,
                      args: tuple[Any, ...], kwargs: dict[str, Any], m: int) -> None:
        """Once: in eval mode and without gradients, each copy of the duplicated batch must give
        the plain forward's logits; otherwise an input was duplicated that is not batched."""
        modes = [(mod, mod.training) for mod in module.modules()] if isinstance(
            module, nn.Module) else []
        if isinstance(module, nn.Module):
            module.eval()
        try:
            with torch.no_grad():
                plain = self.logits_fn(model(*args, **kwargs))
                dup_args, dup_kwargs, layout = concat_inputs(
                    args, kwargs, m, batched=self.batched, unbatched=self.unbatched)
                copies = layout.split(self.logits_fn(model(*dup_args, **dup_kwargs)))
        finally:
            for mod, was_training in modes:
                mod.training = was_training
        tol = 1e-4 if plain.dtype in (torch.float32, torch.float64) else 3e-2
        finite = plain.detach()[torch.isfinite(plain.detach())]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        same = all(
            c.shape == plain.shape
            and torch.allclose(c.float(), plain.float(), rtol=10 * tol, atol=tol * (1 + scale),
                               equal_nan=True)
            for c in copies
        )
        if not same:
            others = list(layout.duplicated[1:])
            names = ", ".join(repr(n) for n in layout.duplicated)
            hint = (f" If any of {others} is not batched (e.g. class embeddings with as many "
                    f"rows as the batch), pass unbatched={others[:1]!r}." if others else "")
            raise ValueError(
                f"concat mode: the duplicated batch does not reproduce the plain forward (plain "
                f"logits {tuple(plain.shape)}, each copy {tuple(copies[0].shape)}; duplicated "
                f"inputs: {names}, batch size {layout.batch_size}).{hint} If the model mixes "
                "rows of the batch or takes the batch in another dimension (nn.LSTM with "
                "batch_first=False), use batch_first=True or mode='twice'. Pass "
                "check_inputs=False to skip this check."
            )
        self._inputs_checked = True

    def __call__(self, model: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
                 target: Tensor, decision: RDropStep, *,
                 num_items_in_batch: int | Tensor | None = None,
                 num_items_in_subset: int | Tensor | None = None,
                 module: nn.Module | None = None) -> StepResult:
        """``run(model, args, kwargs, target, plan(decision), ...)``."""
        return self.run(model, args, kwargs, target, self.plan(decision),
                        num_items_in_batch=num_items_in_batch,
                        num_items_in_subset=num_items_in_subset, module=module)
