"""Step benchmark: R-Drop training step time / baseline step time, on the same samples.

Two small models with dropout 0.1: a Transformer encoder classifier and a Transformer
encoder-decoder (``torch.nn.Transformer``) with a token-level output layer. Variants, all on the
same batch of B samples:

* ``baseline``: one forward of the B samples, CE, backward, AdamW step;
* ``concat``: ``rdrop.RDrop(model, mode="concat")``: one forward over the 2B duplicated samples;
* ``twice``: ``rdrop.RDrop(model, mode="twice")``: two forwards of B samples;
* ``concat+chunked`` (encoder-decoder): concat with the chunked loss (``chunk_size=512``);
* ``stop_gradient``: ``rdrop.RDrop(model, stop_gradient=True)``: the second pass without
  gradient, the detached target of the first (about 1.33x a baseline step, one activation graph);
* ``fraction0.25`` / ``fraction0.5``: ``rdrop.RDrop(model, second_pass_fraction=r)``: one forward
  over ``(1 + r) B`` rows, the second pass on the first ``ceil(r B)`` (floor about ``1 + r``);
* ``sg+fraction0.25``: both: the no-grad target pass on ``ceil(B / 4)`` rows.

Targets (issue 20): ``fraction0.25`` <= 1.35x a baseline step, ``stop_gradient`` <= 1.45x.

The physical floor of the full R-Drop / baseline ratio is about 2.0: every sample is processed
twice forward and backward; the loss and the optimizer step add little. Times are process CPU
time with one thread on CPU (on a shared machine wall time measures the neighbours too), wall
time after ``cuda.synchronize`` on ``--device cuda``; variants are timed in rotation
(round-robin over ``--rounds``), so drifting load hits all of them alike; the reported time is
the median over rounds.

Activation memory (``act_mb``): the bytes of the tensors autograd saves for backward during one
forward + loss (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once): the
activation graph itself, independent of the allocator and of the neighbours' load.

    python benchmarks/bench_step.py            # writes benchmarks/results/step_cpu.{csv,md}
    python benchmarks/bench_step.py --quick    # small models, prints only
    python benchmarks/bench_step.py --smoke    # tiny models, one round (run by the tests)
    python benchmarks/bench_step.py --device cuda   # step_cuda.*: the "concat <= 0.9x twice" row
"""

from __future__ import annotations

import argparse
import copy
import inspect
import statistics
import time

import torch
from _common import machine, md_table, write_results
from torch import Tensor, nn

from rdrop import RDrop


class Classifier(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.drop(self.encoder(self.embed(tokens)).mean(1)))


class Seq2Seq(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(vocab, d)
        self.tgt_embed = nn.Embedding(vocab, d)
        self.transformer = nn.Transformer(d, 4, layers, layers, 4 * d, dropout, batch_first=True)
        self.out = nn.Linear(d, vocab)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1], device=tgt_in.device)
        h = self.transformer(self.src_embed(src), self.tgt_embed(tgt_in), tgt_mask=mask,
                             tgt_is_causal=True)
        return self.out(h)


def _task(name: str, quick: bool, smoke: bool = False) -> tuple[nn.Module, tuple[Tensor, ...],
                                                              Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    if name == "classifier":
        cfg = {"vocab": 8000, "d": 256, "layers": 4, "batch": 32, "len": 128, "classes": 10}
        if quick:
            cfg |= {"layers": 1, "batch": 8, "len": 32}
        if smoke:
            cfg |= {"vocab": 50, "d": 16, "layers": 1, "batch": 4, "len": 8}
        model = Classifier(cfg["vocab"], cfg["d"], cfg["layers"], cfg["classes"], 0.1)
        x = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["len"]), generator=g)
        y = torch.randint(0, cfg["classes"], (cfg["batch"],), generator=g)
        return model, (x,), y, cfg
    cfg = {"vocab": 8000, "d": 256, "layers": 3, "batch": 16, "len": 64}
    if quick:
        cfg |= {"layers": 1, "batch": 4, "len": 16}
    if smoke:
        cfg |= {"vocab": 50, "d": 16, "layers": 1, "batch": 4, "len": 8}
    model = Seq2Seq(cfg["vocab"], cfg["d"], cfg["layers"], 0.1)
    src = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["len"]), generator=g)
    tgt = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["len"] + 1), generator=g)
    y = tgt[:, 1:].clone()
    y[:, -8:] = -100  # some padding
    return model, (src, tgt[:, :-1]), y, cfg


def _variants(model: nn.Module, task: str) -> dict[str, tuple[nn.Module, object]]:
    names = ["baseline", "concat", "twice"] + (["concat+chunked"] if task == "seq2seq" else [])
    params = inspect.signature(RDrop).parameters
    if "stop_gradient" in params:
        names.append("stop_gradient")
    if "second_pass_fraction" in params:
        names += ["fraction0.25", "fraction0.5", "sg+fraction0.25"]
    out = {}
    for name in names:
        m = copy.deepcopy(model).train()
        if name == "baseline":
            runner = m
        elif name == "stop_gradient":
            runner = RDrop(m, alpha=1.0, stop_gradient=True)
        elif "fraction" in name:
            runner = RDrop(m, alpha=1.0, stop_gradient=name.startswith("sg+"),
                           second_pass_fraction=float(name.split("fraction")[1]))
        else:
            mode = "twice" if name == "twice" else "concat"
            chunk = 512 if name.endswith("chunked") else None
            runner = RDrop(m, alpha=1.0, mode=mode, chunk_size=chunk)
        out[name] = (runner, torch.optim.AdamW(m.parameters(), lr=1e-4))
    return out


def _loss(name: str, runner: nn.Module, inputs: tuple, y: Tensor) -> Tensor:
    if name == "baseline":
        logits = runner(*inputs)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return runner(*inputs, target=y).loss


def _activation_bytes(name: str, runner: nn.Module, inputs: tuple, y: Tensor) -> int:
    """Bytes saved for backward by one forward + loss, each storage once (then freed)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.device.type != "meta" and t.untyped_storage().nbytes():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(name, runner, inputs, y)
    params = {p.untyped_storage().data_ptr() for p in runner.parameters()}
    del loss
    return sum(b for ptr, b in seen.items() if ptr not in params)


def _step(
    name: str, runner: nn.Module, opt: torch.optim.Optimizer, inputs: tuple, y: Tensor
) -> tuple[float, float]:
    cuda = y.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    t0 = clock()
    _loss(name, runner, inputs, y).backward()
    if cuda:
        torch.cuda.synchronize()
    t1 = clock()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return t1 - t0, clock() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny models, one round; prints only")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rounds = 1 if args.smoke else 3 if args.quick else args.rounds
    warmup = 0 if args.smoke else args.warmup
    rows = []
    for task in ("classifier", "seq2seq"):
        model, inputs, y, cfg = _task(task, args.quick, args.smoke)
        model, inputs, y = model.to(dev), tuple(t.to(dev) for t in inputs), y.to(dev)
        variants = _variants(model, task)
        act = {name: _activation_bytes(name, r, inputs, y) for name, (r, _) in variants.items()}
        fb: dict[str, list[float]] = {k: [] for k in variants}
        full: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(warmup + rounds):
            for name, (runner, opt) in variants.items():
                t_fb, t_full = _step(name, runner, opt, inputs, y)
                if r >= warmup:
                    fb[name].append(t_fb)
                    full[name].append(t_full)
        base_fb, base_full = statistics.median(fb["baseline"]), statistics.median(full["baseline"])
        twice_full = statistics.median(full["twice"])
        shape = ", ".join(f"{k}={v}" for k, v in cfg.items())
        for name in variants:
            t_fb, t_full = statistics.median(fb[name]), statistics.median(full[name])
            row = {"task": task, "variant": name, "config": shape,
                   "fwd_bwd_ms": round(1e3 * t_fb, 1), "step_ms": round(1e3 * t_full, 1),
                   "fwd_bwd_x_baseline": round(t_fb / base_fb, 3),
                   "step_x_baseline": round(t_full / base_full, 3),
                   "step_x_twice": round(t_full / twice_full, 3),
                   "act_mb": round(act[name] / 1e6, 1),
                   "act_x_baseline": round(act[name] / act["baseline"], 3)}
            rows.append(row)
            print(f"{task:10s} {name:15s} fwd+bwd {row['fwd_bwd_ms']:8.1f} ms "
                  f"({row['fwd_bwd_x_baseline']:.3f}x)  step {row['step_ms']:8.1f} ms "
                  f"({row['step_x_baseline']:.3f}x baseline, {row['step_x_twice']:.3f}x twice) "
                  f" activations {row['act_mb']:7.1f} MB ({row['act_x_baseline']:.3f}x)",
                  flush=True)
    if args.quick or args.smoke:
        return
    meta = machine() | {"threads": str(args.threads), "rounds": str(rounds)}
    cols = ["task", "variant", "fwd_bwd_ms", "fwd_bwd_x_baseline", "step_ms", "step_x_baseline",
            "step_x_twice", "act_mb", "act_x_baseline"]
    configs = "\n".join(f"- {t}: {r['config']}" for t, r in {r["task"]: r for r in rows}.items())
    body = ("Training step on the same B samples (fp32, dropout 0.1, alpha=1, AdamW). "
            "`fwd_bwd`: forward + loss + backward; `step`: plus the optimizer step. "
            "Physical floor of the R-Drop / baseline ratio: ~2.0 (each sample runs twice). "
            "`act_mb`: bytes saved for backward by one forward + loss.\n\n"
            f"{configs}\n\n" + md_table(rows, cols))
    write_results(f"step_{dev.type}", rows, body, meta)


if __name__ == "__main__":
    main()
