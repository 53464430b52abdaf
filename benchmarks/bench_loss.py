"""Loss benchmark: naive official-style formula vs rdrop_loss vs chunked vs fused-linear.

Every case runs in a fresh subprocess, so peak memory is the process's own: the kernel's RSS
high-water mark (reset after the inputs exist) minus the RSS with the inputs allocated. On CUDA
(``--device cuda``) it is ``torch.cuda.max_memory_allocated`` above the inputs instead. Time is
forward + backward (``.grad`` set to ``None`` between repetitions, as ``zero_grad`` does), median
of ``--reps`` after one warm-up.

Two families, each with its own baseline (ratios are to the baseline of the same N, V):

* on logits ``(N, V)`` x 2: ``naive`` (tests/reference.py ``naive_official_rdrop_loss``: full fp32
  log-probs, probs and two KL tensors, as the official fairseq criterion), ``rdrop_loss`` (our plain
  path), ``chunked`` (``rdrop_loss(..., chunk_size=512)``);
* on hidden states ``(N, H)`` x 2 and the output projection ``(V, H)``: ``linear+naive`` (project
  both passes, then the naive loss), ``linear+chunked``, ``fused`` (``fused_linear_rdrop_loss``).

    python benchmarks/bench_loss.py               # full grid, writes benchmarks/results/loss_cpu.*
    python benchmarks/bench_loss.py --quick       # small grid, prints only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from _common import (
    import_reference,
    machine,
    md_table,
    reset_peak_rss,
    rss_bytes,
    write_results,
)

LOGIT_METHODS = ("naive", "rdrop_loss", "chunked")
LINEAR_METHODS = ("linear+naive", "linear+rdrop_loss", "linear+chunked", "fused")
BASELINE = {m: "naive" for m in LOGIT_METHODS} | {m: "linear+naive" for m in LINEAR_METHODS}
ALPHA = 1.0
# Ratios use process CPU time (user + sys, one thread): on a shared machine wall time measures
# the neighbours too. With one idle core the two agree (both are in the CSV).
TIME_KEY = "cpu_s"
IGNORE_FRACTION = 0.1  # some padding rows, as in real token-level batches


def fused_chunk(v: int) -> int:
    """Rows per chunk so that one fp32 (rows, V) block is about 64 MB."""
    rows = max(1, (1 << 24) // v)
    return 1 << (rows.bit_length() - 1)


# ----------------------------------------------------------------------------------------- worker
def _worker(method: str, n: int, v: int, h: int, chunk: int, reps: int, device: str) -> dict:
    from rdrop import rdrop_loss
    from rdrop.fused_linear import fused_linear_rdrop_loss

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

    def step() -> None:
        if method == "naive":
            loss = naive(x1, x2, target, ALPHA)
        elif method == "rdrop_loss":
            loss = rdrop_loss(x1, x2, target, alpha=ALPHA, check_finite=False).loss
        elif method == "chunked":
            loss = rdrop_loss(x1, x2, target, alpha=ALPHA, chunk_size=chunk,
                              check_finite=False).loss
        elif method == "fused":
            loss = fused_linear_rdrop_loss(x1, x2, w, target, bias=b, alpha=ALPHA,
                                           chunk_size=chunk, check_finite=False).loss
        else:
            z1, z2 = torch.nn.functional.linear(x1, w, b), torch.nn.functional.linear(x2, w, b)
            if method == "linear+naive":
                loss = naive(z1, z2, target, ALPHA)
            elif method == "linear+rdrop_loss":
                loss = rdrop_loss(z1, z2, target, alpha=ALPHA, check_finite=False).loss
            else:
                loss = rdrop_loss(z1, z2, target, alpha=ALPHA, chunk_size=chunk,
                                  check_finite=False).loss
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def clear() -> None:
        for t in leaves:
            t.grad = None

    step()  # warm-up: first-touch page faults, allocator caches
    clear()
    if dev.type == "cuda":
        torch.cuda.synchronize()
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
    return {"time_s": statistics.median(times), "cpu_s": statistics.median(cpu),
            "extra_peak_gb": (peak - base) / 1e9}


# ------------------------------------------------------------------------------------------- main
def estimate_gb(method: str, n: int, v: int, h: int) -> float:
    """Rough total footprint (inputs + peak) used to skip cases that do not fit."""
    nv = n * v * 4 / 1e9
    inputs = 2 * nv if method in LOGIT_METHODS else (2 * n * h + v * h) * 4 / 1e9
    # extra peak in units of one fp32 (N, V) tensor, measured at N=2048..8192, V=8000..128000
    extra = {"naive": 10.8, "rdrop_loss": 9.2, "chunked": 2.5, "linear+naive": 12.9,
             "linear+rdrop_loss": 11.6, "linear+chunked": 4.6, "fused": 0.6}[method]
    return inputs + extra * nv


def _wait_for_memory(gb: float, patience_s: float = 600.0) -> bool:
    """The machine is shared: wait until MemAvailable can hold the case (or give up)."""
    t0 = time.time()
    while time.time() - t0 < patience_s:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable:"))
        if avail * 1024 / 1e9 >= gb:
            return True
        time.sleep(10)
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=6, metavar=("METHOD", "N", "V", "H", "CHUNK", "REPS"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per case (default 1)")
    p.add_argument("--ns", default="2048,8192")
    p.add_argument("--vs", default="8000,32000,128000")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--chunk", type=int, default=512, help="chunk rows of the chunked loss")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--max-gb", type=float, default=14.0, help="skip cases estimated above this")
    p.add_argument("--quick", action="store_true", help="N=1024, V=8000 only; no files written")
    p.add_argument("--out", default=None, help="results stem (default loss_<device>)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        method, n, v, h, chunk, reps = args.worker
        res = _worker(method, int(n), int(v), int(h), int(chunk), int(reps), args.device)
        print("RESULT " + json.dumps(res))
        return

    ns = [1024] if args.quick else [int(x) for x in args.ns.split(",")]
    vs = [8000] if args.quick else [int(x) for x in args.vs.split(",")]
    rows = []
    for n in ns:
        for v in vs:
            base: dict[str, dict] = {}
            for method in (*LOGIT_METHODS, *LINEAR_METHODS):
                chunk = fused_chunk(v) if method == "fused" else args.chunk
                row = {"method": method, "N": n, "V": v, "H": args.hidden, "chunk": chunk}
                est = estimate_gb(method, n, v, args.hidden)
                if est > args.max_gb:
                    print(f"skip  {method:18s} N={n:5d} V={v:6d} (est. {est:.1f} GB)", flush=True)
                    continue
                if args.device == "cpu" and not _wait_for_memory(est + 1.0):
                    print(f"skip  {method:18s} N={n:5d} V={v:6d} (machine busy)", flush=True)
                    continue
                cmd = [sys.executable, __file__, "--device", args.device, "--threads",
                       str(args.threads), "--worker", method, str(n), str(v), str(args.hidden),
                       str(chunk), str(args.reps)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"FAIL  {method} N={n} V={v}: {proc.stderr[-500:]}", flush=True)
                    continue
                res = json.loads(line[0][7:])
                row |= {"time_s": round(res["time_s"], 4), "cpu_s": round(res["cpu_s"], 4),
                        "extra_peak_gb": round(res["extra_peak_gb"], 3)}
                if BASELINE[method] == method:
                    base[method] = row
                ref = base.get(BASELINE[method])
                if ref:
                    row["time_x"] = round(row[TIME_KEY] / ref[TIME_KEY], 3)
                    row["mem_x"] = round(row["extra_peak_gb"] / max(ref["extra_peak_gb"], 1e-9), 3)
                else:
                    row["time_x"] = row["mem_x"] = ""
                row["baseline"] = BASELINE[method]
                rows.append(row)
                print(f"{method:18s} N={n:5d} V={v:6d} cpu {row['cpu_s']:8.3f} s "
                      f"({row['time_x']}x)  extra peak {row['extra_peak_gb']:7.3f} GB "
                      f"({row['mem_x']}x {row['baseline']})", flush=True)
    if args.quick or not rows:
        return
    meta = machine() | {"threads": str(args.threads), "reps": str(args.reps)}
    cols = ["method", "N", "V", "H", "chunk", "cpu_s", "time_s", "time_x", "extra_peak_gb",
            "mem_x", "baseline"]
    body = ("Forward + backward of the R-Drop loss (alpha=1, 10% ignored rows, fp32, one thread). "
            "`cpu_s`: process CPU time, `time_s`: wall time (median of reps); `extra_peak_gb`: "
            "peak RSS above the inputs; `time_x` (CPU time), `mem_x`: ratio to `baseline` at the "
            "same N, V, measured in the same run.\n\n" + md_table(rows, cols))
    write_results(args.out or f"loss_{args.device}", rows, body, meta)


if __name__ == "__main__":
    main()
