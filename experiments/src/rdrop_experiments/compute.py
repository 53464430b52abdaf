r"""Honest compute: forward-backward equivalents (``fb_equivalents``) of every training step.

A forward plus backward of one sample counts 1. A forward without backward (the stop-gradient
arm's target pass) counts :math:`f`, the measured ratio of a training-mode forward's time to a
forward+backward's on the run's own model and batch, measured once per run:

.. math::
    \text{fb}(\text{step}) = g + f \cdot h,

with ``g`` the samples forwarded with a backward and ``h`` those forwarded without one:

=================================  ==================  ====================
step                               ``g``               ``h``
=================================  ==================  ====================
baseline, or R-Drop off            ``B``               0
R-Drop, ``m`` passes               ``m B``             0
``second_pass_fraction = r``       ``B + ceil(r B)``   0
stop-gradient                      ``B``               ``B``
stop-gradient, fraction ``r``      ``B``               ``ceil(r B)``
=================================  ==================  ====================

``sample_passes`` (``g + h``, the earlier x-axis, an upper bound) and ``backward_passes``
(``g``) stay on the curves beside ``fb_equivalents``. Evaluation forwards are not counted (every
arm has the same).

:class:`ComputeMeter` is what the training loop holds: :meth:`ComputeMeter.add` once per
optimizer step (it measures ``f`` at its first call), :meth:`ComputeMeter.point` on every curve
point, :meth:`ComputeMeter.record_fields` in the record.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rdrop.losses.subset import subset_size
from rdrop.training.batching import extract_logits
from rdrop.training.step import PassPlan

__all__ = ["ComputeMeter", "fb_of_point", "measure_forward_ratio", "plan_passes", "step_passes",
           "step_passes_of"]


def step_passes(batch_size: int, *, active: bool, num_passes: int = 2,
                second_rows: int | None = None, stop_gradient: bool = False) -> tuple[int, int]:
    """``(g, h)``: samples forwarded with and without a backward in one step (table above).

    Args:
        batch_size: ``B``, the samples of the step before any duplication.
        active: whether R-Drop ran on this step (``False``: one plain pass).
        num_passes: ``m`` (full R-Drop).
        second_rows: rows of the second pass (``ceil(r B)``); ``None`` = ``B`` (no fraction).
        stop_gradient: the second pass runs without gradient.

    Example:
        >>> step_passes(16, active=True), step_passes(16, active=True, second_rows=4)
        ((32, 0), (20, 0))
        >>> step_passes(16, active=True, stop_gradient=True, second_rows=4)
        (16, 4)
        >>> step_passes(16, active=False, stop_gradient=True)
        (16, 0)
    """
    if not active:
        return batch_size, 0
    second = batch_size if second_rows is None else second_rows
    if stop_gradient:
        return batch_size, second
    if second_rows is None:
        return num_passes * batch_size, 0
    return batch_size + second, 0


def plan_passes(plan: PassPlan, batch_size: int) -> tuple[int, int]:
    """``(g, h)`` of one step that runs ``plan`` (:meth:`rdrop.training.step.TrainingStep.plan`)
    over ``batch_size`` rows: the one cost model, read by the training step and by
    :func:`rdrop_experiments.protocol.step_cost`.

    Example:
        >>> plan_passes(PassPlan(passes=2, alpha=1.0, concat=False, detached=1, fraction=0.25), 16)
        (16, 4)
        >>> plan_passes(PassPlan(passes=1, alpha=0.0, concat=False), 16)
        (16, 0)
    """
    second = subset_size(batch_size, plan.fraction) if plan.fraction < 1.0 else None
    return step_passes(batch_size, active=plan.active, num_passes=plan.passes,
                       second_rows=second, stop_gradient=bool(plan.detached))


def step_passes_of(step_fn: Any, fallback: Callable[[], tuple[int, int]]) -> tuple[int, int]:
    """``(g, h)`` of the step ``step_fn`` just ran: its ``last_passes`` when it reports them
    (the harness's training step does, from the library step's plan), else ``fallback()``'s
    ``(forward, backward)`` sample passes (:func:`rdrop_experiments.protocol.step_cost`, the
    same plan read from the config), called only then.

    Example:
        >>> step_passes_of(object(), lambda: (32, 16))
        (16, 16)
    """
    reported = getattr(step_fn, "last_passes", None)
    if reported is not None:
        return int(reported[0]), int(reported[1])
    forward, backward = fallback()
    return backward, forward - backward


def _timing_loss(output: Any, target: Tensor) -> Tensor:
    logits = extract_logits(output)
    if target.is_floating_point():
        return F.mse_loss(logits.float().reshape(target.shape), target.float())
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                           ignore_index=-100)


def measure_forward_ratio(model: nn.Module, args: tuple[Any, ...], target: Tensor, *,
                          kwargs: Mapping[str, Any] | None = None, repeats: int = 5,
                          warmup: int = 1,
                          loss_fn: Callable[[Any, Tensor], Tensor] = _timing_loss) -> float:
    r"""``f = t(forward) / t(forward + loss + backward)`` on one batch, medians over rounds.

    Both in training mode (dropout on), the forward-only one under ``torch.no_grad`` (as the
    stop-gradient arm's target pass runs); timed in rotation, ``repeats`` rounds after
    ``warmup``, with process CPU time on CPU (robust to waiting on a shared machine) and wall
    time after ``cuda.synchronize`` on CUDA. The model is deep-copied and the torch random
    generators are restored afterwards, so the run itself is unchanged.

    Returns:
        ``f`` in ``(0, 1]`` (clipped to 1 if noise makes the forward look slower).

    Example:
        >>> net = nn.Sequential(nn.Linear(32, 64), nn.Dropout(0.1), nn.Linear(64, 5))
        >>> f = measure_forward_ratio(net, (torch.randn(16, 32),), torch.randint(0, 5, (16,)),
        ...                           repeats=2)
        >>> 0 < f <= 1
        True
    """
    kwargs = dict(kwargs or {})
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    probe = copy.deepcopy(model).train()
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time

    def timed(fn: Callable[[], None]) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = clock()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return clock() - t0

    def forward() -> None:
        with torch.no_grad():
            probe(*args, **kwargs)

    def forward_backward() -> None:
        loss_fn(probe(*args, **kwargs), target).backward()
        probe.zero_grad(set_to_none=True)

    fwd: list[float] = []
    both: list[float] = []
    try:
        for r in range(warmup + repeats):
            t_f, t_fb = timed(forward), timed(forward_backward)
            if r >= warmup:
                fwd.append(t_f)
                both.append(t_fb)
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    ratio = statistics.median(fwd) / max(statistics.median(both), 1e-12)
    return float(min(1.0, max(ratio, 1e-6)))


class ComputeMeter:
    """Counts a run's compute per optimizer step; what the training loop holds.

    Args:
        model: the run's model (copied once to measure ``f``).
        forward_ratio: a known ``f`` (skips the measurement; tests, or a resumed run).
        repeats: rounds of :func:`measure_forward_ratio`.

    Example:
        >>> meter = ComputeMeter(nn.Linear(4, 3), forward_ratio=0.25)
        >>> meter.add((torch.randn(8, 4),), torch.zeros(8, dtype=torch.long), passes=(8, 8))
        >>> meter.point()
        {'fb_equivalents': 10.0}
    """

    def __init__(self, model: nn.Module, *, forward_ratio: float | None = None,
                 repeats: int = 5) -> None:
        self.model = model
        self.forward_ratio = forward_ratio
        self.repeats = repeats
        self.fb = 0.0
        self.error: str | None = None

    def add(self, args: tuple[Any, ...], target: Tensor, *, passes: tuple[int, int],
            kwargs: Mapping[str, Any] | None = None) -> None:
        """Charge one step of ``passes = (g, h)`` (see :func:`step_passes`); at the first call
        measure ``f`` on this batch (before the caller's backward is fine: the model is copied
        and the random generators restored)."""
        g, h = passes
        if self.forward_ratio is None and self.error is None:
            try:
                self.forward_ratio = measure_forward_ratio(self.model, args, target,
                                                           kwargs=kwargs, repeats=self.repeats)
            except (NotImplementedError, TypeError, ValueError, RuntimeError) as err:
                # f is only needed by a step with a forward without backward (below)
                self.error = f"{type(err).__name__}: {err}"[:200]
        # Not measurable (a model without a plain forward): a forward counts as a whole
        # sample pass, the upper bound, and the record says why (forward_ratio_error).
        self.fb += g + (1.0 if self.forward_ratio is None else self.forward_ratio) * h

    def point(self) -> dict[str, float]:
        """The fields of a curve point."""
        return {"fb_equivalents": round(self.fb, 4)}

    def record_fields(self) -> dict[str, Any]:
        """The fields of the record: ``forward_ratio`` (``f``) and how it was measured."""
        fields: dict[str, Any] = {
            "forward_ratio": None if self.forward_ratio is None else round(self.forward_ratio, 4),
            "forward_ratio_method": "median process-CPU time of a train-mode forward under "
                                    "no_grad / forward+loss+backward, same batch, "
                                    f"{self.repeats} rounds in rotation"}
        if self.error is not None:
            fields["forward_ratio_error"] = self.error
        return fields

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, for the loop's checkpoint."""
        return {"fb": self.fb, "forward_ratio": self.forward_ratio, "error": self.error}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed run keeps its measured ``f``)."""
        self.fb = float(state["fb"])
        self.forward_ratio = state["forward_ratio"]
        self.error = state.get("error")


def fb_of_point(point: Mapping[str, float], forward_ratio: float) -> float:
    """``fb_equivalents`` of a curve point: its own, or for a record written before they
    existed, ``backward_passes + f * (sample_passes - backward_passes)`` (the forward-only
    samples are the difference), with ``f`` measured on the same family's model.

    Example:
        >>> fb_of_point({"sample_passes": 32, "backward_passes": 16}, 0.3)
        20.8
        >>> fb_of_point({"fb_equivalents": 7.0, "sample_passes": 9}, 0.3)
        7.0
    """
    if "fb_equivalents" in point:
        return float(point["fb_equivalents"])
    total = float(point["sample_passes"])
    backward = float(point.get("backward_passes", total))
    value = backward + forward_ratio * (total - backward)
    return round(value, 4) if math.isfinite(value) else value
