"""The ``rdrop`` command line: fast help, ls, clear errors, run + report end to end (toy)."""

from __future__ import annotations

import subprocess
import sys
import time

from rdrop_experiments.cli import main


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
    assert "| toy | default | accuracy (%) |" in out
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "summary.md").exists()
