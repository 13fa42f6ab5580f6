"""GPU benchmark: mlx_linalg_ext.matrix_exp on mx.gpu against
torch.linalg.matrix_exp (CUDA, TF32 off), jax.scipy.linalg.expm and
cupyx.scipy.linalg.expm, where installed.

Inputs: float32 (or complex64) Gaussian matrices scaled so each 1-norm is
about 4 (times `scale`). Beside the libraries: the user's pure-MLX version
(bench/mlx_ops_baseline.py, MLX's default TF32 matmul), the distance to the
GEMM limit for single matrices (our time / (products x one cuBLAS FP32
GEMM of that size, torch.matmul with TF32 off)), the limit of large batches
of tiny matrices (HBM traffic at peak bandwidth, or one trivial MLX op's
end-to-end time) and the cost of the vjp against the forward. Times are end-to-end per call, host clock around
call + synchronisation (mx.eval / torch.cuda.synchronize /
block_until_ready / device synchronize), medians after warm-up. Errors are
normwise relative errors against float64 SciPy on the same inputs.

On Metal (MLX's Metal backend, Apple silicon) the comparisons are those that
exist there: ours and the pure-MLX version on the GPU, SciPy and PyTorch on
the CPU, and the GEMM unit is one MLX matmul on the GPU; for single
matrices also one of our products against it (the time beyond the zero
matrix's, which runs the same dispatches without a product, per product).
PyTorch's MPS backend has no matrix_exp: what it does instead (raises, or
falls back to the CPU under PYTORCH_ENABLE_MPS_FALLBACK=1) is recorded, not
timed as GPU.

Usage:  python3 bench/bench_gpu.py [--out results.json] [--reps 30] [--small]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

# JAX must not take most of the GPU memory for itself.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import scipy.linalg as sla

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mlx_ops_baseline
from common import products_needed, products_total, random_matrices, rel_err, wide

METAL = mx.metal.is_available()

CASES = [
    # (batch, n, dtype, scale)
    (4096, 8, "float32", 1.0),
    (4096, 16, "float32", 1.0),
    (1024, 32, "float32", 1.0),
    (256, 64, "float32", 1.0),
    (64, 128, "float32", 1.0),
    (1, 256, "float32", 1.0),
    (1, 1024, "float32", 1.0),
    (1, 2048, "float32", 1.0),
    (1, 4096, "float32", 0.12),
    (4096, 16, "complex64", 1.0),
    (1, 1024, "complex64", 1.0),
    # Large batches of tiny matrices (the tiny kernel on CUDA).
    (1_000_000, 3, "float32", 1.0),
    (1_000_000, 4, "float32", 1.0),
    (262_144, 8, "float32", 1.0),
    (1_000_000, 3, "complex64", 1.0),
    # Batches of 32x32 and 64x64 (the fused kernel): against the compute limit.
    (16_384, 32, "float32", 1.0),
    (4_096, 64, "float32", 1.0),
]

# End-to-end targets (ms, H200) of the large tiny-matrix batches, keyed by
# (batch, n, dtype). Their limit: HBM traffic (A in, exp(A) out) at the
# GPU's peak bandwidth, and one trivial MLX op's end-to-end time.
TINY_TARGET_MS = {
    (1_000_000, 3, "float32"): 0.1,
    (1_000_000, 4, "float32"): 0.1,
    (262_144, 8, "float32"): 0.2,
}
# Peak HBM bandwidth (TB/s) by GPU name; --hbm-tbps for others.
HBM_TBPS = {"H200": 4.8, "H100 80GB HBM3": 3.35, "H100": 3.35}
# Peak FP64 tensor-core rate (TFLOP/s, dense), the unit of the fused
# kernel's float products from n = 9 (NOTES.md): H100/H200 SXM.
FP64_TC_TFLOPS = {"H200": 67.0, "H100 80GB HBM3": 67.0}
# Errors of batches larger than this are measured on their first REF_MAX
# matrices (SciPy's float64 reference of a million matrices takes minutes).
REF_MAX = 16384


# --small (CI smoke run): both Metal paths (one threadgroup per matrix for
# n <= 32, the predicated GEMM path above), both dtypes; timings mean little.
SMALL_CASES = [
    (256, 8, "float32", 1.0),
    (64, 32, "float32", 1.0),
    (4, 64, "float32", 1.0),
    (1, 128, "float32", 1.0),
    (64, 16, "complex64", 1.0),
    (1, 64, "complex64", 1.0),
]
SMALL_DERIVATIVE_CASES = [(64, 16), (1, 64)]
DERIVATIVE_CASES = [(4096, 16), (256, 64), (1, 256), (1, 1024)]


def make_input(batch, n, dtype, scale, seed=0):
    """Random normal matrices of 1-norm 4 * scale."""
    return random_matrices(np.random.default_rng(seed), batch, n, dtype, 4.0 * scale)


def reference(a):
    return sla.expm(wide(a))


def hbm_tbps(gpu, override):
    """Peak HBM bandwidth of the GPU in TB/s (None where unknown)."""
    if override:
        return override
    for name, tbps in HBM_TBPS.items():
        if name in gpu:
            return tbps
    return None


def tiny_limit(row, tbps, floor_ms):
    """Target, HBM time and limit of a large tiny-matrix case (fills row)."""
    key = (row["batch"], row["n"], row["dtype"])
    if row["batch"] <= REF_MAX or row["n"] > 8:
        return
    elem = 8 if row["dtype"] == "complex64" else 4
    nbytes = 2 * row["batch"] * row["n"] ** 2 * elem
    row["hbm_bytes"] = nbytes
    if tbps:
        row["hbm_ms"] = nbytes / (tbps * 1e12) * 1e3
    row["floor_ms"] = floor_ms
    row["limit_ms"] = max(row.get("hbm_ms", 0.0), floor_ms)
    if key in TINY_TARGET_MS:
        row["target_ms"] = TINY_TARGET_MS[key]
    ours = row.get("mlx_linalg_ext", {}).get("ms")
    if ours is not None:
        row["over_limit"] = ours / row["limit_ms"]


def compute_limit(row, a, gpu):
    """The fused-kernel batches (9 <= n <= 64): every matrix's products
    (degree + squarings) x 2 n^3 flops (x4 complex) at the FP64 tensor-core
    peak, against our time (fills row)."""
    n, batch = row["n"], row["batch"]
    peak = next((v for k, v in FP64_TC_TFLOPS.items() if k in gpu), None)
    ours = row.get("mlx_linalg_ext", {}).get("ms")
    if not (9 <= n <= 64 and batch > 1 and peak and ours):
        return
    products = products_total(a)
    flops = products * 2.0 * n**3 * (4 if row["dtype"] == "complex64" else 1)
    row["products_total"] = products
    row["compute_ms"] = flops / (peak * 1e12) * 1e3
    row["over_compute"] = ours / row["compute_ms"]


def time_fn(fn, sync, reps, warmup=3):
    for _ in range(warmup):
        out = fn()
        sync(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        sync(out)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def bench_mlx_frechet(a, e, reps):
    x, y = on_gpu(a), on_gpu(e)
    med, out = time_fn(
        lambda: mle.expm_frechet(x, y, stream=mx.gpu), lambda r: mx.eval(*r), reps
    )
    return med, np.array(out[1])


def bench_torch_frechet(a, e, reps):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    x, y = torch.from_numpy(a).cuda(), torch.from_numpy(e).cuda()
    med, out = time_fn(
        lambda: torch.func.jvp(torch.linalg.matrix_exp, (x,), (y,)),
        lambda r: torch.cuda.synchronize(),
        reps,
    )
    return med, out[1].cpu().numpy()


def bench_scipy_frechet(a, e, reps):
    """scipy.linalg.expm_frechet on the CPU, one matrix at a time."""
    med, out = time_fn(
        lambda: [sla.expm_frechet(m, d) for m, d in zip(a, e)], lambda r: None, reps
    )
    return med, np.stack([lr for _, lr in out])


def mlx_eval_floor(reps=200):
    """End-to-end time of one trivial MLX GPU op (launch + eval + sync)."""
    x = on_gpu(np.ones((16, 16), np.float32))
    med, _ = time_fn(lambda: mx.abs(x, stream=mx.gpu), lambda y: mx.eval(y), reps)
    return med


def on_gpu(a):
    """An MLX array made by a GPU op, like torch's .cuda() tensors (an array
    made from numpy starts in host memory)."""
    x = mx.multiply(mx.array(a), 1, stream=mx.gpu)
    mx.eval(x)
    return x


def bench_mlx(a, reps):
    x = on_gpu(a)
    med, out = time_fn(
        lambda: mle.matrix_exp(x, stream=mx.gpu), lambda y: mx.eval(y), reps
    )
    return med, np.array(out)


def bench_mlx_ops(a, reps):
    """The user's pure-MLX version (host syncs; TF32 matmuls unless
    MLX_ENABLE_TF32=0)."""
    x = on_gpu(a)
    with mx.stream(mx.gpu):
        med, out = time_fn(
            lambda: mlx_ops_baseline.matrix_exp(x), lambda y: mx.eval(y), reps
        )
    return med, np.array(out)


def mlx_gemm_ms(n, dtype, reps):
    """One n x n MLX matmul on the Metal GPU (full float32), the unit of the
    GEMM limit there."""
    x = on_gpu(make_input(1, n, dtype, 1.0)[0])
    med, _ = time_fn(lambda: mx.matmul(x, x, stream=mx.gpu), mx.eval, reps)
    return med


def torch_gemm_ms(n, dtype, reps):
    """One n x n cuBLAS GEMM, FP32 (TF32 off), the unit of the GEMM limit."""
    if METAL:
        return mlx_gemm_ms(n, dtype, reps)
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    tdt = torch.complex64 if dtype == "complex64" else torch.float32
    x = torch.randn(n, n, dtype=tdt, device="cuda")
    med, _ = time_fn(lambda: x @ x, lambda y: torch.cuda.synchronize(), reps)
    return med


def bench_vjp(a, reps):
    """Forward, and the backward pass alone (mx.vjp's cotangent with exp(a)
    left unevaluated: what a training step adds to its forward)."""
    x = on_gpu(a)
    g = on_gpu(make_input(a.shape[0], a.shape[-1], "float32", 1.0, seed=2))

    def expm_gpu(y):
        return mle.matrix_exp(y, stream=mx.gpu)

    fwd, _ = time_fn(lambda: expm_gpu(x), lambda y: mx.eval(y), reps)
    back, _ = time_fn(
        lambda: mx.vjp(expm_gpu, [x], [g])[1][0], lambda y: mx.eval(y), reps
    )
    return fwd, back


def bench_torch(a, reps):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x = torch.from_numpy(a).cuda()
    med, out = time_fn(
        lambda: torch.linalg.matrix_exp(x),
        lambda y: torch.cuda.synchronize(),
        reps,
    )
    return med, out.cpu().numpy()


def bench_scipy_cpu(a, reps):
    """scipy.linalg.expm on the CPU, the whole stack in one call."""
    med, out = time_fn(lambda: sla.expm(a), lambda y: None, reps)
    return med, out


def bench_torch_cpu(a, reps):
    import torch

    x = torch.from_numpy(a)
    med, out = time_fn(lambda: torch.linalg.matrix_exp(x), lambda y: None, reps)
    return med, out.numpy()


def torch_mps_matrix_exp():
    """What torch.linalg.matrix_exp does on an MPS tensor: "no torch", "no
    MPS device", "raises ...", "falls back to the CPU ...", or "runs on mps"
    (then bench_torch_mps times it)."""
    import warnings

    try:
        import torch
    except ImportError:
        return "no torch"
    if not torch.backends.mps.is_available():
        return "no MPS device"
    x = torch.eye(4, device="mps")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            y = torch.linalg.matrix_exp(x)
            torch.mps.synchronize()
        except Exception as exc:  # noqa: BLE001
            return f"raises {type(exc).__name__}: {exc}"[:300]
    fallback = [str(w.message) for w in caught if "fall back" in str(w.message)]
    if fallback or y.device.type != "mps":
        return f"falls back to the CPU: {fallback[0] if fallback else y.device}"[:300]
    return "runs on mps"


def bench_torch_mps(a, reps):
    import torch

    x = torch.from_numpy(a).to("mps")
    med, out = time_fn(
        lambda: torch.linalg.matrix_exp(x), lambda y: torch.mps.synchronize(), reps
    )
    return med, out.cpu().numpy()


def bench_jax(a, reps):
    import jax
    import jax.scipy.linalg as jsl

    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32
    x = jax.device_put(a)
    f = jax.jit(jax.vmap(jsl.expm))
    med, out = time_fn(lambda: f(x), lambda y: y.block_until_ready(), reps)
    return med, np.asarray(out)


def bench_cupy(a, reps):
    import cupy as cp
    import cupyx.scipy.linalg as csl

    if a.shape[0] != 1:
        return None, None  # cupyx expm takes one matrix
    x = cp.asarray(a[0])
    med, out = time_fn(
        lambda: csl.expm(x), lambda y: cp.cuda.Device().synchronize(), reps
    )
    return med, cp.asnumpy(out)[None]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--only", default=None, help="comma list of frameworks")
    p.add_argument("--cases", default=None, help="comma list like 4096x16,1x1024")
    p.add_argument("--no-frechet", action="store_true")
    p.add_argument(
        "--hbm-tbps",
        type=float,
        default=None,
        help="peak HBM bandwidth in TB/s (default: by GPU name, H200 4.8)",
    )
    p.add_argument(
        "--small",
        action="store_true",
        help="small cases and few repetitions (CI smoke run)",
    )
    p.add_argument(
        "--reverse",
        action="store_true",
        help="run the cases in reverse order (what runs before a case moves it)",
    )
    args = p.parse_args()
    if args.small:
        args.reps = min(args.reps, 5)
    info = {"platform": platform.platform(), "mlx": mx.__version__}
    if METAL:
        frameworks = {
            "mlx_linalg_ext": bench_mlx,
            "mlx_ops": bench_mlx_ops,
            "scipy_cpu": bench_scipy_cpu,
            "torch_cpu": bench_torch_cpu,
        }
        info["backend"] = "metal"
        info["gpu"] = mx.device_info().get("device_name", "?")
        info["torch_mps_matrix_exp"] = torch_mps_matrix_exp()
        if info["torch_mps_matrix_exp"] == "runs on mps":
            frameworks["torch_mps"] = bench_torch_mps
    else:
        frameworks = {
            "mlx_linalg_ext": bench_mlx,
            "mlx_ops": bench_mlx_ops,
            "torch": bench_torch,
            "jax": bench_jax,
            "cupy": bench_cupy,
        }
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(0)
            info["torch"] = torch.__version__
        except Exception as exc:  # noqa: BLE001
            info["gpu"] = f"? ({exc})"
    if args.only:
        frameworks = {k: v for k, v in frameworks.items() if k in args.only.split(",")}
    info["mlx_eval_floor_ms"] = mlx_eval_floor()
    tbps = hbm_tbps(info["gpu"], args.hbm_tbps)
    info["hbm_tbps"] = tbps
    info["env_small_max"] = os.environ.get("MLX_LINALG_EXT_CUDA_SMALL_MAX")
    print(
        f"GPU: {info['gpu']}; one trivial MLX op end-to-end: "
        f"{info['mlx_eval_floor_ms']:.3f} ms"
    )
    if METAL:
        print(f"torch.linalg.matrix_exp on MPS: {info['torch_mps_matrix_exp']}")
    rows = []
    cases = SMALL_CASES if args.small else CASES
    derivative_cases = SMALL_DERIVATIVE_CASES if args.small else DERIVATIVE_CASES
    if args.cases:
        want = set(args.cases.split(","))
        cases = [c for c in cases if f"{c[0]}x{c[1]}" in want]
    if args.reverse:
        cases = cases[::-1]
    for batch, n, dtype, scale in cases:
        a = make_input(batch, n, dtype, scale)
        ref = reference(a[:REF_MAX])
        row = {"batch": batch, "n": n, "dtype": dtype, "scale": scale}
        for name, fn in frameworks.items():
            try:
                reps = args.reps if n <= 1024 else max(5, args.reps // 3)
                med, out = fn(a, reps)
                if med is None:
                    continue
                row[name] = {"ms": med, "relerr": rel_err(out[:REF_MAX], ref)}
            except Exception as exc:  # noqa: BLE001
                row[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        tiny_limit(row, tbps, info["mlx_eval_floor_ms"])
        compute_limit(row, a, info["gpu"])
        if batch == 1 and "ms" in row.get("mlx_linalg_ext", {}):
            try:
                row["products"] = products_needed(a)
                row["gemm_ms"] = torch_gemm_ms(n, dtype, max(5, args.reps // 2))
                row["over_gemm_limit"] = row["mlx_linalg_ext"]["ms"] / (
                    row["products"] * row["gemm_ms"]
                )
                if METAL and row["products"] > 0:
                    # One of our products against one mx.matmul: the zero
                    # matrix runs every dispatch of the same plan but skips
                    # every product, so the difference is the products' time.
                    zero_ms, _ = bench_mlx(np.zeros_like(a), reps)
                    row["zero_ms"] = zero_ms
                    spent = row["mlx_linalg_ext"]["ms"] - zero_ms
                    row["product_ms"] = spent / row["products"]
                    row["product_over_matmul"] = row["product_ms"] / row["gemm_ms"]
            except Exception as exc:  # noqa: BLE001
                row["gemm_limit_error"] = f"{type(exc).__name__}: {exc}"[:200]
        rows.append(row)
        print(json.dumps(row), flush=True)
    frows = []
    if not args.no_frechet and (not args.only or "frechet" in args.only):
        for batch, n in derivative_cases:
            if args.cases and f"{batch}x{n}" not in set(args.cases.split(",")):
                continue
            a = make_input(batch, n, "float32", 1.0)
            e = make_input(batch, n, "float32", 1.0, seed=1)
            ref = np.stack(
                [
                    sla.expm_frechet(
                        m.astype(np.float64), d.astype(np.float64), compute_expm=False
                    )
                    for m, d in zip(a, e)
                ]
            )
            row = {"batch": batch, "n": n, "dtype": "float32", "op": "frechet"}
            for name, fn in [
                ("mlx_linalg_ext", bench_mlx_frechet),
                ("scipy_cpu", bench_scipy_frechet)
                if METAL
                else ("torch", bench_torch_frechet),
            ]:
                try:
                    med, out = fn(a, e, max(5, args.reps // 2))
                    row[name] = {"ms": med, "relerr": rel_err(out, ref)}
                except Exception as exc:  # noqa: BLE001
                    row[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            frows.append(row)
            print(json.dumps(row), flush=True)
    vrows = []
    if not args.no_frechet and (not args.only or "vjp" in args.only):
        for batch, n in derivative_cases:
            if args.cases and f"{batch}x{n}" not in set(args.cases.split(",")):
                continue
            a = make_input(batch, n, "float32", 1.0)
            fwd, back = bench_vjp(a, max(5, args.reps // 2))
            row = {"batch": batch, "n": n, "fwd_ms": fwd, "backward_ms": back}
            row["backward_over_forward"] = back / fwd
            vrows.append(row)
            print(json.dumps(row), flush=True)
    result = {"info": info, "rows": rows, "frechet_rows": frows, "vjp_rows": vrows}
    out = args.out or os.path.join(
        os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "results")),
        "bench_gpu_metal.json" if METAL else "bench_gpu.json",
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)

    names = list(frameworks)
    print(f"\nmedian ms (relerr vs float64 SciPy), {info['gpu']}")
    print(
        f"{'case':24s}" + "".join(f"{k:>22s}" for k in names) + f"{'torch/ours':>11s}"
    )
    for r in rows:
        case = f"{r['dtype'][:3]} {r['batch']}x{r['n']}x{r['n']}"
        cells = []
        for k in names:
            v = r.get(k)
            if v is None:
                cells.append(f"{'-':>22s}")
            elif "error" in v:
                cells.append(f"{'error':>22s}")
            else:
                cells.append(f"{v['ms']:9.3f} ({v['relerr']:.1e})".rjust(22))
        sp = "-"
        if "ms" in r.get("torch", {}) and "ms" in r.get("mlx_linalg_ext", {}):
            sp = f"{r['torch']['ms'] / r['mlx_linalg_ext']['ms']:.1f}x"
        limit = ""
        if "over_gemm_limit" in r:
            limit = (
                f"  {r['products']} products x {r['gemm_ms']:.3f} ms GEMM:"
                f" {r['over_gemm_limit']:.2f}x the limit"
            )
        if "limit_ms" in r:
            hbm = f"HBM {r['hbm_ms']:.3f} ms, " if "hbm_ms" in r else ""
            limit = f"  limit {r['limit_ms']:.3f} ms ({hbm}floor {r['floor_ms']:.3f})"
            if "over_limit" in r:
                limit += f": {r['over_limit']:.1f}x"
            if "target_ms" in r:
                limit += f"; target {r['target_ms']} ms"
        if "over_compute" in r:
            limit += (
                f"  {r['products_total'] / r['batch']:.1f} products a matrix at the FP64"
                f" tensor-core peak: {r['compute_ms']:.3f} ms, {r['over_compute']:.1f}x"
            )
        if "product_over_matmul" in r:
            limit += (
                f"; one product {r['product_ms']:.3f} ms ="
                f" {r['product_over_matmul']:.2f}x mx.matmul"
            )
        print(f"{case:24s}" + "".join(cells) + f"{sp:>11s}" + limit)
    for r in frows:
        case = f"L(A,E) {r['batch']}x{r['n']}x{r['n']}"
        cells = []
        for k in ("mlx_linalg_ext", "scipy_cpu" if METAL else "torch"):
            v = r.get(k, {})
            cells.append(
                f"{v['ms']:9.3f} ({v['relerr']:.1e})".rjust(22)
                if "ms" in v
                else f"{'error':>22s}"
            )
        print(f"{case:24s}" + "".join(cells))
    for r in vrows:
        print(
            f"vjp {r['batch']}x{r['n']}x{r['n']}: forward {r['fwd_ms']:.3f} ms,"
            f" backward {r['backward_ms']:.3f} ms,"
            f" backward/forward {r['backward_over_forward']:.2f}x"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
