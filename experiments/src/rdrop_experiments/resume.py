"""Runs that survive a kill: a resumable batch order and the checkpoint of a training loop.

A checkpoint holds everything the loop of :func:`rdrop_experiments.protocol.train_until_patience`
needs to continue exactly where it stopped: the model, optimizer and scheduler state dicts, the
training step's own counters, the random number generators (torch CPU and CUDA, Python), the
position in the shuffled batch order, and the loop's bookkeeping (curves, best point, counters).
It is written atomically (a temporary file, then ``os.replace``) with :func:`torch.save` and read
with ``torch.load(..., weights_only=True)``: only tensors, numbers, strings, lists, tuples and
dicts, never a pickle of arbitrary objects. Resuming from it gives the same curve, bit for bit,
on CPU as a run that was never interrupted (``wall_s`` aside: it counts this machine's time).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BatchCycle",
    "load_checkpoint",
    "load_step_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "step_state",
]


class BatchCycle:
    """Endless shuffled index batches over ``range(n)`` (a new permutation each epoch) whose
    position can be saved and restored.

    The permutation of an epoch is drawn from ``generator`` when the epoch starts; the state is
    the generator's state *before* that draw plus the batch index within the epoch, so a
    restored cycle redraws the same permutation and continues at the same batch.

    Args:
        n: examples; batch_size: indices per batch (a final short batch is dropped; when
            ``n < batch_size`` every batch is one permutation of all ``n``).
        generator: the seeded generator of the data order.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = BatchCycle(10, 4, g); _ = next(a); state = a.state_dict(); b1 = next(a)
        >>> c = BatchCycle(10, 4, torch.Generator()); c.load_state_dict(state)
        >>> torch.equal(next(c), b1)
        True
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._starts = list(range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size))
        self._epoch_state = generator.get_state()
        self._perm = torch.randperm(n, generator=generator)
        self._index = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if self._index == len(self._starts):
            self._epoch_state = self.generator.get_state()
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._index = 0
        start = self._starts[self._index]
        self._index += 1
        return self._perm[start : start + self.batch_size]

    def reseed(self, seed: int) -> None:
        """Start a new epoch drawn from ``seed`` (a branch of the run with another seed)."""
        self.generator.manual_seed(seed)
        self._epoch_state = self.generator.get_state()
        self._perm = torch.randperm(self.n, generator=self.generator)
        self._index = 0

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch_state": ByteTensor, "index": int}``."""
        return {"epoch_state": self._epoch_state.clone(), "index": self._index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position saved by :meth:`state_dict`."""
        self.generator.set_state(state["epoch_state"])
        self._epoch_state = state["epoch_state"].clone()
        self._perm = torch.randperm(self.n, generator=self.generator)
        self._index = int(state["index"])


def rng_state() -> dict[str, Any]:
    """The global generators a training step draws from: torch CPU (dropout masks), every CUDA
    device, and Python's ``random`` (its state is a tuple of ints)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_state(step_fn: Any) -> dict[str, Any]:
    """A training step's own counters (the schedule's step), for a checkpoint: its
    ``state_dict()`` when it has one, else its ``calls`` and its wrapped module's extra state."""
    if hasattr(step_fn, "state_dict"):
        return {"state_dict": step_fn.state_dict()}
    state: dict[str, Any] = {"calls": getattr(step_fn, "calls", None)}
    wrapped = getattr(step_fn, "wrapped", None)
    if wrapped is not None:
        state["wrapped"] = wrapped.get_extra_state()
    return state


def load_step_state(step_fn: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`step_state` returned."""
    if "state_dict" in state:
        step_fn.load_state_dict(state["state_dict"])
        return
    if state.get("calls") is not None:
        step_fn.calls = state["calls"]
    if "wrapped" in state:
        step_fn.wrapped.set_extra_state(state["wrapped"])


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a partial file never replaces a good one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``weights_only=True``), or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def resumed_elapsed(path: str | os.PathLike[str]) -> float:
    """Seconds of training loop the checkpoint at ``path`` already holds (0.0 without one):
    what the earlier processes of a killed run spent training. A record's ``wall_time_s`` adds
    it to the time of the process that finishes the run (their set-up is not counted).

    Example:
        >>> resumed_elapsed("no-such-run.ckpt.pt")
        0.0
    """
    saved = load_checkpoint(path)
    return float(saved["loop"].get("elapsed", 0.0)) if saved is not None else 0.0
