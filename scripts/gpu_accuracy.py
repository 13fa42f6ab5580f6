"""Accuracy of matrix_exp on the GPU against float64 SciPy as the 1-norm
grows (more squarings amplify every product's rounding), for the build's
product kernels (run once with MLX_LINALG_EXT_CUDA_TC_MIN=1000000 for FP32
SIMT products instead of 3xTF32) and for PyTorch (TF32 off).

Usage: python3 scripts/gpu_accuracy.py [--torch] [--out file.json]
Prints one line per (n, norm, dtype): median and max normwise relative error
over the seeds.
"""

import argparse
import json
import os

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import scipy.linalg as sla

SIZES = (96, 256, 1024)
NORMS = (1.0, 4.0, 30.0, 300.0, 3000.0)
SEEDS = 2


def make(n, norm, dtype, seed):
    rng = np.random.default_rng([seed, n, int(norm)])
    a = rng.standard_normal((n, n))
    if dtype == "complex64":
        a = a + 1j * rng.standard_normal((n, n))
    a *= norm / np.abs(a).sum(axis=0).max()
    return a.astype(dtype)


def relerr(x, ref):
    return float(np.linalg.norm(x.astype(ref.dtype) - ref) / np.linalg.norm(ref))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--torch", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.torch:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for dtype in ("float32", "complex64"):
        for n in SIZES:
            for norm in NORMS:
                ours, theirs = [], []
                for seed in range(SEEDS):
                    a = make(n, norm, dtype, seed)
                    ref = sla.expm(
                        a.astype(np.complex128 if "complex" in dtype else np.float64)
                    )
                    x = mle.matrix_exp(mx.array(a), stream=mx.gpu)
                    ours.append(relerr(np.array(x), ref))
                    if args.torch:
                        t = torch.linalg.matrix_exp(torch.from_numpy(a).cuda())
                        theirs.append(relerr(t.cpu().numpy(), ref))
                row = {
                    "dtype": dtype,
                    "n": n,
                    "norm": norm,
                    "ours_median": float(np.median(ours)),
                    "ours_max": max(ours),
                }
                if theirs:
                    row["torch_median"] = float(np.median(theirs))
                    row["torch_max"] = max(theirs)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"tc_min": os.environ.get("MLX_LINALG_EXT_CUDA_TC_MIN"), "rows": rows},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
