"""RDropTrainer under DeepSpeed ZeRO-1 and ZeRO-2 on CPU (DS_ACCELERATOR=cpu): the same gradient
and logged losses as the plain run (clipping off in both: see deepspeed_check.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("deepspeed")

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ds")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(HERE / "deepspeed_check.py"), str(out), "0"],
                   check=True, timeout=240, capture_output=True, env=env)
    return {"dir": out, "result": json.loads((out / "stage0_rank0.json").read_text())}


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_gradient_equals_the_plain_run(reference, stage):
    out = reference["dir"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "1", str(HERE / "deepspeed_check.py"), str(out),
                          str(stage)], timeout=540, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = reference["result"]
    got = json.loads((out / f"stage{stage}_rank0.json").read_text())
    assert got["distributed_type"] == "DistributedType.DEEPSPEED"
    assert got["seen"] == ref["seen"]  # the same samples, [x; x] per micro-batch
    for name, g in ref["grad"].items():
        diff = max(abs(a - b) for a, b in zip(got["grad"][name], g, strict=True))
        assert diff <= 1e-6, (name, diff)
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert got["consistency_loss"] == pytest.approx(ref["consistency_loss"], rel=1e-6)
    assert got["consistency_loss"] > 0
