"""Accuracy on non-normal matrices: ours against PyTorch and SciPy.

Each case's error is the normwise relative error against mpmath's expm at 40
digits. float32 runs on the device given (--device cpu or gpu), float64 on
the CPU (MLX computes float64 there only). "s" is the number of squarings
this package takes (bench/common.py decision()) and, beside it, the number the
1-norm alone would ask for (what PyTorch's choice is based on).

    python bench/accuracy_nonnormal.py --device cpu --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys

import mlx.core as mx
import mlx_linalg_ext as mle
import mpmath
import numpy as np
import scipy.linalg as sla
from common import decision, one_norm

try:
    import torch
except ImportError:  # the table leaves PyTorch's columns empty
    torch = None


def cases():
    """(name, matrix) of the test family: triangular with a growing
    off-diagonal, its non-triangular cousin, Jordan blocks, random
    triangular matrices, and the classic hard cases."""
    for b in [1e2, 1e4, 1e6, 1e8]:
        yield f"[[1, {b:g}], [0, -1]]", np.array([[1.0, b], [0.0, -1.0]])
    for b in [1e2, 1e4, 1e6]:
        yield f"[[0, {b:g}], [{1 / b:g}, 0]]", np.array([[0.0, b], [1.0 / b, 0.0]])
        yield (
            f"[[0.5, {b:g}], [{-4 / b:g}, -0.5]]",
            np.array([[0.5, b], [-4.0 / b, -0.5]]),
        )
    for c in [1e1, 1e2, 1e3, 1e4]:
        yield f"-I + {c:g} N (6x6 Jordan)", -np.eye(6) + c * np.eye(6, k=1)
    rng = np.random.default_rng(7)
    for scale in [1e1, 1e2, 1e3]:
        for n in [8, 40]:
            a = np.triu(rng.standard_normal((n, n)), 1) * scale
            yield (
                f"triu {n}x{n}, off-diagonal x{scale:g}",
                a + np.diag(rng.standard_normal(n)),
            )
    # Moler & Van Loan (1978), "Nineteen Dubious Ways", Sec. 1.
    yield (
        "Moler & Van Loan [[-49, 24], [-64, 31]]",
        np.array([[-49.0, 24.0], [-64.0, 31.0]]),
    )


def reference(a: np.ndarray) -> np.ndarray:
    with mpmath.workdps(40):
        r = mpmath.expm(mpmath.matrix(a.tolist()))
        return np.array(r.tolist(), dtype=np.float64)


def err(x, ref) -> float:
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return math.nan
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def one_norm_squarings(a: np.ndarray) -> int:
    """s of the 1-norm choice alone (the shift kept)."""
    from mlx_linalg_ext._ext import decide

    n = a.shape[-1]
    w = a.astype(np.float64)
    b = w - np.trace(w) / n * np.eye(n)
    return decide(float(one_norm(w)), float(one_norm(b)), a.dtype == np.float64)[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    dev = mx.gpu if args.device == "gpu" else mx.cpu
    rows = []
    for name, a in cases():
        ref = reference(a)
        a32 = a.astype(np.float32)
        row = {"case": name, "n": a.shape[-1]}
        row["ours32"] = err(np.array(mle.matrix_exp(mx.array(a32), stream=dev)), ref)
        row["ours64"] = err(
            np.array(mle.matrix_exp(mx.array(a, dtype=mx.float64), stream=mx.cpu)), ref
        )
        row["scipy64"] = err(sla.expm(a), ref)
        if torch is not None:
            row["torch32"] = err(
                torch.linalg.matrix_exp(torch.from_numpy(a32)).numpy(), ref
            )
            row["torch64"] = err(
                torch.linalg.matrix_exp(torch.from_numpy(a)).numpy(), ref
            )
        for bits, m in (("32", a32), ("64", a)):
            degree, s = decision(m)
            row["s" + bits] = s if degree >= 0 else None
            row["s" + bits + "_one_norm"] = one_norm_squarings(m)
        rows.append(row)

    def sq(r, bits):
        s = r["s" + bits]
        return "no answer" if s is None else f"{s} ({r['s' + bits + '_one_norm']})"

    def f(v):
        return (
            "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1e}"
        )

    print(
        f"float32 on {args.device}, float64 on cpu; {platform.processor() or platform.machine()}"
    )
    print(
        "| case | float32 ours | PyTorch | s (1-norm s) | float64 ours | SciPy | PyTorch "
        "| s (1-norm s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {f(r['ours32'])} | {f(r.get('torch32'))} "
            f"| {sq(r, '32')} | {f(r['ours64'])} | {f(r['scipy64'])} "
            f"| {f(r.get('torch64'))} | {sq(r, '64')} |"
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": args.device, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
