"""Every example runs end to end for a few steps (offline, CPU), and marks its R-Drop lines.

The distributed examples run with 2 processes on gloo: ``torchrun --standalone`` for
``ddp_torchrun.py`` and ``accelerate launch --multi_gpu --num_processes 2`` (the script's ``--cpu``
makes Accelerate use gloo on CPU) for ``accelerate_example.py``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import socket
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TAG = "# [rdrop]"
RDROP_EXAMPLES = ["plain_pytorch.py", "hf_trainer_classification.py",
                  "hf_seq2seq_translation.py", "ddp_torchrun.py", "accelerate_example.py",
                  "trl_sft.py", "peft_lora.py", "timm_vit.py", "lightning_example.py"]


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


def tagged_code_lines(source: str) -> list[str]:
    """The lines of code that carry a trailing ``# [rdrop]`` comment.

    Read with the tokenizer, so a mention of the tag in a docstring or in a comment-only line
    does not count: only a tag beside code marks a changed line.
    """
    lines = source.splitlines()
    code_rows: set[int] = set()
    tagged_rows: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.string.startswith(TAG):
            tagged_rows.add(tok.start[0])
        elif tok.type not in skip and tok.type != tokenize.STRING:
            code_rows.update(range(tok.start[0], tok.end[0] + 1))
    return [lines[row - 1] for row in sorted(tagged_rows & code_rows)]


def test_tagged_code_lines_ignores_docstrings_and_comment_lines():
    source = ('"""Lines tagged ``# [rdrop]`` are the change."""\n'
              "# [rdrop] a comment on its own line\n"
              "import rdrop  # [rdrop]\n"
              "x = 1  # not tagged\n"
              "model = rdrop.RDrop(\n    net)  # [rdrop]\n")
    assert tagged_code_lines(source) == ["import rdrop  # [rdrop]", "    net)  # [rdrop]"]


@pytest.mark.parametrize("name", RDROP_EXAMPLES)
def test_example_tags_its_rdrop_lines(name):
    tagged = tagged_code_lines((EXAMPLES / name).read_text())
    assert 2 <= len(tagged) <= 8, f"{name}: {len(tagged)} code lines tagged {TAG!r}"
    # The tags mark the change: the line that brings in rdrop is one of them.
    assert any(re.match(r"\s*(import rdrop|from rdrop[.\w]* import)", line) for line in tagged), \
        f"{name}: no tagged line imports rdrop: {tagged}"


def test_plain_pytorch():
    out = run([sys.executable, str(EXAMPLES / "plain_pytorch.py"), "--steps", "20"])
    assert out.startswith("R-Drop (alpha=1.0) in a plain PyTorch loop, 20 steps"), out
    assert re.search(r"step 20: loss \S+ = task \S+ \+ 1.0 \* consistency \S+", out), out
    assert "the wrapped model's output equals the plain model's: True" in out, out


def _load_digits_demo():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("digits_demo", EXAMPLES / "digits_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_demo_is_quick_by_default_and_keeps_the_long_run():
    demo = _load_digits_demo()
    quick, full = demo.parse_args([]), demo.parse_args(["--full"])
    # The default trains 2 methods x 3 seeds x 15 epochs of 17 steps (about 10 s on one core);
    # --full is the long run, and explicit values override either preset.
    assert (quick.seeds, quick.epochs) == (3, 15) and (full.seeds, full.epochs) == (5, 60)
    assert demo.parse_args(["--full", "--seeds", "2"]).seeds == 2


def test_digits_demo_says_what_it_shows():
    _load_digits_demo()
    out = run([sys.executable, str(EXAMPLES / "digits_demo.py"), "--seeds", "1", "--epochs", "1"])
    assert out.startswith("Training a dropout MLP on scikit-learn digits, with and without "
                          "R-Drop (alpha=1.0): 1 seed(s) x 1 epoch(s) per method; --full"), out
    for split in ("train", "valid"):
        assert re.search(rf"dropout passes on the {split} images \(symmetric KL, lower = more "
                         rf"consistent\): baseline \S+, rdrop \S+ \(ratio \S+\)", out), out


def test_hf_trainer_classification():
    pytest.importorskip("transformers")
    out = run([sys.executable, str(EXAMPLES / "hf_trainer_classification.py"), "--steps", "4"])
    step = re.search(r"step 4: loss \S+ task (\S+) consistency \S+ per pass (\S+)", out)
    assert step and float(step.group(1)) == pytest.approx(2 * float(step.group(2)), rel=1e-3), out
    assert re.search(r"eval loss \S+ \(one pass: compare with per pass\) accuracy \S+", out), out


def test_hf_seq2seq_translation_learns_the_task():
    """The default run (150 steps, about 30 s) shows what it demonstrates: the logged loss is
    two passes' CE (about twice eval_loss, which task_loss_per_pass tracks), and the model
    learns the synthetic language pair."""
    pytest.importorskip("transformers")
    out = run([sys.executable, str(EXAMPLES / "hf_seq2seq_translation.py")])
    steps = re.findall(r"step \d+: loss (\S+) = task (\S+) \+ 5.0 \* consistency (\S+); "
                       r"per pass (\S+)", out)
    assert len(steps) == 4, out
    _, task, cons, per_pass = map(float, steps[-1])
    assert task == pytest.approx(2 * per_pass, rel=1e-3) and cons > 0
    exact = re.search(r"eval_loss (\S+) \(one pass.*exactly right: (\d+)/64", out)
    assert exact and int(exact.group(2)) >= 48, out
    assert float(exact.group(1)) < per_pass, out


def test_trl_sft_packed():
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    out = run([sys.executable, str(EXAMPLES / "trl_sft.py"), "--steps", "30"])
    steps = re.findall(r"step \d+: loss \S+ = task \S+ \+ 1.0 \* consistency (\S+); per pass "
                       r"\S+; entropy \S+, token accuracy (\S+), (\d+) tokens", out)
    assert len(steps) == 3, out
    assert float(steps[-1][0]) > 0 and float(steps[-1][1]) > 0.5, out  # counting is learned
    accuracy = re.search(r"eval token accuracy (\S+) \(chance 0.03\)", out)
    assert accuracy and float(accuracy.group(1)) > 0.5, out


def test_peft_lora_consistency_is_zero_at_the_first_step():
    pytest.importorskip("peft")
    out = run([sys.executable, str(EXAMPLES / "peft_lora.py")])
    assert "step 1: consistency 0.0e+00 (exactly 0: LoRA's B starts at 0" in out, out
    later = re.findall(r"step \d+: loss \S+ = task \S+ \+ 1.0 \* consistency (\S+)", out)
    assert later and all(float(c) > 0 for c in later), out  # B != 0 after the first update
    accuracy = re.search(r"held-out accuracy (\S+)", out)
    assert accuracy and float(accuracy.group(1)) > 0.7, out


def test_timm_vit():
    # timm imports torchvision at import time; PyPI's torchvision is a CUDA build that does not
    # load beside a CPU torch, so this runs where a matching torchvision is installed.
    pytest.importorskip("timm", exc_type=ImportError)
    out = run([sys.executable, str(EXAMPLES / "timm_vit.py"), "--steps", "8"])
    assert re.search(r"step 8: loss \S+ = task \S+ \+ 0.6 \* consistency \S+", out), out


def test_lightning_example():
    pytest.importorskip("pytorch_lightning")
    out = run([sys.executable, str(EXAMPLES / "lightning_example.py")], timeout=400)
    steps = re.findall(r"step (\d+): loss \S+ = task \S+ \+ (\S+) \* consistency (\S+); "
                       r"per pass \S+", out)
    assert [s[0] for s in steps] == ["10", "20", "30"], out
    assert all(float(s[2]) > 0 for s in steps), out
    accuracy = re.search(r"held-out accuracy (\S+)", out)
    assert accuracy and float(accuracy.group(1)) > 0.9, out


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


def test_accelerate_docstring_command_is_the_two_process_form_tested_above():
    # The docstring's launch line starts the processes the test above starts (Accelerate's own
    # --cpu before the script would start one process: the form the docstring once showed).
    doc = (EXAMPLES / "accelerate_example.py").read_text().split('"""')[1]
    (launch,) = [line.split() for line in doc.splitlines() if "accelerate launch" in line]
    script = launch.index("examples/accelerate_example.py")
    assert {"--multi_gpu", "--num_processes", "2"} <= set(launch[:script])
    assert "--cpu" not in launch[:script]
