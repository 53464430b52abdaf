"""Progress output: a bar on a terminal, one plain line per interval in a log."""

from __future__ import annotations

import io

from rdrop_experiments.progress import LogProgress, progress_bar
from rdrop_experiments.registry import ArmRun


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_plain_lines_not_redraws():
    out = io.StringIO()
    bar = progress_bar(range(1, 6), desc="image rdrop s0", file=out, interval=0, leave=False)
    assert isinstance(bar, LogProgress)
    for step in bar:
        bar.set_postfix(valid_acc=f"{step / 10:.2f}")
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5  # one per update (interval 0); close adds no duplicate
    assert lines[0].startswith("image rdrop s0: 1/5 (20%) ")
    assert lines[-1].startswith("image rdrop s0: 5/5 (100%) ") and lines[-1].endswith(
        "valid_acc=0.50")


def test_log_interval_limits_the_lines(monkeypatch):
    monkeypatch.setenv("RDROP_LOG_INTERVAL", "3600")
    out = io.StringIO()
    for _ in progress_bar(range(1000), desc="lm", file=out):
        pass
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # only the last
    assert out.getvalue().startswith("lm: 1000/1000 (100%)")


def test_terminal_gets_a_tqdm_bar_and_disable_prints_nothing():
    from tqdm.auto import tqdm

    term = _Terminal()
    bar = progress_bar(range(3), desc="x", file=term)
    assert isinstance(bar, tqdm)
    list(bar)
    out = io.StringIO()
    list(progress_bar(range(3), desc="x", file=out, disable=True, interval=0))
    assert out.getvalue() == ""


def test_update_driven_bar_like_the_runner(capsys):
    bar = progress_bar(total=4, initial=1, desc="toy", unit="run", interval=0)
    bar.set_postfix_str("default rdrop seed=1")
    bar.update(1)
    bar.update(2)
    bar.close()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:3] for line in lines] == [["toy:", "2/4", "(50%)"],
                                                   ["toy:", "4/4", "(100%)"]]
    assert lines[0].endswith("default rdrop seed=1")


def test_arm_run_bar_uses_label_and_progress_flag(capsys, monkeypatch):
    monkeypatch.setenv("RDROP_LOG_INTERVAL", "0")
    for _ in ArmRun("rdrop", 0, progress=True, label="image (digits) rdrop s0").bar(range(2)):
        pass
    assert capsys.readouterr().err.splitlines()[-1].startswith("image (digits) rdrop s0: 2/2")
    for _ in ArmRun("rdrop", 0, progress=False, label="quiet").bar(range(2)):
        pass
    assert capsys.readouterr().err == ""


def test_runner_says_when_each_run_starts(tmp_path, capsys, calls):
    from rdrop_experiments import run_experiment

    run_experiment("toy", {"seeds": 1}, out=tmp_path, progress=True)
    err = capsys.readouterr().err.splitlines()
    starts = [line for line in err if ": starting (steps=5" in line]
    assert [line.split(":")[0] for line in starts] == ["toy baseline seed=0 [default]",
                                                       "toy rdrop seed=0 [default]"]
