"""`rdrop run` and `rdrop scale` with a launcher: every experiment's runs sent at once, a
failed run reported with the others written, and the next cell of `rdrop scale` still run."""

from __future__ import annotations

import json
import threading

from rdrop_experiments import launch, scale
from rdrop_experiments.cli import main
from rdrop_experiments.runner import RunsFailedError, train_run


class BarrierLauncher:
    """A launcher whose runs of one experiment wait until every experiment has sent its
    runs: a CLI that sends one experiment after the other breaks the barrier."""

    name = "fake"

    def __init__(self, experiments: int) -> None:
        self.barrier = threading.Barrier(experiments, timeout=20)
        self.sent: list[str] = []

    def check_resources(self, plan):
        pass

    def run(self, experiment, runs, *, progress):
        self.sent.append(experiment.name)
        self.barrier.wait()  # BrokenBarrierError when the experiments are sent one by one
        for run in runs:
            try:
                yield run, train_run(experiment, run, progress=False)
            except RuntimeError as exc:  # a run's own failure, as Ray hands it back
                yield run, exc


def test_run_sends_every_experiment_at_once_and_reports_failures(tmp_path, calls, fail_seeds,
                                                                 monkeypatch, capsys):
    fake = BarrierLauncher(2)
    monkeypatch.setattr(launch, "make_launcher", lambda name, address=None: fake)
    fail_seeds.append(1)  # seed 1 of every experiment raises
    status = main(["run", "toy", "toy-alpha", "seeds=2", "--out", str(tmp_path),
                   "--no-progress", "--launcher", "ray"])
    assert status == 1 and sorted(fake.sent) == ["toy", "toy-alpha"]
    err = capsys.readouterr().err
    assert "rdrop run toy: 2 run(s) failed" in err  # baseline and rdrop, seed 1
    # one baseline (alpha does not change it) and rdrop at 2 alphas, seed 1
    assert "rdrop run toy-alpha: 3 run(s) failed" in err
    written = sorted(p.name.split("-")[1] for p in tmp_path.rglob("*.json"))
    assert written == ["seed0"] * (2 + 3)  # every seed-0 run of both experiments
    failed = list(tmp_path.rglob("*.json.failed"))
    assert len(failed) == 5 and all(json.loads(p.read_text()) for p in failed)


def test_scale_goes_on_to_the_next_cell_after_failed_runs(tmp_path, monkeypatch, capsys):
    ran = []

    def run_cell(cell, out, **kwargs):
        ran.append(cell.name)
        if len(ran) == 1:
            raise RunsFailedError([])

    monkeypatch.setattr(scale, "run_cell", run_cell)
    cells = [c.name for c in scale.CELLS[:2]]
    assert main(["scale", *cells, "--out", str(tmp_path), "--no-progress"]) == 1
    assert ran == cells
    assert f"rdrop scale {cells[0]}: 0 run(s) failed" in capsys.readouterr().err
