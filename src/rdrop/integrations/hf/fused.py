"""The fused output layer (``rdrop_fused_linear=True``): the loss from the head's input.

The forward still runs once over ``[x; x]``, but the output layer projects nothing: a forward
pre-hook takes its input (the last hidden states) and
:func:`rdrop.losses.fused_linear.fused_linear_rdrop_loss` computes the loss from it and the layer's
weight and bias, ``chunk_size`` rows at a time, so the ``(2 x tokens, vocab)`` logits and their
gradients never exist. It is exact only for models whose logits are ``hidden @ W.T + b``;
:func:`check_fused_model` refuses what a config shows at construction, and
:func:`check_fused_head` checks the rest numerically on one sample at the first fused step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rdrop.losses.checks import check_num_items_in_batch
from rdrop.losses.functional import RDropOutput
from rdrop.losses.fused_linear import _fused
from rdrop.training.batching import ConcatLayout, extract_logits

from .labels import IGNORE_INDEX, base_model, first_count

__all__ = ["FusedLoss", "HiddenCapture", "check_fused_head", "check_fused_model",
           "forward_hidden", "fused_loss"]

_OFF = "Set rdrop_fused_linear=False."
# Config fields that transform the logits after the output layer, with the value that means "off".
# A fused head would silently skip them; the numerical check at the first fused step is the
# general guard, these give an early, named error.
_LOGIT_TRANSFORMS = {
    "final_logit_softcapping": None, "output_logit_soft_cap": None, "logits_soft_cap": None,
    "logit_scale": 1.0, "logits_scaling": 1.0, "output_multiplier": 1.0,
    "lm_head_multiplier": 1.0, "logits_mup_width_multiplier": 1.0,
}


def check_fused_model(model: nn.Module, *, is_language_model: bool, sharded: bool,
                      compiled: bool = False) -> None:
    """Refuse, at construction, models the fused loss cannot serve exactly.

    Args:
        model: the unwrapped model.
        is_language_model: a causal LM or an encoder-decoder LM.
        sharded: the output layer's weight is sharded in a way the fused loss cannot gather
            (FSDP version 1's flat parameters, DeepSpeed ZeRO-3); FSDP2 (DTensor) is fine.
        compiled: the whole model runs under ``torch.compile`` (``torch_compile=True``, or a
            compiled model passed in).

    Raises:
        ValueError: not a language model; no ``nn.Linear`` output layer; a config that
            transforms the logits after the layer; an encoder-decoder model without
            ``prepare_decoder_input_ids_from_labels``; a sharded output layer; a compiled model.
    """
    if compiled:
        # The fused path takes the output layer's input with a forward pre-hook added at each
        # step; a compiled graph does not guard on module hooks, so it may run without it.
        raise ValueError(
            "rdrop_fused_linear=True reads the output layer's input with a forward hook, which "
            "a torch.compile-d model does not reliably run (compiled graphs do not guard on "
            f"hooks added later). Use torch_compile=False with the fused loss, or {_OFF}"
        )
    model = base_model(model)
    name = type(model).__name__
    config = getattr(model, "config", None)
    if not is_language_model:
        raise ValueError(
            f"rdrop_fused_linear=True is for language models (causal LMs and encoder-decoder "
            f"LMs) whose logits come from one output layer; {name} is neither. {_OFF}"
        )
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Linear) or head.weight.dim() != 2:
        raise ValueError(
            f"rdrop_fused_linear=True needs the output layer as an nn.Linear "
            f"(model.get_output_embeddings()); {name} gives {type(head).__name__}. {_OFF}"
        )
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for cfg in configs:
        for key, identity in _LOGIT_TRANSFORMS.items():
            value = getattr(cfg, key, None)
            if value is not None and value != identity:
                raise ValueError(
                    f"rdrop_fused_linear=True: {name} transforms its logits after the output "
                    f"layer (config.{key}={value!r}), which the fused loss would skip. {_OFF}"
                )
    if getattr(config, "is_encoder_decoder", False) and not hasattr(
            model, "prepare_decoder_input_ids_from_labels"):
        raise ValueError(
            f"rdrop_fused_linear=True: {name} has no prepare_decoder_input_ids_from_labels, "
            f"so its decoder inputs cannot be built without its own loss. {_OFF}"
        )
    if sharded:
        raise ValueError(
            "rdrop_fused_linear=True reads the output layer's weight outside the forward, where "
            "FSDP version 1 (flat parameters) and DeepSpeed ZeRO-3 keep it sharded. Use FSDP2 "
            f"(fsdp_version=2: DTensor weights, which the fused loss gathers), or {_OFF}"
        )


def _one_call(seen: list[Tensor], name: str) -> None:
    if len(seen) != 1:
        raise ValueError(
            f"rdrop_fused_linear=True: {name} called its output layer {len(seen)} times in one "
            f"forward; the fused loss needs exactly one call. {_OFF}"
        )


def _full(t: Tensor | None) -> Tensor | None:
    """A sharded (FSDP2 DTensor) parameter gathered whole, for the one-sample check."""
    full_tensor = getattr(t, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else t


def check_fused_head(model: nn.Module, inputs: dict[str, Any], b: int, *,
                     half_precision: bool) -> None:
    """Check, once, in eval mode on the first sample, that the model's logits are its output
    layer applied to that layer's input, as the fused loss assumes (no soft-capping, scaling or
    extra bias after it).

    Args:
        model: the unwrapped model; inputs: the training batch (labels popped); b: its size.
        half_precision: the run uses fp16/bf16 (compare at half precision's resolution).

    Raises:
        ValueError: the layer is called other than once, or the logits differ.
    """
    sample = {k: v[:1] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == b else v
              for k, v in inputs.items()}
    head = model.get_output_embeddings()
    seen: list[Tensor] = []
    handle = head.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            logits = extract_logits(model(**sample)).float()
    finally:
        handle.remove()
        for mod, mode in modes:
            mod.train(mode)
    name = type(model).__name__
    _one_call(seen, name)
    w, bias = _full(head.weight), _full(head.bias)
    mine = nn.functional.linear(seen[0].to(w.dtype), w, bias).float()
    # Half precision (weights or mixed-precision autocast of the model) rounds the model's
    # logits: compare at its resolution; in float32 the two are the same matmul.
    half = w.dtype in (torch.float16, torch.bfloat16) or seen[0].dtype != w.dtype or half_precision
    tol = (2e-2 if half else 1e-4) * max(1.0, logits.abs().max().item())
    diff = (mine - logits).abs().max().item() if mine.shape == logits.shape else math.inf
    if not diff <= tol:
        raise ValueError(
            f"rdrop_fused_linear=True: {name}'s logits are not its output layer applied to the "
            f"last hidden states (max |difference| {diff:.3g} > {tol:.3g} on one sample, "
            f"shapes {tuple(mine.shape)} and {tuple(logits.shape)}): the model transforms "
            f"its logits after the layer (soft-capping, scaling, a final bias), which the "
            f"fused loss would skip. {_OFF}"
        )


class HiddenCapture:
    """The fused path's forward for :class:`rdrop.training.step.TrainingStep`: calling it runs the
    model (through the DDP/accelerate wrapper) with its output layer projecting no position, and
    :meth:`hidden` (the step's ``logits_fn``) returns that layer's input, the last hidden states.

    Args:
        model: what to call (possibly wrapped); unwrapped: the model itself.
    """

    def __init__(self, model: nn.Module, unwrapped: nn.Module) -> None:
        self.model, self.unwrapped = model, unwrapped
        self._seen: list[Tensor] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        seen: list[Tensor] = []

        def take_input(_: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
            seen.append(inputs[0])
            return (inputs[0][..., :0, :], *inputs[1:])  # project no position: no (N, V) logits

        handle = self.unwrapped.get_output_embeddings().register_forward_pre_hook(take_input)
        try:
            outputs = self.model(*args, **kwargs)
        finally:
            handle.remove()
        _one_call(seen, type(self.unwrapped).__name__)
        self._seen = seen
        return outputs

    def hidden(self, _outputs: Any) -> Tensor:
        """The output layer's input of the last call.

        Raises:
            ValueError: it is not ``(batch, seq, hidden)``.
        """
        hidden = self._seen[0]
        if hidden.dim() != 3:
            raise ValueError(
                f"rdrop_fused_linear=True: expected the output layer's input of "
                f"{type(self.unwrapped).__name__} to be (batch, seq, hidden), got "
                f"{tuple(hidden.shape)}. {_OFF}"
            )
        return hidden


def forward_hidden(model: nn.Module, unwrapped: nn.Module, batch: dict[str, Any],
                   layout: ConcatLayout) -> tuple[Any, list[Tensor]]:
    """One forward through :class:`HiddenCapture`; returns the model output and the output
    layer's input split into the passes.

    Raises:
        ValueError: the layer is called other than once, or its input is not
            ``(batch, seq, hidden)`` with the copies along the duplicated dimension.
    """
    capture = HiddenCapture(model, unwrapped)
    outputs = capture(**batch)
    return outputs, layout.split(capture.hidden(outputs), "output layer inputs")


@dataclass(frozen=True)
class FusedLoss:
    """:func:`fused_loss` as the loss of :class:`rdrop.training.step.TrainingStep`'s passes (a
    :class:`rdrop.training.step.PassLoss`)."""

    model: nn.Module
    label_smoothing: float
    chunk_size: int

    def __call__(self, passes: list[Tensor], target: Tensor, alpha: float,
                 num_items_in_batch: Tensor | int | None) -> RDropOutput:
        return fused_loss(self.model, passes, target, alpha=alpha,
                          label_smoothing=self.label_smoothing,
                          num_items_in_batch=num_items_in_batch, chunk_size=self.chunk_size)


def fused_loss(model: nn.Module, passes: list[Tensor], target: Tensor, *, alpha: float,
               label_smoothing: float, num_items_in_batch: Tensor | int | None,
               chunk_size: int) -> RDropOutput:
    """The R-Drop loss of the hidden states of the passes through the model's output layer
    (one pass: the plain task loss, through the same chunked code)."""
    head = model.get_output_embeddings()
    w = head.weight
    h = [p.to(w.dtype) for p in passes]  # the projection runs in the weight's dtype
    if len(h) == 1:  # a plain step of every_k_steps: the same chunking, CE only
        h = [h[0], h[0]]
    # Outside any autocast: the fused function manages its own fp32 accumulation. It takes the
    # layer itself, so an FSDP2-sharded weight (DTensor) is gathered and its gradient sharded.
    with torch.autocast(device_type=w.device.type, enabled=False):
        # The trainer checked its options at construction: the core, not the public function.
        out = _fused(
            h[0], h[1], head, target, bias=None, alpha=alpha if len(passes) > 1 else 0.0,
            ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, reduction="mean",
            num_items_in_batch=check_num_items_in_batch(first_count(num_items_in_batch)),
            chunk_size=chunk_size, check_finite=True)
    if len(passes) > 1:
        return out
    # The two "passes" are one tensor: its task term counts CE twice, KL is exactly 0.
    return RDropOutput(loss=out.loss / 2, task_loss=out.task_loss / 2,
                       consistency_loss=out.consistency_loss)
