"""GPU self-check of matrix_exp / expm_frechet against the extension's own CPU
backend and float64 SciPy, over sizes that cover both CUDA paths (the fused
small-matrix kernel and the GEMM path), mixed norms within one batch (every
degree, many squarings), NaN/Inf matrices, float32 and complex64.

Run on the GPU machine; MLX_LINALG_EXT_CUDA_SMALL_MAX=0 in the environment
sends every size through the GEMM path, MLX_LINALG_EXT_CUDA_SM90_MIN=512 the
single large matrices through the Hopper wgmma path (--large-only: just
those). Exit status 1 on any failure.
"""

import os
import sys
import time

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import scipy.linalg as sla

U32 = 2.0**-24


def make_batch(rng, batch, n, dtype, norms):
    a = rng.standard_normal((batch, n, n))
    if dtype == np.complex64:
        a = a + 1j * rng.standard_normal((batch, n, n))
    target = np.array([norms[i % len(norms)] for i in range(batch)])
    # Large norms on skew-(Hermitian) matrices: many squarings, yet exp(A)
    # stays unitary (no overflow in float32).
    skew = a - np.conj(np.swapaxes(a, -1, -2))
    a = np.where(((target > 50) & (n > 1))[:, None, None], skew, a)
    col = np.abs(a).sum(axis=-2).max(axis=-1)
    scale = target / col
    return (a * scale[:, None, None]).astype(dtype)


def relerr(x, ref):
    x = x.astype(np.complex128 if np.iscomplexobj(ref) else np.float64)
    num = np.linalg.norm((x - ref).reshape(len(ref), -1), axis=-1)
    den = np.linalg.norm(ref.reshape(len(ref), -1), axis=-1)
    return num / np.maximum(den, 1e-300)


def main():
    rng = np.random.default_rng(1234)
    path = os.environ.get("MLX_LINALG_EXT_CUDA_SMALL_MAX", "default")
    print(f"has_gpu_kernels={mle.has_gpu_kernels} small_max={path}")
    if not mle.has_gpu_kernels:
        print("FAIL: built without GPU kernels")
        return 1
    norms = [1e-9, 1e-4, 0.03, 0.4, 1.2, 2.5, 4.0, 40.0, 3000.0]
    # 1 .. 32: the fused kernel (padded sizes 4, 8, 16, 32); above: the GEMM
    # path; n = 300 with a batch of 16 takes its 128 x 128 float tiles.
    sizes = [1, 2, 3, 5, 8, 16, 17, 31, 32, 33, 48, 64, 65, 100, 128, 129, 200, 300]
    failures = 0
    t0 = time.time()
    # --large-only: just the single large matrices (below).
    large_only = "--large-only" in sys.argv
    for dtype in () if large_only else (np.float32, np.complex64):
        for n in sizes:
            # exp(3000) of a 1 x 1 matrix overflows: its large norms stop at 40.
            nl = norms if n > 1 else norms[:-1]
            batch = len(nl) if n <= 129 else 4 if n < 300 else 16
            a = make_batch(rng, batch, n, dtype, nl)
            e = make_batch(rng, batch, n, dtype, [1.0])
            ag, eg = mx.array(a), mx.array(e)
            x_gpu = np.array(mle.matrix_exp(ag, stream=mx.gpu))
            x_cpu = np.array(mle.matrix_exp(ag, stream=mx.cpu))
            xf, lf = mle.expm_frechet(ag, eg, stream=mx.gpu)
            xf, lf = np.array(xf), np.array(lf)
            ref = np.stack(
                [
                    sla.expm(
                        m.astype(np.complex128 if dtype == np.complex64 else np.float64)
                    )
                    for m in a
                ]
            )
            lref = np.stack(
                [
                    sla.expm_frechet(
                        m.astype(
                            np.complex128 if dtype == np.complex64 else np.float64
                        ),
                        ee.astype(
                            np.complex128 if dtype == np.complex64 else np.float64
                        ),
                        compute_expm=False,
                    )
                    for m, ee in zip(a, e)
                ]
            )
            nrm = np.abs(a.astype(np.complex128)).sum(axis=-2).max(axis=-1)
            tol = 64 * U32 * np.maximum(1.0, nrm)
            e_gpu = relerr(x_gpu, ref)
            e_cpu = relerr(x_cpu, ref)
            e_fx = relerr(xf, ref)
            e_fl = relerr(lf, lref)
            # The derivative is conditioned worse: allow n * tol.
            bad = (~(e_gpu <= tol)) | (~(e_fx <= tol)) | (~(e_fl <= tol * max(4, n)))
            status = "ok" if not bad.any() else "FAIL"
            failures += int(bad.any())
            print(
                f"{np.dtype(dtype).name:9s} n={n:4d} batch={batch:2d} "
                f"gpu={e_gpu.max():.1e} cpu={e_cpu.max():.1e} "
                f"frechet x={e_fx.max():.1e} L={e_fl.max():.1e} {status}"
            )
            if bad.any():
                for i in np.nonzero(bad)[0]:
                    print(
                        f"   matrix {i}: norm={nrm[i]:.3g} gpu={e_gpu[i]:.2e} "
                        f"cpu={e_cpu[i]:.2e} fx={e_fx[i]:.2e} fl={e_fl[i]:.2e}"
                    )
        # NaN / Inf stay in their own matrix.
        for n in (4, 40, 70):
            a = make_batch(rng, 3, n, dtype, [1.0, 5.0, 0.5])
            a[0, 1, 2] = np.nan
            a[2, 0, 0] = np.inf
            x = np.array(mle.matrix_exp(mx.array(a), stream=mx.gpu))
            xf, lf = mle.expm_frechet(mx.array(a), mx.array(a), stream=mx.gpu)
            ok = (
                np.isnan(x[0]).all()
                and np.isnan(x[2]).all()
                and np.isfinite(x[1]).all()
                and np.isnan(np.array(lf)[0]).all()
                and np.isfinite(np.array(lf)[1]).all()
            )
            failures += int(not ok)
            print(
                f"{np.dtype(dtype).name:9s} n={n:4d} NaN/Inf isolation {'ok' if ok else 'FAIL'}"
            )
    # Single large matrices: the Hopper wgmma path (batch 1, n >= 512, n c %
    # 4 == 0) with its first squarings and the persistent kernel after them
    # (norm 40: s ~ 4-5; skew 3000: s ~ 11), and n = 514 float (mma.sync).
    for dtype in (np.float32, np.complex64):
        for n in (512, 514, 1024):
            for norm in (0.4, 4.0, 40.0, 3000.0):
                a = make_batch(rng, 1, n, dtype, [norm])
                wide = np.complex128 if dtype == np.complex64 else np.float64
                ref = sla.expm(a[0].astype(wide))[None]
                x = np.array(mle.matrix_exp(mx.array(a), stream=mx.gpu))
                err = relerr(x, ref)[0]
                tol = 64 * U32 * max(1.0, norm)
                line = f"x={err:.1e}"
                bad = not err <= tol
                if n < 1024 and norm in (4.0, 40.0):
                    e = make_batch(rng, 1, n, dtype, [1.0])
                    xf, lf = mle.expm_frechet(mx.array(a), mx.array(e), stream=mx.gpu)
                    lref = sla.expm_frechet(
                        a[0].astype(wide), e[0].astype(wide), compute_expm=False
                    )[None]
                    e_fx = relerr(np.array(xf), ref)[0]
                    e_fl = relerr(np.array(lf), lref)[0]
                    line += f" frechet x={e_fx:.1e} L={e_fl:.1e}"
                    bad = bad or not (e_fx <= tol and e_fl <= tol * 4)
                failures += int(bad)
                print(
                    f"{np.dtype(dtype).name:9s} n={n:4d} batch= 1 norm={norm:g} "
                    f"{line} {'FAIL' if bad else 'ok'}"
                )
        a = make_batch(rng, 1, 512, dtype, [1.0])
        a[0, 3, 5] = np.nan
        x = np.array(mle.matrix_exp(mx.array(a), stream=mx.gpu))
        ok = np.isnan(x).all()
        failures += int(not ok)
        print(f"{np.dtype(dtype).name:9s} n= 512 NaN {'ok' if ok else 'FAIL'}")
    # Under mx.compile, and a batch with a leading shape.
    a = make_batch(rng, 6, 12, np.float32, [0.1, 3.0, 30.0]).reshape(2, 3, 12, 12)
    f = mx.compile(lambda x: mle.matrix_exp(x, stream=mx.gpu))
    y = np.array(f(mx.array(a)))
    ref = np.stack([sla.expm(m.astype(np.float64)) for m in a.reshape(-1, 12, 12)])
    err = relerr(y.reshape(-1, 12, 12), ref).max()
    ok = err < 1e-4
    failures += int(not ok)
    print(f"mx.compile batch (2,3,12,12) err={err:.1e} {'ok' if ok else 'FAIL'}")
    print(f"{failures} failure(s) in {time.time() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
