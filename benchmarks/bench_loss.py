"""Loss benchmark: rdrop's losses beside what a user would pick instead.

Two families, each with its own baseline (the plain formula under ``torch.compile``, what a user
has without rdrop); every ratio is to the baseline of the same family, measured in the same run:

* on logits ``(N, V)`` x 2 (default N 4096, V 32000):
  ``plain`` (the formula with ``log_softmax``, ``nll_loss``, ``kl_div``: what a user writes),
  ``plain_compiled`` (the same under ``torch.compile``; the baseline), ``torchtune`` (chunked
  with autograd through the chunks, as torchtune's chunked losses; written out below),
  ``naive`` (tests/reference.py ``naive_official_rdrop_loss``: the official code's style),
  ``rdrop_loss`` (default), ``chunked`` (``rdrop_loss(chunk_size=512)``: compiled kernels),
  ``chunked_eager`` (the same with ``RDROP_COMPILE=never``);
* on hidden states ``(N, H)`` x 2 and the output layer ``(V, H)`` (default N 2048, V 64000,
  H 256): ``linear+plain``, ``linear+plain_compiled`` (the baseline), ``linear+torchtune``,
  ``fused`` (``fused_linear_rdrop_loss`` with its defaults), ``fused_eager``
  (``RDROP_COMPILE=never``), and on ``--device cuda`` ``liger`` (Liger-Kernel's fused linear
  cross-entropy on both passes: no consistency term, a lower bound; skipped if not installed).

Every case runs in a fresh subprocess with a fresh inductor cache (so ``compile_s``, the first
call's extra time, is a cold compile). Peak memory is the process's own: the kernel's RSS
high-water mark, reset after the inputs exist and one warm-up step ran, minus the RSS then; on
CUDA ``torch.cuda.max_memory_allocated`` above the inputs. Time is forward + backward (``.grad``
set to ``None`` between repetitions, as ``zero_grad`` does), process CPU time (one thread; on a
shared machine wall time measures the neighbours too; both are in the CSV), median of
``--reps``. Cases run in rotation for ``--rounds`` rounds; the reported time is the median.

    python benchmarks/bench_loss.py             # writes benchmarks/results/loss_cpu.{csv,md}
    python benchmarks/bench_loss.py --smoke     # tiny sizes, prints only (run by the tests)
    python benchmarks/bench_loss.py --device cuda   # writes loss_cuda.*
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import (
    import_reference,
    machine,
    md_table,
    reset_peak_rss,
    rss_bytes,
    write_results,
)

LOGIT_METHODS = ("plain", "plain_compiled", "torchtune", "naive", "rdrop_loss", "chunked",
                 "chunked_eager")
LINEAR_METHODS = ("linear+plain", "linear+plain_compiled", "linear+torchtune", "fused",
                  "fused_eager", "liger")
BASELINE = {m: "plain_compiled" for m in LOGIT_METHODS} | {
    m: "linear+plain_compiled" for m in LINEAR_METHODS}
COMPILED = ("plain_compiled", "chunked", "linear+plain_compiled", "fused")
ALPHA = 1.0
IGNORE_FRACTION = 0.1  # some padding rows, as in real token-level batches
CHUNK = 512  # rows per chunk of the chunked cases (rdrop_loss(chunk_size=...), torchtune)


# ------------------------------------------------------------------ what a user writes instead
def plain_formula(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, alpha: float,
                  ignore_index: int = -100) -> torch.Tensor:
    """R-Drop as a user writes it: CE of both passes + alpha x symmetric KL, per-token mean."""
    lp1, lp2 = F.log_softmax(z1.float(), -1), F.log_softmax(z2.float(), -1)
    ce = F.nll_loss(lp1, y, ignore_index=ignore_index) + F.nll_loss(lp2, y,
                                                                    ignore_index=ignore_index)
    kl = 0.5 * (F.kl_div(lp2, lp1, log_target=True, reduction="none")
                + F.kl_div(lp1, lp2, log_target=True, reduction="none")).sum(-1)
    keep = y != ignore_index
    return ce + alpha * (kl * keep).sum() / keep.sum().clamp_min(1)


def _sum_formula(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, alpha: float,
                 ignore_index: int = -100) -> torch.Tensor:
    lp1, lp2 = F.log_softmax(z1.float(), -1), F.log_softmax(z2.float(), -1)
    ce = (F.nll_loss(lp1, y, ignore_index=ignore_index, reduction="sum")
          + F.nll_loss(lp2, y, ignore_index=ignore_index, reduction="sum"))
    kl = 0.5 * (F.kl_div(lp2, lp1, log_target=True, reduction="none")
                + F.kl_div(lp1, lp2, log_target=True, reduction="none")).sum(-1)
    return ce + alpha * (kl * (y != ignore_index)).sum()


def torchtune_style(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, alpha: float,
                    chunk: int, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """torchtune's chunked losses: the fp32 upcast and log-softmax per chunk, autograd through
    every chunk (each chunk's graph, its logits included, lives until backward). With ``weight``
    the inputs are hidden states, projected chunk by chunk (torchtune's chunked output)."""
    total = torch.zeros((), device=z1.device)
    for s in range(0, z1.shape[0], chunk):
        a, b = z1[s:s + chunk], z2[s:s + chunk]
        if weight is not None:
            a, b = F.linear(a, weight, bias), F.linear(b, weight, bias)
        total = total + _sum_formula(a, b, y[s:s + chunk], alpha)
    return total / (y != -100).sum().clamp_min(1)


# ----------------------------------------------------------------------------------------- worker
def _worker(method: str, n: int, v: int, h: int, reps: int, device: str) -> dict:
    os.environ["RDROP_COMPILE"] = "never" if method.endswith("_eager") else "auto"
    from rdrop import rdrop_loss
    from rdrop.losses.fused_linear import fused_linear_rdrop_loss

    naive = import_reference().naive_official_rdrop_loss
    torch.manual_seed(0)
    dev = torch.device(device)
    target = torch.randint(0, v, (n,), device=dev)
    target[torch.rand(n, device=dev) < IGNORE_FRACTION] = -100
    if method in LOGIT_METHODS:
        x1 = torch.randn(n, v, device=dev, requires_grad=True)
        x2 = torch.randn(n, v, device=dev, requires_grad=True)
        leaves = [x1, x2]
    else:
        x1 = torch.randn(n, h, device=dev, requires_grad=True)
        x2 = torch.randn(n, h, device=dev, requires_grad=True)
        w = (torch.randn(v, h, device=dev) / h**0.5).requires_grad_()
        b = torch.zeros(v, device=dev, requires_grad=True)
        leaves = [x1, x2, w, b]

    def linear_plain(a, c, weight, bias, y):
        return plain_formula(F.linear(a, weight, bias), F.linear(c, weight, bias), y, ALPHA)

    compiled_plain = torch.compile(plain_formula)
    compiled_linear = torch.compile(linear_plain)
    liger = None
    if method == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)

    def loss_fn() -> torch.Tensor:
        if method == "plain":
            return plain_formula(x1, x2, target, ALPHA)
        if method == "plain_compiled":
            return compiled_plain(x1, x2, target, ALPHA)
        if method == "torchtune":
            return torchtune_style(x1, x2, target, ALPHA, CHUNK)
        if method == "naive":
            return naive(x1, x2, target, ALPHA)
        if method == "rdrop_loss":
            return rdrop_loss(x1, x2, target, alpha=ALPHA, check_finite=False).loss
        if method in ("chunked", "chunked_eager"):
            return rdrop_loss(x1, x2, target, alpha=ALPHA, chunk_size=CHUNK,
                              check_finite=False).loss
        if method == "linear+plain":
            return linear_plain(x1, x2, w, b, target)
        if method == "linear+plain_compiled":
            return compiled_linear(x1, x2, w, b, target)
        if method == "linear+torchtune":
            return torchtune_style(x1, x2, target, ALPHA, CHUNK, w, b)
        if method in ("fused", "fused_eager"):
            return fused_linear_rdrop_loss(x1, x2, w, target, bias=b, alpha=ALPHA,
                                           check_finite=False).loss
        if method == "liger":
            return liger(w, x1, target, b) + liger(w, x2, target, b)
        raise ValueError(method)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step() -> float:
        loss = loss_fn()
        loss.backward()
        sync()
        return float(loss.detach())

    def clear() -> None:
        for t in leaves:
            t.grad = None

    t0 = time.perf_counter()
    value = step()  # warm-up: compile, first-touch page faults, allocator caches
    first_s = time.perf_counter() - t0
    clear()
    sync()
    if dev.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_bytes()
        reset_peak_rss()
    times, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        clear()
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else rss_bytes("VmHWM")
    wall = statistics.median(times)
    return {"time_s": wall, "cpu_s": statistics.median(cpu), "first_s": first_s,
            "compile_s": max(0.0, first_s - wall), "extra_peak_gb": (peak - base) / 1e9,
            "loss": value}


# ------------------------------------------------------------------------------------------- main
def _run_case(method: str, n: int, v: int, h: int, args: argparse.Namespace) -> dict | None:
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": cache}  # cold compile in every case
        cmd = [sys.executable, __file__, "--device", args.device, "--threads", str(args.threads),
               "--worker", method, str(n), str(v), str(h), str(args.reps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(f"FAIL  {method} N={n} V={v}: {proc.stderr[-800:]}", flush=True)
        return None
    return json.loads(line[0][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=5, metavar=("METHOD", "N", "V", "H", "REPS"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per case (default 1)")
    p.add_argument("--logits", default="4096x32000", help="N x V of the logits family")
    p.add_argument("--linear", default="2048x64000x256", help="N x V x H of the linear family")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, one rep, all cases in this process; prints only")
    p.add_argument("--out", default=None, help="results stem (default loss_<device>)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        method, n, v, h, reps = args.worker
        res = _worker(method, int(n), int(v), int(h), int(reps), args.device)
        print("RESULT " + json.dumps(res))
        return

    if args.smoke:
        args.logits, args.linear, args.reps = "64x300", "48x200x16", 1
    ln, lv = (int(x) for x in args.logits.split("x"))
    fn, fv, fh = (int(x) for x in args.linear.split("x"))
    wanted = set(args.methods.split(",")) if args.methods else None
    cases = [(m, ln, lv, 0) for m in LOGIT_METHODS] + [(m, fn, fv, fh) for m in LINEAR_METHODS]
    cases = [c for c in cases if wanted is None or c[0] in wanted]
    if args.device != "cuda":
        cases = [c for c in cases if c[0] != "liger"]  # Liger-Kernel is Triton: GPU only
    results: dict[str, list[dict]] = {c[0]: [] for c in cases}
    for _ in range(args.rounds):
        for method, n, v, h in cases:
            if args.smoke:  # in-process: no memory figures worth having at these sizes anyway
                res = _worker(method, n, v, h, args.reps, args.device)
            else:
                res = _run_case(method, n, v, h, args)
            if res is not None:
                results[method].append(res)
                print(f"{method:22s} N={n} V={v} cpu {res['cpu_s']:8.3f} s wall "
                      f"{res['time_s']:8.3f} s  extra peak {res['extra_peak_gb']:7.3f} GB  "
                      f"first call {res['first_s']:6.1f} s  loss {res['loss']:.6f}", flush=True)
    rows = []
    for method, n, v, h in cases:
        runs = results[method]
        if not runs:
            continue
        row = {"method": method, "N": n, "V": v, "H": h or ""}
        for key in ("cpu_s", "time_s", "extra_peak_gb", "compile_s", "loss"):
            row[key] = round(statistics.median(r[key] for r in runs), 4 if key != "loss" else 6)
        if method not in COMPILED:
            row["compile_s"] = ""  # its first call is only page faults and the allocator
        rows.append(row)
    time_key = "time_s" if args.device == "cuda" else "cpu_s"
    by_name = {r["method"]: r for r in rows}
    for r in rows:
        ref = by_name.get(BASELINE[r["method"]])
        # every method computes the same loss: check against the baseline, else the family's first
        same = ref or next(q for q in rows if BASELINE[q["method"]] == BASELINE[r["method"]])
        off = abs(r["loss"] - same["loss"]) > 1e-4 * abs(same["loss"])
        if off and r["method"] != "liger":  # liger: CE only, no consistency term
            print(f"WARNING: {r['method']} loss {r['loss']} != {same['method']} {same['loss']}")
        r["baseline"] = BASELINE[r["method"]]
        r["time_x"] = round(r[time_key] / ref[time_key], 3) if ref else ""
        r["mem_x"] = round(r["extra_peak_gb"] / max(ref["extra_peak_gb"], 1e-9), 3) if ref else ""
        if r["method"] in LOGIT_METHODS:  # the floor: the two input gradients
            r["mem_x_floor"] = round(r["extra_peak_gb"] / (2 * r["N"] * r["V"] * 4 / 1e9), 3)
        else:
            r["mem_x_floor"] = ""
    cols = ["method", "N", "V", "H", time_key, "time_x", "extra_peak_gb", "mem_x", "mem_x_floor",
            "compile_s", "loss", "baseline"]
    table = md_table(rows, cols)
    print(table)
    if args.smoke:
        return
    meta = machine() | {"threads": str(args.threads), "reps": str(args.reps),
                        "rounds": str(args.rounds)}
    body = ("Forward + backward of the R-Drop loss (alpha=1, 10% ignored rows, fp32, "
            f"{args.threads} thread(s)). `{time_key}`: median over reps and rounds; "
            "`extra_peak_gb`: peak memory above the inputs; `time_x`, `mem_x`: ratio to "
            "`baseline` (same family, same run); `mem_x_floor`: extra peak / the two input "
            "gradients (2 N V x 4 B); `compile_s`: first call minus a steady call (cold inductor "
            "cache). `chunked`/`torchtune` use 512-row chunks; `fused` its defaults.\n\n" + table)
    write_results(args.out or f"loss_{args.device}", rows, body, meta)


if __name__ == "__main__":
    main()
