"""``RDrop``: wrap any model so that one call in training mode returns the R-Drop loss."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import Tensor, nn

from rdrop.argchecks import (
    check_alpha,
    check_chunk_size,
    check_consistency,
    check_ignore_index,
    check_label_smoothing,
    check_loss_combination,
    check_positive_int,
    check_reduction,
)
from rdrop.batching import InputName, concat_inputs, extract_logits
from rdrop.functional import RDropOutput, multi_pass_rdrop_loss, single_pass_loss
from rdrop.inspection import active_dropout_rates, batchnorm_layers, no_dropout_advice
from rdrop.schedule import RDropStep, rdrop_step

__all__ = ["RDrop"]

MODES = ("concat", "twice")


def _eager(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` outside any compiled graph (a graph break while torch.compile traces).

    ``torch.compiler.disable`` imports ``torch._dynamo`` (~3 s), so it is applied only while
    compiling, never at ``import rdrop`` or in eager training.
    """
    if torch.compiler.is_compiling():
        return torch.compiler.disable(fn)(*args)
    return fn(*args)


class RDrop(nn.Module):
    r"""Wrap a model so that a training call runs R-Drop and returns the loss.

    In training mode, ``out = wrapped(*args, target=y, **kwargs)``:

    * ``mode="concat"`` (default) runs ONE forward over the inputs duplicated along the batch
      dimension (``[x; x]``), so each copy draws its own dropout masks, then splits the logits
      into the passes. Which inputs are batched follows one rule (:mod:`rdrop.batching`): the
      first tensor (positional inputs first) defines ``B``; every tensor with dim 0 equal to ``B``
      is duplicated unless named in ``unbatched=`` (or only those named in ``batched=``);
      packed batches (``cu_seq_lens_q``...) are duplicated along their tokens with the sequence
      boundaries offset. The logits must have ``num_passes * B`` rows. On the first call the
      wrapper also checks, in eval mode and without gradients, that each copy's output equals
      the plain forward's (``check_inputs=False`` skips it): an input whose dim 0 equals ``B``
      by coincidence (class embeddings with ``C == B``, a sequence-first ``nn.LSTM``) fails here
      with the duplicated inputs named.
    * ``mode="twice"`` runs ``num_passes`` separate forwards (for models that cannot take a
      doubled batch, or to keep each BatchNorm batch a real batch);

    and returns :func:`rdrop.functional.multi_pass_rdrop_loss` of the passes as an
    :class:`~rdrop.functional.RDropOutput` whose ``logits`` are the first pass's. Per counted row:

    .. math::
        \mathcal{L} = \sum_{k=1}^m CE(P^k, y) + \alpha_s \cdot \overline{D_{sym}}(P^j, P^k)

    **Stop-gradient variant** (``stop_gradient=True``): the second pass runs under
    ``torch.no_grad`` and is the detached target of the first:

    .. math::
        \mathcal{L}_{sg} = CE(P^1, y) + \alpha_s \cdot \tfrac12\big(KL(P^1\|\bar P^2)
            + KL(\bar P^2\|P^1)\big), \qquad \bar P^2 = \mathrm{sg}(P^2)

    with the same per-row normalization. Its gradient differs from full R-Drop's: only pass 1
    receives gradient,

    .. math::
        \nabla_\theta \mathcal{L}_{sg} = \nabla_\theta CE(P^1, y)
            + \alpha_s \frac{\partial D_{sym}(P^1, \bar P^2)}{\partial P^1}
              \nabla_\theta P^1,

    whereas full R-Drop adds :math:`\nabla_\theta CE(P^2, y)` and the KL's gradient through
    pass 2. So the CE of pass 2 is dropped (task weight 1, not 2), and the KL reaches the
    parameters through one pass, not two. Both halve in expectation (the passes are
    exchangeable), so the balance between CE and KL at a given alpha is kept and the whole
    gradient is about half of full R-Drop's (under SGD like a halved learning rate; Adam is
    insensitive to the scale). The two passes are always two forwards (``mode`` is ignored);
    the no-grad one keeps no activation graph, so a step costs about 1.33x a single-pass step
    (forward + backward + one forward) instead of 2x, with the activation memory of one pass.

    **Which step** (``every_k_steps``, ``alpha_warmup_steps``): the decision is
    :func:`rdrop.schedule.rdrop_step` of the *optimizer* step, so every micro-batch of one
    accumulated step gets the same decision. Tell the wrapper the optimizer
    (``RDrop(..., optimizer=opt)`` or ``wrapped.attach_optimizer(opt)``; it counts
    ``opt.step()`` calls with a post-hook) or the step (``wrapped.set_step(n)``). Without either
    it counts training calls, which is right only without gradient accumulation.

    **Outside training**: without ``target`` the call is a plain forward returning the model's
    own output, so evaluation and generation code need no change. With ``target`` in eval mode it
    returns an :class:`~rdrop.functional.RDropOutput` of one pass: ``loss = task_loss`` is the
    single-pass CE (:func:`rdrop.functional.single_pass_loss`, comparable to a validation loss;
    the training loss has two CE terms), ``consistency_loss = 0``, ``logits`` the output.

    **torch.compile**: ``torch.compile(RDrop(net, check_finite=False))`` compiles a few graphs
    and does not recompile per step: the step decision runs outside the graph (a disabled
    function, one graph break), alpha enters as a value, not a guard. ``check_finite=True``
    reads the loss once per step, one more graph break. Alternatively compile only the model,
    ``RDrop(torch.compile(net))``: one graph per input shape (``2B`` rows on R-Drop steps, ``B``
    on single-pass steps).

    **LoRA** (PEFT) with ``lora_dropout`` as the only dropout: the consistency is exactly 0 at
    the first step, because LoRA's ``B`` matrix starts at zero, so the adapter branch (and its
    dropout) adds nothing until ``B`` has moved; it grows from the second step on.

    **Gradient checkpointing** must preserve the RNG state (PyTorch's and Hugging Face's
    default): with ``preserve_rng_state=False`` the recompute draws new dropout masks and the
    gradients no longer match the loss.

    Args:
        model: any ``nn.Module`` with dropout. Its output must be logits, or hold them (``.logits``,
            ``["logits"]``, first tuple item), or ``logits_fn`` must select them.
        alpha: consistency weight ``>= 0`` (paper: 5 translation, 0.7 summarization, 1 LM,
            0.1-1 GLUE, 0.6 ViT), under the per-row normalization of
            :func:`rdrop.functional.rdrop_loss`.
        mode: ``"concat"`` or ``"twice"``.
        num_passes: ``m >= 2`` dropout passes (consistency = mean pairwise divergence).
        every_k_steps: apply R-Drop on every k-th optimizer step; the others are plain
            single-pass steps whose loss is the task loss of one pass (CE, no consistency).
        alpha_warmup_steps: ramp alpha linearly from ``alpha / n`` to ``alpha`` over the first
            ``n`` optimizer steps (0 = no warm-up).
        consistency: ``"kl"``, ``"js"``, or ``"mse"`` for regression heads.
        ignore_index, label_smoothing, reduction, chunk_size, check_finite: as in
            :func:`rdrop.functional.rdrop_loss` (``chunk_size`` needs two passes, ``"kl"`` and a
            reduction other than ``"none"``).
        logits_fn: optional callable mapping the model output to the logits tensor (a model
            returning ``(loss, logits)``: ``logits_fn=lambda out: out[1]``).
        stop_gradient: the cheaper variant above (needs ``num_passes=2``).
        optimizer: the optimizer whose steps define the step schedule (see above).
        batched, unbatched: names of the inputs that are (only) / are not batched in concat mode:
            ``int`` for a positional input, ``str`` for a keyword input.
        check_inputs: on the first concat-mode call, check the duplication against a plain
            forward (two extra forwards without gradients, in eval mode, once).
        check_dropout: warn at construction if the model has no active dropout (R-Drop then
            only doubles the cost) and raise at a training call if the model is in eval mode.
        warn_batchnorm: warn at construction about BatchNorm layers.

    Raises:
        TypeError, ValueError: invalid hyperparameters (at construction); at call time a
            target/logit shape mismatch, logits without ``num_passes * B`` rows, batch size 1
            with BatchNorm in concat mode, a failed input check, or a training call while the
            wrapped model is in eval mode.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from rdrop import RDrop
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        >>> model = RDrop(net, alpha=1.0)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> _ = model.attach_optimizer(opt)    # the schedule counts optimizer steps
        >>> x, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
        >>> out = model(x, target=y)           # one forward over [x; x]
        >>> out.loss.backward()
        >>> opt.step()
        >>> out.logits.shape, model.num_steps
        (torch.Size([5, 3]), 1)
        >>> _ = model.eval()
        >>> model(x).shape                     # eval: the plain model
        torch.Size([5, 3])
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 1.0,
        *,
        mode: str = "concat",
        num_passes: int = 2,
        every_k_steps: int = 1,
        alpha_warmup_steps: int = 0,
        consistency: str = "kl",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        chunk_size: int | None = None,
        check_finite: bool = True,
        logits_fn: Callable[[Any], Tensor] | None = None,
        stop_gradient: bool = False,
        optimizer: torch.optim.Optimizer | None = None,
        batched: Collection[InputName] | None = None,
        unbatched: Collection[InputName] | None = None,
        check_inputs: bool = True,
        check_dropout: bool = True,
        warn_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.alpha = check_alpha(alpha)
        self.num_passes = check_positive_int("num_passes", num_passes, 2)
        self.every_k_steps = check_positive_int("every_k_steps", every_k_steps, 1)
        self.alpha_warmup_steps = check_positive_int("alpha_warmup_steps", alpha_warmup_steps, 0)
        self.consistency = check_consistency(consistency)
        self.ignore_index = check_ignore_index(ignore_index)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.reduction = check_reduction(reduction)
        self.chunk_size = check_chunk_size(chunk_size)
        check_loss_combination(consistency=self.consistency, reduction=self.reduction,
                               label_smoothing=self.label_smoothing, chunk_size=self.chunk_size,
                               num_passes=self.num_passes)
        for name, flag in (("stop_gradient", stop_gradient), ("check_finite", check_finite),
                           ("check_inputs", check_inputs)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}.")
        if stop_gradient and self.num_passes != 2:
            raise ValueError(
                f"stop_gradient=True uses one gradient pass and one detached target pass; "
                f"num_passes must be 2, got {self.num_passes}."
            )
        if logits_fn is not None and not callable(logits_fn):
            raise TypeError(f"logits_fn must be callable, got {type(logits_fn).__name__}.")
        self.model = model
        self.mode = mode
        self.check_finite = check_finite
        self.stop_gradient = stop_gradient
        self.logits_fn = logits_fn or extract_logits
        self.batched = batched
        self.unbatched = unbatched
        self.check_dropout = check_dropout
        self.num_steps = 0  # the optimizer step (or training calls, see _step_source)
        self._step_source = "calls"  # "calls" until an optimizer or set_step() says otherwise
        self._inputs_checked = not check_inputs
        self._optimizer_hook: Any = None
        if optimizer is not None:
            self.attach_optimizer(optimizer)
        if check_dropout and not active_dropout_rates(model):
            warnings.warn(
                "RDrop: the model has no dropout layer with p > 0, so both passes are identical "
                f"and R-Drop only doubles the cost. {no_dropout_advice(model)} Pass "
                "check_dropout=False if the model applies dropout functionally.",
                UserWarning,
                stacklevel=2,
            )
        bn = batchnorm_layers(model)
        self._batchnorms = tuple(model.get_submodule(n) for n in bn)
        if warn_batchnorm and bn:
            warnings.warn(
                f"RDrop: BatchNorm layers {bn[:3]}{'...' if len(bn) > 3 else ''} see the "
                "duplicated batch: in concat mode their batch statistics mix both passes and "
                "running statistics update once per step; in twice mode they update once per "
                "pass. This is usually harmless. To keep statistics per real batch use "
                "mode='twice' with momentum halved, or switch to LayerNorm/GroupNorm; pass "
                "warn_batchnorm=False to silence this.",
                UserWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------------ state
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        """Count ``optimizer.step()`` calls as the step of the schedule (a step post-hook).

        Returns:
            The hook's handle (``handle.remove()`` detaches it).

        Raises:
            TypeError: ``optimizer`` has no ``register_step_post_hook`` (not a torch optimizer).
        """
        register = getattr(optimizer, "register_step_post_hook", None)
        if register is None:
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                "without one, call wrapped.set_step(optimizer_step) before each step."
            )
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
        self._optimizer_hook = register(self._on_optimizer_step)
        self._step_source = "optimizer"
        return self._optimizer_hook

    def _on_optimizer_step(self, *_: Any) -> None:
        self.num_steps += 1

    def set_step(self, optimizer_step: int) -> None:
        """Set the optimizer step (``>= 0``) that the next training calls use; from then on
        training calls no longer advance the step themselves.

        Raises:
            TypeError, ValueError: not an int ``>= 0``.
        """
        self.num_steps = check_positive_int("optimizer_step", optimizer_step, 0)
        self._step_source = "manual"

    def schedule(self) -> RDropStep:
        """The decision of :func:`rdrop.schedule.rdrop_step` at the current step."""
        return rdrop_step(self.num_steps, alpha=self.alpha, every_k_steps=self.every_k_steps,
                          alpha_warmup_steps=self.alpha_warmup_steps)

    def current_alpha(self) -> float:
        """Alpha at the current step, after the linear warm-up (if any); 0.0 on an off-step."""
        return self.schedule().alpha

    def _next_decision(self) -> RDropStep:
        # Outside any compiled graph: the counter is a Python int, and a guard on it would
        # recompile every step.
        decision = self.schedule()
        if self._step_source == "calls":
            self.num_steps += 1
        return decision

    def get_extra_state(self) -> dict[str, int]:
        return {"num_steps": self.num_steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.num_steps = int(state["num_steps"])

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, mode={self.mode!r}, num_passes={self.num_passes}, "
            f"every_k_steps={self.every_k_steps}, consistency={self.consistency!r}, "
            f"stop_gradient={self.stop_gradient}"
        )

    # ---------------------------------------------------------------------------------- forward
    def forward(
        self,
        *args: Any,
        target: Tensor | None = None,
        num_items_in_batch: int | Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if target is None:
            return self.model(*args, **kwargs)
        loss_kwargs = {
            "ignore_index": self.ignore_index,
            "label_smoothing": self.label_smoothing,
            "reduction": self.reduction,
            "consistency": self.consistency,
            "num_items_in_batch": num_items_in_batch,
            "check_finite": self.check_finite,
        }
        if not self.training:
            return self._single_pass(args, kwargs, target, loss_kwargs)
        if self.check_dropout and not self.model.training:
            raise ValueError(
                "RDrop was called for training (a target was given) but the wrapped model is in "
                "eval mode, so dropout is off and both passes are identical. Call .train() on the "
                "RDrop wrapper (not only on the inner model), or call it without target to predict."
            )
        decision = _eager(RDrop._next_decision, self)
        if not decision.active:
            return self._single_pass(args, kwargs, target, loss_kwargs)
        if self.stop_gradient:
            return self._stop_gradient_loss(args, kwargs, target, decision.alpha, loss_kwargs)
        passes = self._passes(args, kwargs)
        # The loss gets the constant self.alpha and the step's alpha is applied here: the loss
        # checks its alpha in Python, which under torch.compile would guard on (and recompile
        # for) every warm-up value.
        out = multi_pass_rdrop_loss(passes, target, alpha=self.alpha,
                                    chunk_size=self.chunk_size, **loss_kwargs)
        loss = out.task_loss + decision.alpha * out.consistency_loss
        return RDropOutput(loss, out.task_loss, out.consistency_loss, logits=passes[0])

    def _single_pass(self, args: tuple[Any, ...], kwargs: dict[str, Any], target: Tensor,
                     loss_kwargs: dict[str, Any]) -> RDropOutput:
        logits = self.logits_fn(self.model(*args, **kwargs))
        out = single_pass_loss(logits, target, **loss_kwargs)
        return RDropOutput(out.loss, out.task_loss, out.consistency_loss, logits=logits)

    def _stop_gradient_loss(self, args: tuple[Any, ...], kwargs: dict[str, Any], target: Tensor,
                            alpha: float, loss_kwargs: dict[str, Any]) -> RDropOutput:
        logits1 = self.logits_fn(self.model(*args, **kwargs))
        with torch.no_grad():  # the target pass: no activation graph is kept
            logits2 = self.logits_fn(self.model(*args, **kwargs))
        task = single_pass_loss(logits1, target, **loss_kwargs).task_loss
        # logits2 carries no graph, so the consistency's gradient flows into pass 1 only.
        cons = multi_pass_rdrop_loss([logits1, logits2], target, alpha=self.alpha,
                                     chunk_size=self.chunk_size, **loss_kwargs).consistency_loss
        return RDropOutput(task + alpha * cons, task, cons, logits=logits1)

    def _passes(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Tensor]:
        m = self.num_passes
        if self.mode == "twice":
            return [self.logits_fn(self.model(*args, **kwargs)) for _ in range(m)]
        if not self._inputs_checked:
            _eager(RDrop._check_concat, self, args, kwargs)
        dup_args, dup_kwargs, layout = concat_inputs(args, kwargs, m, batched=self.batched,
                                                     unbatched=self.unbatched)
        if layout.batch_size == 1 and not layout.packed and any(
            bn.training for bn in self._batchnorms
        ):
            raise ValueError(
                "batch size 1 with BatchNorm in concat mode: BatchNorm normalizes the copies of "
                "the one sample against each other, which makes both passes nearly equal and "
                "the consistency term ~0. Use a batch size >= 2, mode='twice', or put the "
                "BatchNorm layers in eval mode."
            )
        return layout.split(self.logits_fn(self.model(*dup_args, **dup_kwargs)))

    def _check_concat(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Once: in eval mode and without gradients, each copy of the duplicated batch must give
        the plain forward's logits; otherwise an input was duplicated that is not batched."""
        m = self.num_passes
        modes = [(mod, mod.training) for mod in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                plain = self.logits_fn(self.model(*args, **kwargs))
                dup_args, dup_kwargs, layout = concat_inputs(
                    args, kwargs, m, batched=self.batched, unbatched=self.unbatched)
                copies = layout.split(self.logits_fn(self.model(*dup_args, **dup_kwargs)))
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
            others = [n for n in layout.duplicated[1:]]
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
