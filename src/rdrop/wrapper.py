"""``RDrop``: wrap any model so that one call in training mode returns the R-Drop loss."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rdrop.losses.checks import ALPHA, IGNORE_INDEX, check_positive_int
from rdrop.training.autostart import StartRule
from rdrop.training.batching import InputName
from rdrop.training.inspection import active_dropout_rates, batchnorm_layers, no_dropout_advice
from rdrop.training.noise import Noise, attach_noise
from rdrop.training.options import StepOptions, option_property
from rdrop.training.schedule import RDropStep, Schedule
from rdrop.training.step import TrainingStep, eager

__all__ = ["RDrop", "unwrap_state_dict"]

_PREFIX = "model."


class RDrop(nn.Module):
    r"""Wrap a model so that a training call runs R-Drop and returns the loss.

    In training mode ``out = wrapped(*args, target=y, **kwargs)`` runs the passes
    (``mode="concat"``: one forward over the inputs duplicated along the batch, ``[x; x]``, each
    copy drawing its own dropout masks; ``mode="twice"``: separate forwards) and returns
    :func:`rdrop.multi_pass_rdrop_loss` of them as an :class:`rdrop.RDropOutput` (``loss``,
    ``task_loss``, ``consistency_loss``, and the first pass's ``logits``). Per counted row, with
    :math:`\alpha_s` the schedule's alpha at this step:

    .. math::
        \mathcal{L} = \sum_{k=1}^m CE(P^k, y) + \alpha_s \cdot \overline{D_{sym}}(P^j, P^k)

    When R-Drop runs is a :class:`rdrop.Schedule` of the *optimizer* step (give it with
    ``optimizer=opt`` or ``wrapped.attach_optimizer(opt)``). Without ``target`` the call is the
    plain model, so evaluation and generation need no change. The rest (which inputs are
    duplicated, the stop-gradient and subset variants, start rules, checkpoints, torch.compile,
    LoRA, ``noise=``, multi-label heads): docs/GUIDE.md, "The wrapper in detail".

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
        alpha: float = ALPHA,
        *,
        mode: str = "concat",
        num_passes: int = 2,
        every_k_steps: int = 1,
        alpha_warmup_steps: int = 0,
        consistency: str = "kl",
        noise: str | Noise | None = "dropout",
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        chunk_size: int | None = None,
        check_finite: bool = True,
        logits_fn: Callable[[Any], Tensor] | None = None,
        stop_gradient: bool = False,
        start_step: int | StartRule = 0,
        second_pass_fraction: float = 1.0,
        optimizer: torch.optim.Optimizer | None = None,
        batched: Collection[InputName] | None = None,
        unbatched: Collection[InputName] | None = None,
        check_inputs: bool = True,
        check_dropout: bool = True,
        warn_batchnorm: bool = True,
    ) -> None:
        """Check every option once, attach the noise source, and warn about a model R-Drop
        cannot help (no active dropout) or BatchNorm.

        Args:
            model: any ``nn.Module`` with dropout. Its output must be logits, or hold them
                (``.logits``, ``["logits"]``, first tuple item), or ``logits_fn`` must select them.
            alpha: consistency weight ``>= 0`` (paper: 5 translation, 0.7 summarization, 1 LM,
                0.1-1 GLUE, 0.6 ViT), under the per-row normalization of :func:`rdrop.rdrop_loss`.
            mode: ``"concat"`` or ``"twice"``.
            num_passes: ``m >= 2`` dropout passes (consistency = mean pairwise divergence).
            every_k_steps: apply R-Drop on every k-th optimizer step; the others are plain
                single-pass steps whose loss is the task loss of one pass (CE, no consistency).
            alpha_warmup_steps: ramp alpha linearly from ``alpha / n`` to ``alpha`` over the first
                ``n`` optimizer steps (0 = no warm-up).
            consistency: ``"kl"``, ``"js"``, ``"mse"`` for regression heads, or ``"bernoulli"``
                for multi-label sigmoid heads.
            noise: where the passes' randomness comes from: ``"dropout"`` (the model's own, the
                default), ``"embedding:ALPHA"``, ``"dropout:P"``, ``"lora:P"`` or a
                :class:`rdrop.training.noise.Noise` (docs/GUIDE.md).
            ignore_index, label_smoothing, reduction, chunk_size, check_finite: as in
                :func:`rdrop.rdrop_loss` (``chunk_size`` needs two passes, ``"kl"`` and a
                reduction other than ``"none"``).
            logits_fn: optional callable mapping the model output to the logits tensor (a model
                returning ``(loss, logits)``: ``logits_fn=lambda out: out[1]``).
            stop_gradient: the second pass is a detached target run without gradients (about
                1.33x a plain step; needs ``num_passes=2``; docs/GUIDE.md).
            start_step: the first optimizer step with R-Drop (an int ``>= 0``; plain steps before
                it), or a start rule (:class:`rdrop.PlateauStart`, :class:`rdrop.AutoStart`;
                R-Drop from the step it fired at; feed it with ``wrapped.observe(value)``).
                ``every_k_steps`` and the warm-up count from it.
            second_pass_fraction: ``r`` in ``(0, 1]``, the share of each batch's rows (the first
                ``ceil(r * B)``) that get the second pass and the consistency term (1.0: all).
            optimizer: the optimizer whose steps define the step schedule.
            batched, unbatched: names of the inputs that are (only) / are not batched in concat
                mode: ``int`` for a positional input, ``str`` for a keyword input.
            check_inputs: on the first concat-mode call, check the duplication against a plain
                forward (two extra forwards without gradients, in eval mode, once).
            check_dropout: warn at construction if the model has no active dropout (R-Drop then
                only doubles the cost) and raise at a training call if the model is in eval mode.
            warn_batchnorm: warn at construction about BatchNorm layers.

        Raises:
            TypeError, ValueError: invalid hyperparameters (at construction), a ``noise`` the
                model cannot take (no input embedding layer, no dropout slot, no LoRA layer: the
                message names the modules looked at); at call time a target/logit shape
                mismatch, logits without ``num_passes * B`` rows, batch size 1 with BatchNorm in
                concat mode, a failed input check, or a training call while the wrapped model is
                in eval mode.
        """
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        # When R-Drop runs (rdrop.training.schedule): checked once here, asked at every step.
        self.rdrop_schedule = Schedule(alpha, every_k_steps, alpha_warmup_steps, start_step)
        # How a step runs its passes (rdrop.training.options): checked once here, with every rule
        # that ties the options together; the step (rdrop.training.step, the same step as every
        # other entry point) trusts them.
        options = StepOptions(consistency=consistency, ignore_index=ignore_index,
                              label_smoothing=label_smoothing, reduction=reduction,
                              chunk_size=chunk_size, check_finite=check_finite,
                              num_passes=num_passes, mode=mode, stop_gradient=stop_gradient,
                              second_pass_fraction=second_pass_fraction, noise=noise)
        # Where the passes' randomness comes from (rdrop.training.noise); refused here if the
        # model cannot take it.
        self.noise = attach_noise(model, options.noise)
        step_kwargs = {"logits_fn": logits_fn} if logits_fn is not None else {}
        self._step = TrainingStep(options, batched=batched, unbatched=unbatched,
                                  check_inputs=check_inputs,
                                  pass_context=self.noise.pass_context, **step_kwargs)
        self.model = model
        self.check_dropout = check_dropout
        self.num_steps = 0  # the optimizer step (or training calls, see _step_source)
        self._step_source = "calls"  # "calls" until an optimizer or set_step() says otherwise
        self._optimizer_hook: Any = None
        if optimizer is not None:
            self.attach_optimizer(optimizer)
        if check_dropout and not self.noise.adds_randomness and not active_dropout_rates(model):
            warnings.warn(
                "RDrop: the model has no dropout layer with p > 0, so both passes are identical "
                f"and R-Drop only doubles the cost. {no_dropout_advice(model)} Pass "
                "check_dropout=False if the model applies dropout functionally.",
                UserWarning,
                stacklevel=2,
            )
        bn = batchnorm_layers(model)
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

    # The schedule's settings, read from it (one copy: a new alpha means a new wrapper or
    # schedule, not an attribute that the schedule would not see).
    @property
    def alpha(self) -> float:
        """The target consistency weight."""
        return self.rdrop_schedule.alpha

    @property
    def every_k_steps(self) -> int:
        """R-Drop on every ``k``-th optimizer step from the start."""
        return self.rdrop_schedule.every_k_steps

    @property
    def alpha_warmup_steps(self) -> int:
        """Steps of the linear alpha warm-up from the start."""
        return self.rdrop_schedule.alpha_warmup_steps

    @property
    def start_step(self) -> int | StartRule:
        """The first R-Drop optimizer step, or the start rule that chooses it."""
        return self.rdrop_schedule.start

    # The step's options, read from them (one copy, as for the schedule's settings).
    @property
    def step_options(self) -> StepOptions:
        """The options of the training step (:class:`rdrop.training.options.StepOptions`)."""
        return self._step.options

    num_passes = option_property("num_passes", via="step_options")
    mode = option_property("mode", via="step_options")
    stop_gradient = option_property("stop_gradient", via="step_options")
    second_pass_fraction = option_property("second_pass_fraction", via="step_options")
    consistency = option_property("consistency", via="step_options")
    ignore_index = option_property("ignore_index", via="step_options")
    label_smoothing = option_property("label_smoothing", via="step_options")
    reduction = option_property("reduction", via="step_options")
    chunk_size = option_property("chunk_size", via="step_options")
    check_finite = option_property("check_finite", via="step_options")

    def schedule(self) -> RDropStep:
        """The decision of :class:`rdrop.Schedule` at the current step (R-Drop off
        while a start rule has not fired)."""
        return self.rdrop_schedule.decision(self.num_steps)

    def observe(self, value: float) -> bool:
        """Feed one validation value, measured now, to the start rule (``start_step=`` a rule
        such as :class:`rdrop.PlateauStart`); a no-op returning ``False`` for a fixed start.

        Returns:
            ``True`` exactly when the rule fires: R-Drop runs from the next optimizer step.
        """
        return self.rdrop_schedule.observe(value, step=self.num_steps)

    def current_alpha(self) -> float:
        """Alpha at the current step, after the linear warm-up (if any); 0.0 on an off-step."""
        return self.schedule().alpha

    def _next_decision(self) -> RDropStep:
        # Outside any compiled graph: the counter is a Python int, and a guard on it would
        # recompile every step.
        decision = self.schedule()
        # A call under torch.no_grad() (a loss probe, a validation pass in train mode) takes no
        # optimizer step, so it does not advance the count.
        if self._step_source == "calls" and torch.is_grad_enabled():
            self.num_steps += 1
        return decision

    def get_extra_state(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, **self.rdrop_schedule.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
        if "auto_start" in state:  # checkpoints written before the schedule object
            state = {"start_rule": state["auto_start"]}
        self.rdrop_schedule.load_state_dict(state)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, mode={self.mode!r}, num_passes={self.num_passes}, "
            f"every_k_steps={self.every_k_steps}, consistency={self.consistency!r}, "
            f"stop_gradient={self.stop_gradient}, noise={str(self.noise.noise)!r}, "
            f"start_step={self.start_step}, second_pass_fraction={self.second_pass_fraction}"
        )

    # ---------------------------------------------------------------------------------- forward
    def forward(
        self,
        *args: Any,
        target: Tensor | None = None,
        num_items_in_batch: int | Tensor | None = None,
        num_items_in_subset: int | Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if target is None:
            return self.model(*args, **kwargs)
        if not self.training:  # one pass, comparable to a validation loss
            decision = RDropStep(active=False, alpha=0.0)
        else:
            if self.check_dropout and not self.model.training:
                raise ValueError(
                    "RDrop was called for training (a target was given) but the wrapped model "
                    "is in eval mode, so dropout is off and both passes are identical. Call "
                    ".train() on the RDrop wrapper (not only on the inner model), or call it "
                    "without target to predict."
                )
            decision = eager(RDrop._next_decision, self)
        return self._step.run(self.model, args, kwargs, target, self._step.plan(decision),
                              num_items_in_batch=num_items_in_batch,
                              num_items_in_subset=num_items_in_subset).out


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The plain model's state dict from a checkpoint of :class:`RDrop` (``RDrop(net)``):
    the ``model.`` prefix removed, RDrop's own ``_extra_state`` (its step count) left out.

    Args:
        state_dict: ``RDrop(net).state_dict()``, or a checkpoint saved from it.

    Returns:
        A new dict that ``net.load_state_dict`` takes.

    Raises:
        ValueError: a key that is neither ``model.``-prefixed nor ``_extra_state`` (not a
            checkpoint of ``RDrop``: load it into the model directly).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from rdrop import RDrop, unwrap_state_dict
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1))
        >>> sd = RDrop(net).state_dict()
        >>> sorted(sd)
        ['_extra_state', 'model.0.bias', 'model.0.weight']
        >>> nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1)).load_state_dict(unwrap_state_dict(sd))
        <All keys matched successfully>
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key == "_extra_state":
            continue
        if not key.startswith(_PREFIX):
            raise ValueError(
                f"unwrap_state_dict: key {key!r} is not from RDrop(model).state_dict() (whose "
                f"keys start with {_PREFIX!r}); load a plain model's checkpoint directly, or "
                "into the wrapper with wrapped.model.load_state_dict(sd)."
            )
        out[key[len(_PREFIX):]] = value
    return out
