"""Where the end-to-end time of one MLX call goes, from a CUPTI trace.

torch.profiler (CUPTI) records every kernel of the process, also those MLX
launches through its CUDA graphs, and the CUDA API calls. For mx.abs, a 2x2
matrix_exp and the benchmark's small batches, 40 calls each (one mx.eval
each): per call the wall time, the GPU span of its kernels, call start ->
first kernel start, last kernel end -> return, and the API calls inside the
call (cudaEventSynchronize there is MLX's blocking wait; see
scripts/mlx_floor.py). The profiler adds its own overhead to every number.

Usage (GPU machine): python3 scripts/trace_calls.py TAG OUT.txt"""

import json
import statistics
import sys

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import torch  # noqa: F401  (CUDA activity via kineto/CUPTI)
from profile_gpu import SMALL_CASES, make
from torch.profiler import ProfilerActivity, profile, record_function

tag_run = sys.argv[1]
out = sys.argv[2]


cases = []
x16 = make(1, 16)
cases.append(("abs16", lambda: mx.abs(x16, stream=mx.gpu)))
x2 = make(1, 2)
cases.append(("exp1x2", lambda: mle.matrix_exp(x2, stream=mx.gpu)))
for b, n, dt in SMALL_CASES:
    x = make(b, n, dt)
    tag = f"{b}x{n}" + ("c" if dt == np.complex64 else "")
    cases.append((tag, lambda x=x: mle.matrix_exp(x, stream=mx.gpu)))

lines = []


def med(v):
    return statistics.median(v) if v else float("nan")


for tag, fn in cases:
    for _ in range(20):
        mx.eval(fn())
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(40):
            with record_function(f"call#{i}"):
                mx.eval(fn())
    path = f"/tmp/trace_{tag_run}_{tag}.json"
    prof.export_chrome_trace(path)
    with open(path) as f:
        ev = json.load(f)["traceEvents"]
    calls = sorted(
        (
            e
            for e in ev
            if e.get("cat") == "user_annotation" and e["name"].startswith("call#")
        ),
        key=lambda e: e["ts"],
    )
    kern = sorted((e for e in ev if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    drv = [e for e in ev if e.get("cat") in ("cuda_driver", "cuda_runtime")]
    wall, ktime, lat, tail, nk = [], [], [], [], []
    drv_sum = {}
    for c in calls[5:]:
        t0, t1 = c["ts"], c["ts"] + c["dur"]
        ks = [k for k in kern if t0 <= k["ts"] <= t1]
        wall.append(c["dur"])
        nk.append(len(ks))
        if ks:
            ktime.append(ks[-1]["ts"] + ks[-1]["dur"] - ks[0]["ts"])
            lat.append(ks[0]["ts"] - t0)
            tail.append(t1 - ks[-1]["ts"] - ks[-1]["dur"])
        for d in drv:
            if t0 <= d["ts"] <= t1:
                drv_sum.setdefault(d["name"], []).append(d["dur"])
    ncalls = len(calls[5:])
    names = sorted({k["name"][:60] for k in kern})
    line = (
        f"{tag_run} {tag:10s} wall {med(wall):7.1f} us  kernels/call {med(nk):.0f}  "
        f"gpu span {med(ktime):7.1f}  launch->start {med(lat):6.1f}  end->return {med(tail):6.1f}"
    )
    lines.append(line)
    print(line, flush=True)
    for name, ds in sorted(drv_sum.items(), key=lambda kv: -sum(kv[1])):
        s = f"    drv {name:40s} per call {sum(ds) / ncalls:7.1f} us (n/call {len(ds) / ncalls:.1f})"
        lines.append(s)
        print(s)
    lines.append("    kernels: " + "; ".join(names))
    print(lines[-1])
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
