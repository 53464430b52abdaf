"""The ``rdrop`` command line: fast help, ls, clear errors, run + report end to end (toy), and
the checks that run before any training (values, device, output folder, committed results)."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest
import torch

from rdrop_experiments.cli import build_parser, main
from rdrop_experiments.registry import get_experiment
from rdrop_experiments.storage import load_results


def test_help_is_fast_and_lazy():
    code = ("import sys, time; t = time.time(); from rdrop_experiments import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = ('rdrop_experiments.families', 'matplotlib', 'transformers')\n"
            "print(int(any(m.startswith(heavy) for m in sys.modules)), time.time() - t)")
    t = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    loaded, _ = out.stdout.strip().splitlines()[-1].split()
    assert loaded == "0"
    assert "rdrop" in out.stdout and time.time() - t < 60


def test_ls_lists_families(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "image" in out and "text-classification" in out


def test_bad_override_is_one_clear_line(capsys, tmp_path):
    assert main(["run", "image", "alpah=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'alpah'" in err and "Did you mean alpha" in err
    assert main(["run", "nope", "--out", str(tmp_path)]) == 2
    assert main(["run", "image", "seeds=0", "--dry-run", "--out", str(tmp_path)]) == 2


def test_run_then_report(capsys, tmp_path, calls):
    assert main(["run", "toy", "seeds=2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert len(calls) == 4
    assert main(["run", "toy", "seeds=2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert len(calls) == 4  # resumed: nothing left to do
    assert main(["run", "toy", "seeds=1", "--out", str(tmp_path), "--no-progress",
                 "--force"]) == 0
    assert len(calls) == 6
    assert main(["report", "--results", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| toy | alpha=1 (default) | accuracy (%) |" in out
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "summary.md").exists()


def test_default_out_is_runs_not_results(tmp_path, monkeypatch, calls):
    parser = build_parser()
    assert parser.parse_args(["run", "toy"]).out == "runs"
    assert parser.parse_args(["report"]).results == "runs"
    monkeypatch.chdir(tmp_path)
    assert main(["run", "toy", "seeds=1", "--no-progress"]) == 0
    assert len(load_results(tmp_path / "runs")) == 2
    assert not (tmp_path / "results").exists()


def test_flags_and_overrides_in_any_order(tmp_path, calls):
    assert main(["run", "toy", "--quick", "seeds=1", "--no-progress", "--out", str(tmp_path),
                 "alpha=0.5"]) == 0
    assert sorted(calls) == [("baseline", 0, 0.5), ("rdrop", 0, 0.5)]
    recs = load_results(tmp_path)
    assert {r["variant"] for r in recs} == {"quick"} and recs[0]["config"]["max_steps"] == 2
    with pytest.raises(SystemExit):  # a stray non-override token is still an error
        main(["run", "toy", "--quick", "oops", "--out", str(tmp_path)])


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys, calls):
    assert main(["run", "toy", "--dry-run", "seeds=2", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    planned = [line.split() for line in lines if line.startswith(("todo", "done"))]
    assert [(p[0], p[1], p[3], p[4], p[5]) for p in planned] == [
        ("todo", "toy", "baseline", "seed=0", "steps=5"), ("todo", "toy", "rdrop", "seed=0",
                                                           "steps=5"),
        ("todo", "toy", "baseline", "seed=1", "steps=5"), ("todo", "toy", "rdrop", "seed=1",
                                                           "steps=5")]
    assert lines[-1] == "4 run(s) planned, 4 to run."
    assert calls == [] and not any(tmp_path.iterdir())


@pytest.mark.parametrize("override,key", [("alpha=nan", "alpha"), ("alpha=inf", "alpha"),
                                          ("lr=nan", "lr"), ("lr=-inf", "lr"),
                                          ("hidden=-3", "hidden"), ("batch_size=-1", "batch_size"),
                                          ("weight_decay=-0.1", "weight_decay"),
                                          ("pass_dropouts=0.1,nan", "pass_dropouts"),
                                          ("chunk_size=0", "chunk_size")])
def test_dry_run_rejects_bad_values_naming_the_key(tmp_path, capsys, calls, override, key):
    assert main(["run", "toy", override, "--dry-run", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rdrop run: error: {key} must be ") and err[-1] == "\n"
    assert calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_refused_before_training(tmp_path, capsys, calls):
    for device in ("cuda", "cuda:3"):
        assert main(["run", "toy", f"device={device}", "--out", str(tmp_path)]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert main(["run", "toy", "device=gpu", "--out", str(tmp_path)]) == 2
    assert "device='gpu' is not a device" in capsys.readouterr().err
    assert calls == [] and not any(tmp_path.iterdir())


def test_unwritable_out_is_found_before_training(tmp_path, capsys, calls):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["run", "toy", "--out", str(blocker / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is not writable" in err
    assert calls == []


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_quick_run_refuses_the_committed_results(tmp_path, capsys, calls):
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / "results" / "summary.md").write_text("committed evidence\n")
    _git("init", "-q", cwd=repo)
    _git("add", "results", cwd=repo)
    _git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "results", cwd=repo)
    out = str(repo / "results")
    assert main(["run", "toy", "--quick", "--out", out, "--no-progress"]) == 2
    assert "tracked by git" in capsys.readouterr().err and calls == []
    assert main(["run", "toy", "--quick", "--out", out, "--no-progress",
                 "--allow-committed"]) == 0
    assert len(calls) == 4
    # nor a new folder inside the committed one (its records would join the next report)
    assert main(["run", "toy", "--quick", "--out", str(repo / "results" / "quick")]) == 2
    # a folder git does not track takes quick runs, new or not
    assert main(["run", "toy", "--quick", "--out", str(repo / "runs" / "demo"),
                 "--no-progress"]) == 0
    (repo / "runs" / "old").mkdir()
    assert main(["run", "toy", "--quick", "--out", str(repo / "runs" / "old"),
                 "--no-progress"]) == 0


class _ClosedPipe(io.StringIO):
    """stdout whose reader has gone (``rdrop ls -v | head``): every flush raises EPIPE."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_pipe_ends_quietly(tmp_path, monkeypatch, capsys):
    with open(tmp_path / "stdout", "wb") as f:
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(f.fileno()))
        assert main(["ls", "-v"]) == 141
        monkeypatch.undo()
    assert "Traceback" not in capsys.readouterr().err


def test_ls_piped_into_head_has_no_traceback():
    code = "import sys; from rdrop_experiments.cli import main; sys.exit(main(['ls', '-v']))"
    out = subprocess.run(f"{sys.executable} -c \"{code}\" | head -n 1", shell=True,
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.count("\n") == 1
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr


def test_report_of_an_unknown_experiment_names_the_known_ones(tmp_path, capsys, calls):
    assert main(["run", "toy", "seeds=1", "--out", str(tmp_path), "--no-progress"]) == 0
    assert main(["report", "--results", str(tmp_path), "--experiment", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "no run records of nosuch" in err and "it holds: toy" in err


def test_every_experiment_is_checked_before_the_first_trains(tmp_path, capsys, calls):
    (tmp_path / "toy-alpha").write_text("a file where the second experiment's folder goes")
    assert main(["run", "toy", "toy-alpha", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert calls == []  # toy, the first, did not train either


def test_chunk_size_zero_is_refused_by_the_dry_run_with_the_fix(tmp_path, capsys, calls):
    # It used to pass --dry-run and kill the R-Drop arm mid-family with a raw traceback.
    assert main(["run", "image", "--quick", "chunk_size=0", "--dry-run", "--out",
                 str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("rdrop run: error: chunk_size must be >= 1 rows per chunk "
                                       "of the R-Drop loss, or none for the unchunked loss; got "
                                       "0.\n")
    assert main(["run", "image", "--quick", "chunk_size=none", "--dry-run", "--out",
                 str(tmp_path)]) == 0


def test_the_issue_example_is_refused_naming_the_single_setting_command(tmp_path, capsys,
                                                                        calls):
    # `rdrop run image alpha=0.6 methods=rdrop` ran the whole grid, with alpha 0.3 and 1.0.
    assert main(["run", "image", "alpha=0.6", "methods=rdrop", "--out", str(tmp_path),
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "your alpha=0.6 would be replaced by the grid's values" in err
    assert err.rstrip().endswith("add --no-grid: rdrop run image --no-grid alpha=0.6 "
                                 "methods=rdrop")
    assert main(["run", "image", "--no-grid", "alpha=0.6", "methods=rdrop", "--out",
                 str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    seeds = get_experiment("image").config.seeds
    assert lines[-1] == f"{seeds} run(s) planned, {seeds} to run."
    assert all("  [methods=rdrop,alpha=0.6]  rdrop  seed=" in line for line in lines[:-1])
