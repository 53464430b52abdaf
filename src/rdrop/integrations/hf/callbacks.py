"""Start R-Drop from the Trainer's validation metric: ``RDropPlateauStartCallback`` (on the
plateau, before the optimum: :class:`rdrop.PlateauStart`, the recommended rule) and
``RDropAutoStartCallback`` (after ``patience`` evaluations without improvement:
:class:`rdrop.AutoStart`). The rules are the same code a plain loop uses. When the
rule fires, R-Drop is on from the next optimizer step
(``every_k_steps`` and ``rdrop_alpha_warmup_steps`` count from there). The R-Drop trainers look
the callback up among their callbacks at every step; before the switch they train plainly (one
pass). The state is saved in checkpoints (``TrainerState.stateful_callbacks``) and restored by
``trainer.train(resume_from_checkpoint=...)`` (also without HF's
``restore_callback_states_from_checkpoint``: the callback reads it at ``on_train_begin``).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from rdrop.training.autostart import PLATEAU_FRACTION, PLATEAU_WINDOW, AutoStart, PlateauStart

__all__ = ["RDropAutoStartCallback", "RDropPlateauStartCallback", "check_auto_start"]


class RDropAutoStartCallback(TrainerCallback, ExportableState):
    """Switch R-Drop on after ``patience`` evaluations without improvement of ``metric``.

    Args:
        patience: evaluations without improvement (``>= 1``).
        metric: the evaluation metric to watch, with or without the ``eval_`` prefix; ``None``
            uses ``args.metric_for_best_model``, else ``eval_loss``.
        higher_is_better: its direction; ``None`` uses ``args.greater_is_better`` when
            ``metric_for_best_model`` is the metric, else ``False`` (a loss).
        min_delta: the margin an improvement must exceed.

    Raises:
        TypeError, ValueError: as :class:`rdrop.AutoStart`; at an evaluation, a
            ``metric`` that the evaluation did not report (the message lists those it did).

    Example:
        >>> from rdrop.integrations.hf import RDropAutoStartCallback
        >>> cb = RDropAutoStartCallback(patience=2)
        >>> cb.start_step is None
        True
    """

    def __init__(self, patience: int = 2, metric: str | None = None,
                 higher_is_better: bool | None = None, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.min_delta = min_delta
        self._new_rule(False)  # check the settings now, not at the first eval
        self.auto: AutoStart | PlateauStart | None = None
        self._pending: dict[str, Any] | None = None

    def _new_rule(self, higher: bool) -> AutoStart | PlateauStart:
        return AutoStart(self.patience, higher_is_better=higher, min_delta=self.min_delta)

    def _args(self) -> dict[str, Any]:
        return {"patience": self.patience, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "min_delta": self.min_delta}

    @property
    def start_step(self) -> int | None:
        """The optimizer step from which R-Drop runs; ``None`` until the switch."""
        return self.auto.start_step if self.auto is not None else (
            (self._pending or {}).get("start_step"))

    # A checkpoint stores `auto_state`; on resume HF sets it on a fresh callback (setattr).
    @property
    def auto_state(self) -> dict[str, Any] | None:
        return self.auto.state_dict() if self.auto is not None else self._pending

    @auto_state.setter
    def auto_state(self, state: dict[str, Any] | None) -> None:
        self._pending = state
        if self.auto is not None and state is not None:
            self.auto.load_state_dict(state)

    def _metric(self, args: Any) -> tuple[str, bool]:
        name = self.metric or getattr(args, "metric_for_best_model", None) or "eval_loss"
        key = name if name.startswith("eval_") else f"eval_{name}"
        higher = self.higher_is_better
        if higher is None:
            chosen = getattr(args, "metric_for_best_model", None)
            same = chosen is not None and key in (chosen, f"eval_{chosen}")
            higher = bool(getattr(args, "greater_is_better", False)) if same else False
        return key, higher

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """On a resumed run, take the saved state from the checkpoint's trainer state (HF
        itself restores callbacks only with ``restore_callback_states_from_checkpoint``)."""
        if self.auto_state is not None:
            return
        saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        if isinstance(saved, dict):
            self.auto_state = saved.get("attributes", {}).get("auto_state")

    def on_evaluate(self, args: Any, state: Any, control: Any,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        key, higher = self._metric(args)
        if self.auto is None:
            self.auto = self._new_rule(higher)
            if self._pending is not None:
                self.auto.load_state_dict(self._pending)
        if not metrics or key not in metrics:
            raise KeyError(
                f"{type(self).__name__} watches {key!r}, which this evaluation did not report "
                f"(got {sorted(metrics or {})}). Pass metric= one of those, or set "
                "metric_for_best_model."
            )
        self.auto.update(float(metrics[key]), step=int(state.global_step))

    def state(self) -> dict[str, Any]:
        """For ``TrainerState.stateful_callbacks`` (saved with every checkpoint)."""
        return {"args": self._args(), "attributes": {"auto_state": self.auto_state}}


class RDropPlateauStartCallback(RDropAutoStartCallback):
    """Switch R-Drop on where ``metric`` reaches its plateau, before its optimum
    (:class:`rdrop.PlateauStart`: the best value improved by at most ``fraction``
    of its improvement so far over the last ``window`` evaluations).

    Args:
        window, fraction: as :class:`rdrop.PlateauStart` (the registered rule's
            values by default).
        metric, higher_is_better: as :class:`RDropAutoStartCallback`.

    Raises:
        TypeError, ValueError: as :class:`rdrop.PlateauStart`; at an evaluation, a
            ``metric`` that the evaluation did not report.

    Example:
        >>> from rdrop.integrations.hf import RDropPlateauStartCallback
        >>> RDropPlateauStartCallback().start_step is None
        True
    """

    def __init__(self, window: int = PLATEAU_WINDOW, fraction: float = PLATEAU_FRACTION,
                 metric: str | None = None, higher_is_better: bool | None = None) -> None:
        self.window, self.fraction = window, fraction
        super().__init__(metric=metric, higher_is_better=higher_is_better)

    def _new_rule(self, higher: bool) -> AutoStart | PlateauStart:
        return PlateauStart(self.window, self.fraction, higher_is_better=higher)

    def _args(self) -> dict[str, Any]:
        return {"window": self.window, "fraction": self.fraction, "metric": self.metric,
                "higher_is_better": self.higher_is_better}


def check_auto_start(args: Any, start_step: int, owner: str) -> None:
    """Refuse an automatic start that could never switch, or that a fixed start contradicts.

    Raises:
        ValueError: no evaluation during training (``eval_strategy="no"``), or
            ``rdrop_start_step > 0`` beside the callback.
    """
    strategy = str(getattr(getattr(args, "eval_strategy", "no"), "value",
                           getattr(args, "eval_strategy", "no")))
    if strategy == "no":
        raise ValueError(
            f"{owner}: a start callback (RDropPlateauStartCallback, RDropAutoStartCallback) "
            "switches R-Drop on from evaluations, but eval_strategy is 'no', so it would never "
            "switch. Set "
            "eval_strategy='steps' (with eval_steps) or 'epoch', and an eval_dataset."
        )
    if start_step:
        raise ValueError(
            f"{owner}: rdrop_start_step={start_step} and a start callback both choose "
            "when R-Drop starts; keep one of them (rdrop_start_step=0 with the callback)."
        )
