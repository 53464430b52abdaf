r"""Where R-Drop's randomness comes from: ``noise=`` of :class:`rdrop.RDrop` and the integrations.

R-Drop compares passes that differ only by their randomness. Many models fine-tuned today have
none (Llama-family configs ship attention dropout 0, LoRA dropout often defaults to 0), so the
passes are identical and the consistency term is exactly 0. A noise source gives them some:

* ``"dropout"`` (default): the model's own dropout, as it is; nothing is changed.
* ``"embedding:ALPHA"`` (NEFTune, Jain et al. 2023): uniform noise added to the output of the
  input embedding layer,

  .. math::
      \tilde e = e + \epsilon, \qquad \epsilon_{btj} \sim U\Big(-\frac{\alpha}{\sqrt{L d}},
      \frac{\alpha}{\sqrt{L d}}\Big)

  with ``L`` the sequence length, the output's second-to-last size (the padded length, as
  NEFTune; for a packed R-Drop batch the length of one copy) and ``d`` the embedding width.
  ``"embedding"`` alone means alpha 5.
* ``"dropout:P"``: every dropout slot of the model (:func:`rdrop.training.inspection.dropout_slots`:
  ``nn.Dropout`` modules, stochastic depth, float rates such as Hugging Face attention modules'
  ``attention_dropout``) set to ``P``, for models whose config sets them to 0.
* ``"lora:P"``: the dropout on the input of every PEFT LoRA adapter set to ``P`` (PEFT builds an
  ``nn.Identity`` when ``lora_dropout=0``; it is replaced by ``nn.Dropout(P)``).

Each source acts like dropout: in every forward of a module in training mode, with fresh draws
per element, so each pass (each copy of a concatenated batch) draws its own noise; in eval mode
nothing changes, so evaluation and generation are bit-identical to the plain model. The sources
add to the model's own dropout, they do not turn it off. :func:`attach_noise` applies one and
returns a :class:`NoiseHandle` whose ``remove()`` restores the model. Gradient checkpointing
stays exact: the noise is drawn in the forward, and the recompute replays the RNG state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rdrop.training.inspection import (
    dropout_slots,
    input_embedding,
    lora_dropout_layers,
    module_summary,
)

__all__ = ["NOISE_KINDS", "Noise", "NoiseHandle", "attach_noise", "parse_noise"]

NOISE_KINDS = ("dropout", "embedding", "lora")
EMBEDDING_ALPHA = 5.0  # NEFTune's most used setting (alpha 5, 10, 15 in the paper)


@dataclass(frozen=True)
class Noise:
    """One source of randomness for the passes (see the module docstring).

    Attributes:
        kind: ``"dropout"``, ``"embedding"`` or ``"lora"``.
        rate: ``"dropout"``: ``None`` (the model's own rates) or the rate every slot is set to;
            ``"embedding"``: NEFTune's alpha; ``"lora"``: the LoRA dropout rate.
        module: ``"embedding"`` only: the qualified name of the input embedding layer, for a
            model where :func:`rdrop.training.inspection.input_embedding` cannot tell.
    """

    kind: str = "dropout"
    rate: float | None = None
    module: str | None = None

    def __str__(self) -> str:
        return self.kind if self.rate is None else f"{self.kind}:{self.rate:g}"


def parse_noise(spec: str | Noise | None) -> Noise:
    """Read a noise option: ``None``/``"dropout"``, ``"dropout:P"``, ``"embedding"``,
    ``"embedding:ALPHA"``, ``"lora:P"``, or a :class:`Noise`.

    Args:
        spec: the option as the user gave it.

    Returns:
        A checked :class:`Noise`.

    Raises:
        TypeError: not a string or :class:`Noise`.
        ValueError: an unknown kind, a rate that is not a number, a dropout or LoRA rate outside
            ``(0, 1)``, an embedding alpha that is not finite and ``> 0``, or ``"lora"`` without
            a rate.

    Example:
        >>> parse_noise("embedding:5")
        Noise(kind='embedding', rate=5.0, module=None)
        >>> str(parse_noise(None)), str(parse_noise("dropout:0.1"))
        ('dropout', 'dropout:0.1')
        >>> parse_noise("lora")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: noise='lora' needs a rate: noise='lora:0.1' sets every LoRA adapter's ...
    """
    if spec is None:
        return Noise()
    if isinstance(spec, Noise):
        kind, rate, module = spec.kind, spec.rate, spec.module
    elif isinstance(spec, str):
        kind, _, value = spec.strip().partition(":")
        module = None
        try:
            rate = float(value) if value.strip() else None
        except ValueError:
            raise ValueError(f"noise={spec!r}: the rate after ':' must be a number, e.g. "
                             f"'{kind}:0.1'.") from None
    else:
        raise TypeError(f"noise must be a string such as 'embedding:5' or 'dropout:0.1', or a "
                        f"rdrop.training.noise.Noise; got {type(spec).__name__}.")
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS} ('dropout', 'dropout:0.1', "
                         f"'embedding:5', 'lora:0.1'), got {kind!r}.")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))):
        raise TypeError(f"noise rate must be a number, got {type(rate).__name__}.")
    if kind == "embedding":
        rate = EMBEDDING_ALPHA if rate is None else float(rate)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"noise='embedding:ALPHA' needs a finite alpha > 0 (NEFTune uses "
                             f"5, 10, 15), got {rate}.")
    elif kind == "lora" and rate is None:
        raise ValueError("noise='lora' needs a rate: noise='lora:0.1' sets every LoRA adapter's "
                         "dropout to 0.1.")
    elif rate is not None:
        rate = float(rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"noise='{kind}:P' needs a rate 0 < P < 1, got {rate}. Use "
                             f"noise='dropout' for the model's own rates.")
    if module is not None and kind != "embedding":
        raise ValueError(f"Noise(module=...) names the input embedding layer; noise {kind!r} "
                         "takes no module.")
    return Noise(kind, rate, module)


class NoiseHandle:
    """What :func:`attach_noise` did to a model, and how to undo it.

    Attributes:
        noise: the source.
        targets: qualified names of the layers or slots it acts on (empty for ``"dropout"``).
    """

    def __init__(self, noise: Noise, targets: tuple[str, ...]) -> None:
        self.noise = noise
        self.targets = targets
        self._undo: list[Any] = []
        # (to the plain model, back to the noisy one) for each change: a plain step (R-Drop off
        # before its start, or an off-step of every_k_steps) runs the model as it was.
        self._swaps: list[tuple[Any, Any]] = []
        self._plain = False
        self._copies = 1

    @property
    def adds_randomness(self) -> bool:
        """True when the source itself draws noise (every kind but the model's own dropout)."""
        return self.noise.kind != "dropout" or self.noise.rate is not None

    @contextlib.contextmanager
    def forward_copies(self, copies: int) -> Iterator[None]:
        """Within this context a forward computes ``copies`` passes at once (the concatenated
        batch of :func:`rdrop.training.batching.concat_inputs`). A packed batch's copies lie along
        its tokens (one row of ``copies x T``), so for a one-row (or unbatched, 2-D) output the
        embedding noise uses the length of one copy, ``T``, as on the plain batch."""
        previous, self._copies = self._copies, max(int(copies), 1)
        try:
            yield
        finally:
            self._copies = previous

    @contextlib.contextmanager
    def plain(self) -> Iterator[None]:
        """Within this context the model runs without the noise source (as before
        :func:`attach_noise`)."""
        if self._plain:
            yield
            return
        self._plain = True
        for to_plain, _ in self._swaps:
            to_plain()
        try:
            yield
        finally:
            for _, to_noisy in reversed(self._swaps):
                to_noisy()
            self._plain = False

    def pass_context(self, passes: range, plan: Any = None) -> AbstractContextManager[None]:
        """The per-forward hook of :class:`rdrop.training.step.TrainingStep` (``pass_context=``):
        :meth:`forward_copies` of the ``passes`` that forward computes, or :meth:`plain` on a
        plain step (``plan.active`` false): the noise is R-Drop's, so a step before
        ``start_step`` (or an off-step) equals the baseline's step exactly."""
        if plan is not None and not getattr(plan, "active", True):
            return self.plain()
        return self.forward_copies(len(passes))

    def remove(self) -> None:
        """Restore the model as it was before :func:`attach_noise` (idempotent)."""
        while self._undo:
            self._undo.pop()()

    def _embedding_hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if (self._plain or not module.training or not isinstance(output, Tensor)
                or not output.is_floating_point()):
            return None
        length = output.shape[-2] if output.dim() >= 2 else 1
        # The copies of a concatenated forward lie along the sequence when no batch dimension
        # holds them (a packed row (1, mT, d), or an unbatched (mT, d)): one copy's length.
        if output.dim() == 2 or output.shape[0] == 1:
            length //= self._copies
        scale = self.noise.rate / math.sqrt(max(length, 1) * output.shape[-1])  # type: ignore[operator]
        # Drawn in the output's dtype, per element: every copy of the batch gets its own noise.
        return output + torch.empty_like(output).uniform_(-scale, scale)

    def __repr__(self) -> str:
        return f"NoiseHandle(noise={str(self.noise)!r}, targets={len(self.targets)})"


def attach_noise(model: nn.Module, noise: str | Noise | None) -> NoiseHandle:
    """Give ``model`` the randomness ``noise`` names (see the module docstring for the math).

    Args:
        model: the model R-Drop will run (a PEFT model for ``"lora"``).
        noise: as :func:`parse_noise` reads it.

    Returns:
        A :class:`NoiseHandle`; ``handle.remove()`` undoes the change.

    Raises:
        TypeError, ValueError: as :func:`parse_noise`; or the model cannot take the noise: no
            input embedding layer found (``"embedding"``), no dropout slot (``"dropout:P"``),
            no LoRA layer (``"lora"``); the message names the modules it looked at.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(24, 2))
        >>> handle = attach_noise(net, "embedding:5")
        >>> x = torch.tensor([[1, 2, 3]])
        >>> _ = net.train()
        >>> bool((net(x) != net(x)).any())   # each training forward draws its own noise
        True
        >>> _ = net.eval()
        >>> bool((net(x) == net(x)).all())   # eval: the plain model
        True
        >>> handle.remove()
    """
    spec = parse_noise(noise)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if spec.kind == "dropout" and spec.rate is None:
        return NoiseHandle(spec, ())
    if spec.kind == "embedding":
        return _attach_embedding(model, spec)
    if spec.kind == "dropout":
        return _attach_dropout(model, spec)
    return _attach_lora(model, spec)


def _attach_embedding(model: nn.Module, spec: Noise) -> NoiseHandle:
    if spec.module is not None:
        try:
            found: tuple[str, nn.Module] | None = (spec.module, model.get_submodule(spec.module))
        except AttributeError:
            raise ValueError(f"noise: Noise(module={spec.module!r}) is not a submodule of the "
                             f"model; its modules: {module_summary(model)}.") from None
    else:
        found = input_embedding(model)
    if found is None:
        embeddings = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
        why = (f"several nn.Embedding layers {embeddings} and no get_input_embeddings() to say "
               "which embeds the input" if embeddings else
               "no get_input_embeddings() and no nn.Embedding")
        raise ValueError(
            f"noise={str(spec)!r} adds noise to the input embeddings, but rdrop found {why}; "
            f"looked at the model's modules: {module_summary(model)}. Name the layer with "
            "rdrop.training.noise.Noise('embedding', 5.0, module='<name>'), or use "
            "noise='dropout:0.1'."
        )
    name, layer = found
    handle = NoiseHandle(spec, (name,))
    hook = layer.register_forward_hook(handle._embedding_hook)
    handle._undo.append(hook.remove)
    return handle


def _attach_dropout(model: nn.Module, spec: Noise) -> NoiseHandle:
    slots = dropout_slots(model)
    if not slots:
        raise ValueError(
            f"noise={str(spec)!r} switches on the model's dropout, but it has no dropout slot "
            "(nn.Dropout modules, stochastic depth layers, float attributes dropout / "
            f"attention_dropout / dropout_p / attn_dropout / dropout_prob); looked at the "
            f"model's modules: {module_summary(model)}. Use noise='embedding:5' or add "
            "nn.Dropout to the model."
        )
    handle = NoiseHandle(spec, tuple(n for n, _, _ in slots))
    for _, module, attr in slots:
        old = getattr(module, attr)
        setattr(module, attr, spec.rate)
        handle._undo.append(lambda m=module, a=attr, v=old: setattr(m, a, v))
        handle._swaps.append((lambda m=module, a=attr, v=old: setattr(m, a, v),
                              lambda m=module, a=attr, v=spec.rate: setattr(m, a, v)))
    return handle


def _attach_lora(model: nn.Module, spec: Noise) -> NoiseHandle:
    layers = lora_dropout_layers(model)
    if not layers:
        raise ValueError(
            f"noise={str(spec)!r} sets PEFT LoRA dropout, but the model has no LoRA layer "
            "(a module with a lora_dropout ModuleDict, as peft's LoraLayer); looked at the "
            f"model's modules: {module_summary(model)}. Wrap it with peft.get_peft_model "
            "first, or use noise='embedding:5' / noise='dropout:0.1'."
        )
    targets = []
    handle = NoiseHandle(spec, ())
    for name, layer in layers:
        slots: nn.ModuleDict = layer.lora_dropout  # type: ignore[assignment]
        for adapter in list(slots.keys()):
            old = slots[adapter]
            # Built in training mode by default: follow the layer's mode (eval stays noise-free).
            new = nn.Dropout(spec.rate).train(layer.training)  # type: ignore[arg-type]
            slots[adapter] = new
            handle._undo.append(lambda d=slots, k=adapter, v=old: d.__setitem__(k, v))
            handle._swaps.append((lambda d=slots, k=adapter, v=old: d.__setitem__(k, v),
                                  lambda d=slots, k=adapter, v=new: d.__setitem__(k, v)))
            targets.append(f"{name}.lora_dropout.{adapter}")
    handle.targets = tuple(targets)
    return handle
