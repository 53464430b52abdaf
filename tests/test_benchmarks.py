"""The benchmark scripts run (tiny ``--smoke`` sizes, CPU, no files written) and what they
compare is consistent: every loss method computes the same loss, and the stop-gradient step keeps
one activation graph. No timings are asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=600, check=False, cwd=BENCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_loss_benchmark_smoke_all_methods_agree():
    # The compiled baselines are left out here (a cold torch.compile takes ~30 s each).
    methods = ["plain", "torchtune", "naive", "rdrop_loss", "chunked", "chunked_eager",
               "linear+plain", "linear+torchtune", "fused", "fused_eager"]
    out = _run("bench_loss.py", "--smoke", "--methods", ",".join(methods))
    assert "WARNING" not in out and "FAIL" not in out, out
    for m in methods:
        assert re.search(rf"^\| {re.escape(m)} \|", out, re.M), (m, out)


def test_step_benchmark_smoke_rows_and_activation_ratios():
    out = _run("bench_step.py", "--smoke")
    ratio = {}
    for task, variant, act_x in re.findall(r"^(\w+)\s+(\S+)\s+fwd\+bwd.*\(([\d.]+)x\)$", out,
                                          re.M):
        ratio[task, variant] = float(act_x)
    assert ratio["classifier", "baseline"] == 1.0
    assert 1.9 <= ratio["classifier", "concat"] <= 2.1  # two activation graphs
    assert ratio["classifier", "stop_gradient"] <= 1.15  # one graph: the no-grad pass saves none
    # second_pass_fraction r: one graph over (1 + r) B rows; with stop-gradient one over B
    assert 1.15 <= ratio["classifier", "fraction0.25"] <= 1.35
    assert 1.4 <= ratio["classifier", "fraction0.5"] <= 1.6
    assert ratio["classifier", "sg+fraction0.25"] <= 1.15
