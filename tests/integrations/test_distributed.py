"""torch DDP on 2 gloo CPU processes: rdrop.RDrop inside and outside DistributedDataParallel.

``ddp_check.py`` does the distributed work (see its docstring); here we check what it measured:

* every forward on rank r saw only rank r's samples, each sample once per pass: the duplicated
  pair (concat mode: both copies in the same forward; twice mode: in consecutive forwards) never
  crosses a rank boundary, so each rank's consistency term compares passes of its own samples;
* parameters are identical across ranks after every step;
* the all-reduced DDP gradient equals the gradient of one process on the concatenated global batch
  (dropout masks keyed by sample id and pass, so both runs draw the same masks while the passes
  still differ: the consistency term is > 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
GRAD_TOL = 1e-6  # float32 reduction-order differences only (measured: <= 1.2e-7)


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp") / "ddp.json"
    subprocess.run([sys.executable, str(HERE / "ddp_check.py"), str(out)], check=True,
                   timeout=240, capture_output=True, text=True)
    return json.loads(out.read_text())


LAYOUTS = ["rdrop(ddp(net))", "ddp(rdrop(net))", "ddp(rdrop(net), twice)",
           "rdrop(ddp(net), twice)"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pairs_stay_on_their_rank(ddp_result, layout):
    world, b, steps = ddp_result["world"], ddp_result["local_batch"], ddp_result["steps"]
    for rank, res in enumerate(ddp_result["ranks"]):
        seen = res[layout]["seen"]
        per_step = [seen[s] for s in range(steps)] if "twice" not in layout else [
            seen[2 * s] + seen[2 * s + 1] for s in range(steps)]
        for step, ids in enumerate(per_step):
            start = step * world * b + rank * b
            local = list(range(start, start + b))
            assert sorted(ids) == sorted(local * 2), (rank, step, ids)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ddp_gradient_equals_single_process_gradient(ddp_result, layout):
    for res in ddp_result["ranks"]:
        r = res[layout]
        assert r["param_spread"] == 0.0  # identical parameters across ranks
        assert r["grad_vs_single"] <= GRAD_TOL * max(1.0, r["grad_scale"])
        assert r["param_vs_single"] <= GRAD_TOL
        assert all(cons > 0 for _, cons in r["loss_and_consistency"])  # dropout really on


def test_hf_trainer_under_torchrun_matches_one_process(tmp_path):
    """RDropTrainer, 2 processes x 2 accumulation steps x 2 samples with uneven padding, gives
    the gradient and logged losses of one process on the same 8 samples (the Trainer's global
    num_items_in_batch, times the world size rdrop multiplies back in)."""
    pytest.importorskip("transformers")
    script = str(HERE / "hf_ddp_check.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, script, str(tmp_path)], check=True, timeout=240,
                   capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", script, str(tmp_path)], check=True, timeout=240,
                   capture_output=True, env=env)
    ref = json.loads((tmp_path / "world1_rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"world2_rank{r}.json").read_text()) for r in range(2)]
    single_step = sorted(i for ids in ref["seen"] for i in ids)
    assert sorted(i for r in ranks for ids in r["seen"] for i in ids) == single_step
    for r in ranks:
        for ids in r["seen"]:  # each forward: [x; x] of this rank's own samples
            half = len(ids) // 2
            assert ids[:half] == ids[half:]
        for name, g in ref["grad"].items():
            diff = max(abs(a - b) for a, b in zip(r["grad"][name], g, strict=True))
            assert diff <= GRAD_TOL, (name, diff)
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert r["consistency_loss"] == pytest.approx(ref["consistency_loss"], rel=1e-5)
        assert r["consistency_loss"] > 0
