"""Where a plan's runs train: here, one after another (the default), or on a Ray cluster.

``rdrop run ... --launcher ray [--address ADDR]`` (and ``rdrop scale ... --launcher ray``) sends
every (setting, method, seed) run of the plan to a Ray cluster as one **Ray core task** with
the resources it needs (``num_cpus`` = the run's ``num_threads``; one GPU where
``device=cuda``). A task calls :func:`rdrop_experiments.runner.train_run`, the function the
local loop calls, and returns what it trained; nothing else changes (docs/CLUSTER.md).

* **One writer.** The ``rdrop`` process (Ray's driver) takes every record's lock before the
  first task is sent, writes each record itself, atomically, as its task returns, and only then
  releases the lock. A lost worker thus never leaves a lock or half a record behind, records
  need no storage shared with the workers, and a second ``rdrop run`` on the same folder leaves
  the runs to this one.
* **Nothing lost.** A worker that dies mid-run (killed, out of memory, its node gone) is
  retried by Ray (``max_retries``); the retry finds the run's checkpoint beside its record
  (:func:`rdrop_experiments.runner.checkpoint_path`, read with ``weights_only=True``) and
  resumes from it, so the record equals an uninterrupted run's, curves and metrics.
* **Nothing twice.** An exception raised by the run itself (a crash of the recipe, missing
  data) is not retried (``retry_exceptions=False``), and a worker lost more than
  ``max_retries`` times ends the run: either way the driver writes why to the run's failure
  file (:func:`rdrop_experiments.runner.failure_path`), the other runs go on, and the command
  ends with :class:`rdrop_experiments.runner.RunsFailedError`. A diverged run is a result, not a
  failure: its record says ``stop_reason: diverged``.

Why core tasks and not Ray Tune: a run here is one call that returns one record, over a grid
the registry and the scale map's rule fix in advance; Tune's trials, search algorithms and
schedulers would decide nothing, its trial checkpoints would need the recipes' training loop
rewritten around ``tune.report``, and its results folder would be a second copy of the records.
Tasks give the parts that matter (scheduling by resources, retries of lost workers, the
dashboard's task list, logs streamed to the driver) around the unchanged recipes.

``import rdrop_experiments.launch`` does not import Ray; :class:`RayLauncher` does, when it
first connects.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rdrop_experiments.config import ConfigError
from rdrop_experiments.registry import Experiment
from rdrop_experiments.runner import PlannedRun, TrainedRun

__all__ = ["DEFAULT_MAX_RETRIES", "LAUNCHERS", "RayLauncher", "RunLostError", "make_launcher"]

LAUNCHERS = ("local", "ray")
# A worker lost this many times is not a bad node but a run that cannot fit (memory, disk).
DEFAULT_MAX_RETRIES = 3
RAY_HINT = ("--launcher ray needs Ray: pip install 'torch-rdrop-experiments[ray]' "
            "(or pip install 'ray>=2.9'); docs/CLUSTER.md")


class RunLostError(RuntimeError):
    """A run whose worker was lost more often than Ray retries it."""

    lost_worker = True


def make_launcher(name: str, address: str | None = None) -> RayLauncher | None:
    """The launcher ``rdrop run --launcher NAME [--address ADDR]`` asks for; ``None`` for
    ``local`` (the runs train in this process, and Ray is never imported).

    Raises:
        ConfigError: an unknown name, or ``--address`` without ``--launcher ray``.

    Example:
        >>> make_launcher("local") is None
        True
    """
    if name not in LAUNCHERS:
        raise ConfigError(f"--launcher {name!r} is not a launcher; use one of "
                          f"{', '.join(LAUNCHERS)}.")
    if name == "local":
        if address is not None:
            raise ConfigError("--address names a Ray cluster: add --launcher ray.")
        return None
    return RayLauncher(address)


def _train_task(experiment: Experiment, run: PlannedRun, progress: bool) -> TrainedRun:
    """One run on a Ray worker (the task's body): train, checkpointing beside the record."""
    from rdrop_experiments.runner import checkpoint_path, train_run
    from rdrop_experiments.storage import check_writable

    # a node that cannot write the checkpoint could not resume the run: say so, do not train
    check_writable(checkpoint_path(run.path).parent,
                   what=f"the run folder (on node {socket.gethostname()}; --out must be on "
                        "storage every node reaches, docs/CLUSTER.md)")
    return train_run(experiment, run, progress=progress)


class RayLauncher:
    """Every run of a plan as one Ray task; see the module's docstring.

    Args:
        address: the cluster (``auto``, ``HOST:6379``, ``ray://HOST:10001``); ``None`` joins
            the cluster ``$RAY_ADDRESS`` names, else starts one on this machine for the
            command (and stops it at :meth:`close`). Ignored when Ray is already initialized
            in this process (tests, notebooks): that cluster is used and left running.
        max_retries: how often Ray restarts a run whose worker is lost.
        init_kwargs: more arguments for ``ray.init`` (e.g. ``num_cpus``, ``_temp_dir``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = DEFAULT_MAX_RETRIES,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        self.address = address
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False  # whether this object started (and so stops) the Ray session
        self._remote: Any = None

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise ImportError(RAY_HINT) from exc
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_kwargs)
            self._started = True
        if self._remote is None:
            self._remote = ray.remote(_train_task)
        return ray

    def check_resources(self, plan: Sequence[PlannedRun]) -> None:
        """Refuse devices a Ray task cannot get (``cuda:N``: Ray picks the GPU, use ``cuda``;
        ``mps``) and, on a cluster this command started, runs no node can hold (more threads
        than a node's CPUs, a GPU where there is none). On a cluster it joined, a missing
        resource is only a warning: an autoscaler may add the node the tasks wait for.

        Raises:
            ConfigError: a device or a thread count no task of this cluster can get.
        """
        ray = self._ray()
        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        cpus = max((r.get("CPU", 0.0) for r in alive), default=0.0)
        gpus = max((r.get("GPU", 0.0) for r in alive), default=0.0)
        problems = []
        for device in sorted({r.config.device for r in plan}):
            kind, _, index = device.partition(":")
            if kind == "cuda" and index not in ("", "0"):
                raise ConfigError(f"device={device!r}: on Ray each run gets one GPU of its node, "
                                  "chosen by Ray; use device=cuda.")
            if kind not in ("cpu", "cuda", "auto"):
                raise ConfigError(f"device={device!r} cannot be scheduled by Ray; use "
                                  "device=cpu or device=cuda.")
            if kind == "cuda" and gpus < 1:
                problems.append(f"device={device} but no node of the Ray cluster has a GPU")
        threads = max((r.config.num_threads for r in plan), default=1)
        if threads > cpus:
            problems.append(f"num_threads={threads} but the largest node of the Ray cluster "
                            f"has {cpus:g} CPUs")
        own = self._started and self.address is None and not os.environ.get("RAY_ADDRESS")
        if problems and own:
            raise ConfigError("; ".join(problems) + " (this machine's Ray cluster); lower the "
                              "value, or join a larger cluster with --address.")
        for problem in problems:
            print(f"rdrop: warning: {problem}; its runs wait until such a node joins.",
                  flush=True)

    def run(self, experiment: Experiment, runs: Sequence[PlannedRun], *,
            progress: bool) -> Iterator[tuple[PlannedRun, TrainedRun | BaseException]]:
        """Send every run at once; yield each with its outcome as it finishes (a
        :class:`~rdrop_experiments.runner.TrainedRun`, or the error that ended it). Runs not
        yet finished when the caller stops (Ctrl-C) are cancelled."""
        if not runs:
            return
        ray = self._ray()
        from ray.exceptions import RayError, RayTaskError

        shared = ray.put(experiment)
        pending: dict[Any, PlannedRun] = {}
        for run in runs:
            # the worker's paths must not depend on its working directory
            remote_run = replace(run, path=Path(os.path.abspath(run.path)))
            gpu = run.config.device.startswith("cuda")
            ref = self._remote.options(
                name=f"{run.label or run.experiment} {run.method} s{run.seed} [{run.setting}]",
                num_cpus=run.config.num_threads, num_gpus=1 if gpu else 0,
                max_retries=self.max_retries, retry_exceptions=False,
            ).remote(shared, remote_run, progress and run.config.progress)
            pending[ref] = run
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                run = pending.pop(ref)
                try:
                    outcome: TrainedRun | BaseException = ray.get(ref)
                except RayTaskError as exc:  # the run's own error: not retried
                    outcome = exc
                except RayError as exc:  # its worker or node lost, more than max_retries times
                    outcome = RunLostError(
                        f"its worker was lost {self.max_retries + 1} time(s) (Ray retries "
                        f"{self.max_retries}); last: {type(exc).__name__}: {exc}")
                yield run, outcome
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Stop the Ray session this launcher started (none when it joined one)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
