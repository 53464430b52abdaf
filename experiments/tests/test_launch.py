"""``--launcher ray`` on a real Ray cluster of this machine: the same records as local runs, a
worker killed mid-run resumed from its checkpoint, failures recorded once (issue 34).

One cluster (``ray.init`` with its own temporary folder, 2 CPUs, no dashboard) serves every
test of this module; it is shut down at the end. The tests skip only where Ray cannot be
imported (``pip install "torch-rdrop-experiments[ray]"``; ``make test`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rdrop_experiments.config import CommonConfig, ConfigError
from rdrop_experiments.registry import ArmRun, Experiment, RunResult
from rdrop_experiments.runner import (
    RunsFailedError,
    checkpoint_path,
    failure_path,
    plan_runs,
    run_experiment,
)

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install 'torch-rdrop-experiments[ray]'")

from rdrop_experiments.launch import RayLauncher, make_launcher  # noqa: E402

# The quick image run, both arms, long enough (R-Drop: about 70 steps, a checkpoint every 10)
# that its worker is killed well before the end.
IMAGE = {"seeds": 1, "max_sample_passes": 9000, "patience": 0, "checkpoint_every_s": 0}


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster of this machine for the module (2 CPUs), in its own temporary folder (a
    short path: Ray's socket paths have a length limit)."""
    temp = tempfile.mkdtemp(prefix="rdrop-ray-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray
        # this module's recipes travel by value: the workers cannot import a test module
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            shutil.rmtree(temp, ignore_errors=True)


def _without_wall(curves):
    return [{k: v for k, v in point.items() if k != "wall_s"} for point in curves]


def _worker_pid(task_name: str, timeout: float = 60.0) -> int:
    """The pid of the Ray worker running the task ``task_name`` (its process title is
    ``ray::<task name>`` while it runs the task)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if " ".join(proc.info["cmdline"] or []).startswith(f"ray::{task_name}"):
                return proc.info["pid"]
        time.sleep(0.05)
    raise AssertionError(f"no Ray worker runs {task_name!r}")


@pytest.mark.slow
def test_a_killed_worker_resumes_and_every_record_equals_the_local_run(cluster, tmp_path):
    local = run_experiment("image", IMAGE, variant="quick", grid=False, out=tmp_path / "local",
                           progress=False)
    plan = plan_runs_for_image(tmp_path / "ray")
    victim = next(r for r in plan if r.method == "rdrop")
    outcome: dict[str, object] = {}

    def drive() -> None:
        try:
            outcome["records"] = run_experiment(
                "image", IMAGE, variant="quick", grid=False, out=tmp_path / "ray",
                progress=False, launcher=RayLauncher())
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    # kill -9 the worker of the R-Drop run once it has written a mid-run checkpoint
    ckpt = checkpoint_path(victim.path)
    deadline = time.monotonic() + 300  # a loaded machine starts Ray workers slowly
    while not ckpt.exists() and driver.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), "the run finished (or never started) before a checkpoint was seen"
    os.kill(_worker_pid(f"{victim.label} rdrop s0"), signal.SIGKILL)
    driver.join(timeout=180)
    assert not driver.is_alive() and "error" not in outcome, outcome.get("error")

    remote = {r["method"]: r for r in outcome["records"]}
    assert remote["rdrop"]["launcher"]["resumed_from_step"] > 0  # retried from the checkpoint
    assert remote["baseline"]["launcher"]["resumed_from_step"] == 0
    for rec in local:  # the same record, bit for bit, curves and metrics
        other = remote[rec["method"]]
        assert _without_wall(other["curves"]) == _without_wall(rec["curves"])
        assert other["metrics"] == rec["metrics"] and other["value"] == rec["value"]
        assert (other["key"], other["data_hash"]) == (rec["key"], rec["data_hash"])
    folder = tmp_path / "ray" / "image"
    assert sorted(p.name for p in folder.iterdir()) == sorted(r.path.name for r in plan)

    # the same command again, through the CLI: nothing to train, nothing rewritten
    from rdrop_experiments.cli import main

    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(["run", "image", "--quick", "--no-grid", "seeds=1", "max_sample_passes=9000",
                 "patience=0", "checkpoint_every_s=0", "--launcher", "ray", "--out",
                 str(tmp_path / "ray"), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


def plan_runs_for_image(out: Path):
    from rdrop_experiments.registry import get_experiment

    return plan_runs(get_experiment("image"), out, IMAGE, variant="quick", grid=False)


# ------------------------------------------------------------ runs that fail for their own reason
@dataclass(frozen=True)
class TinyConfig(CommonConfig):
    methods: tuple[str, ...] = ("baseline",)
    seeds: int = 2
    progress: bool = False
    attempts: str = ""  # a file each attempt appends its seed to
    crash_seed: int = 1000  # this seed raises
    kill_seed: int = 1000  # this seed kills its own worker


def tiny_recipe(cfg: TinyConfig, arm: ArmRun) -> RunResult:
    with open(cfg.attempts, "a") as f:
        f.write(f"{arm.seed}\n")
    if arm.seed == cfg.crash_seed:
        raise RuntimeError("the recipe's own bug")
    if arm.seed == cfg.kill_seed:
        os.kill(os.getpid(), signal.SIGKILL)
    torch.manual_seed(arm.seed)
    value = float(torch.rand(()))
    return RunResult({"accuracy": value}, [{"step": 1, "train_loss": 1.0, "valid_loss": 1.0,
                                            "valid_accuracy": value}])


TINY = Experiment(name="tiny", config=TinyConfig(), recipe=tiny_recipe, metric="accuracy",
                  variants={"quick": {}}, tags=("test",))


def _attempts(path: Path) -> list[int]:
    return sorted(int(line) for line in path.read_text().split())


def test_a_run_that_raises_is_recorded_once_and_the_others_are_written(cluster, tmp_path):
    attempts = tmp_path / "attempts.txt"
    overrides = {"attempts": str(attempts), "crash_seed": 1}
    with pytest.raises(RunsFailedError, match="1 run"):
        run_experiment("tiny", overrides, out=tmp_path, progress=False, experiment=TINY,
                       launcher=RayLauncher())
    assert _attempts(attempts) == [0, 1]  # the failing run was tried once, not retried
    crashed, fine = sorted(plan_runs(TINY, tmp_path, overrides), key=lambda r: -r.seed)
    assert fine.path.exists() and not crashed.path.exists()
    import json

    failure = json.loads(failure_path(crashed.path).read_text())
    assert failure["seed"] == 1 and not failure["lost_worker"]
    assert "the recipe's own bug" in failure["message"]
    assert not list(tmp_path.rglob("*.lock"))
    from rdrop_experiments.storage import scan_results

    assert scan_results(tmp_path)[1] == []  # a report neither reads it nor lists it as skipped
    # a rerun of the command tries the failed run once more, and only it
    with pytest.raises(RunsFailedError):
        run_experiment("tiny", overrides, out=tmp_path, progress=False, experiment=TINY,
                       launcher=RayLauncher())
    assert _attempts(attempts) == [0, 1, 1]


def test_a_worker_lost_more_often_than_ray_retries_ends_the_run(cluster, tmp_path):
    attempts = tmp_path / "attempts.txt"
    overrides = {"attempts": str(attempts), "kill_seed": 0, "seeds": 1}
    with pytest.raises(RunsFailedError):
        run_experiment("tiny", overrides, out=tmp_path, progress=False, experiment=TINY,
                       launcher=RayLauncher(max_retries=1))
    assert _attempts(attempts) == [0, 0]  # the first try and one retry, then no more
    import json

    (run,) = plan_runs(TINY, tmp_path, overrides)
    failure = json.loads(failure_path(run.path).read_text())
    assert failure["lost_worker"] and failure["error"] == "RunLostError"


def test_devices_ray_cannot_schedule_are_refused_before_training(cluster, tmp_path):
    plan = plan_runs(TINY, tmp_path, {"device": "cuda:1"})
    with pytest.raises(ConfigError, match="use device=cuda"):
        RayLauncher().check_resources(plan)
    with pytest.raises(ConfigError, match="--launcher ray"):
        make_launcher("local", "auto")


def test_the_flag_is_documented_and_the_local_launcher_never_imports_ray(tmp_path, capsys):
    from rdrop_experiments.cli import main

    for command in ("run", "scale"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--launcher {local,ray}" in text and "docs/CLUSTER.md" in text, text
        assert "--address" in text
    code = ("import sys; from rdrop_experiments.cli import main; "
            f"main(['run', 'image', '--quick', '--dry-run', '--out', {str(tmp_path)!r}]); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False"
