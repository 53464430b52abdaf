"""Every example runs end to end for a few steps (offline, CPU), and marks its R-Drop lines.

The distributed examples run with 2 processes on gloo: ``torchrun --standalone`` for
``ddp_torchrun.py`` and ``accelerate launch --multi_gpu --num_processes 2`` (the script's ``--cpu``
makes Accelerate use gloo on CPU) for ``accelerate_example.py``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TAG = "# [rdrop]"
RDROP_EXAMPLES = ["plain_pytorch.py", "hf_trainer_classification.py",
                  "hf_seq2seq_translation.py", "ddp_torchrun.py", "accelerate_example.py"]


def run(args: list[str], timeout: int = 180) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                         cwd=ROOT)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", RDROP_EXAMPLES)
def test_example_tags_its_rdrop_lines(name):
    lines = (EXAMPLES / name).read_text().splitlines()
    tagged = [line for line in lines if TAG in line]
    assert 2 <= len(tagged) <= 8, f"{name}: {len(tagged)} lines tagged {TAG!r}"


def test_plain_pytorch():
    out = run([sys.executable, str(EXAMPLES / "plain_pytorch.py"), "--steps", "20"])
    assert "consistency" in out and "test accuracy" in out


def test_hf_trainer_classification():
    pytest.importorskip("transformers")
    out = run([sys.executable, str(EXAMPLES / "hf_trainer_classification.py"), "--steps", "4"])
    assert re.search(r"step 4: loss \S+ task \S+ consistency \S+", out), out
    assert "accuracy" in out


def test_hf_seq2seq_translation():
    pytest.importorskip("transformers")
    out = run([sys.executable, str(EXAMPLES / "hf_seq2seq_translation.py"), "--steps", "4"])
    assert re.search(r"step 4: loss \S+ task \S+ consistency \S+", out), out
    assert "exact-match" in out


def test_ddp_torchrun_two_processes():
    out = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(EXAMPLES / "ddp_torchrun.py"), "--steps", "6"])
    assert out.count("max parameter difference across ranks 0.00e+00") == 2, out
    assert "rank 1/2" in out and "test accuracy" in out


def test_accelerate_one_process():
    pytest.importorskip("accelerate")
    out = run([sys.executable, str(EXAMPLES / "accelerate_example.py"), "--steps", "6", "--cpu"])
    assert "(1 process(es))" in out and "test accuracy" in out


def test_accelerate_launch_two_processes():
    pytest.importorskip("accelerate")
    out = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(EXAMPLES / "accelerate_example.py"), "--steps", "6", "--cpu"])
    assert "(2 process(es))" in out, out
    assert "max parameter difference across processes 0.00e+00" in out
