"""Self-check and demo: ``python -m mlx_linalg_ext``.

Checks matrix_exp and its derivatives against SciPy (float64 references) on
every degree branch and dtype, prints the errors, then a short timing table.
Exits non-zero if a check fails. SciPy is needed (``pip install scipy``).
"""

import sys
import time

import mlx.core as mx
import numpy as np

import mlx_linalg_ext as mle


def _relerr(x, ref):
    return float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))


def _random(rng, shape, norm, complex_=False):
    a = rng.standard_normal(shape)
    if complex_:
        a = a + 1j * rng.standard_normal(shape)
    return a * (norm / np.abs(a).sum(-2).max(-1))[..., None, None]


def self_check(rng):
    from scipy.linalg import expm, expm_frechet

    tol = {mx.float32: 5e-6, mx.complex64: 5e-6, mx.float64: 1e-13}
    np_dtype = {mx.float32: np.float32, mx.complex64: np.complex64}
    failures = 0
    print("matrix_exp vs scipy.linalg.expm (float64 reference), relative error")
    print(f"{'dtype':>10} " + " ".join(f"{f'|A|={v:g}':>10}" for v in _NORMS))
    for dtype in (mx.float32, mx.float64, mx.complex64):
        row = []
        for norm in _NORMS:
            a = _random(rng, (8, 8), norm, dtype == mx.complex64)
            if dtype == mx.float64:
                x = mle.matrix_exp(mx.array(a, dtype=mx.float64), stream=mx.cpu)
            else:
                a = a.astype(np_dtype[dtype])
                x = mle.matrix_exp(mx.array(a), stream=mx.cpu)
            err = _relerr(
                x, expm(a.astype(np.complex128 if np.iscomplexobj(a) else np.float64))
            )
            # Past norm ~10 the condition number, not the method, sets the error.
            bound = tol[dtype] * max(1.0, norm)
            failures += err > bound
            row.append(f"{err:10.1e}" + ("!" if err > bound else ""))
        print(f"{str(dtype).split('.')[-1]:>10} " + " ".join(row))

    a = _random(rng, (6, 6), 3.0)
    e = rng.standard_normal((6, 6))
    _, l = mle.expm_frechet(mx.array(a), mx.array(e), stream=mx.cpu)
    _, l_ref = expm_frechet(a, e)
    g = mx.grad(lambda m: (mle.matrix_exp(m) * mx.array(e)).sum())(mx.array(a))
    g_ref = expm_frechet(a.T, e)[1]
    checks = {
        "expm_frechet L(A, E)": _relerr(l, l_ref),
        "grad (vjp) L(A^T, G)": _relerr(g, g_ref),
    }
    for name, err in checks.items():
        print(f"{name:>24}: {err:.1e}")
        failures += err > 1e-5
    return failures


_NORMS = (1e-8, 1e-4, 0.03, 0.4, 1.2, 2.5, 40.0)


def _median_ms(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def timing(rng):
    from scipy.linalg import expm

    print("\ntiming, median ms (1-norm ~4, float32; mx.eval included)")
    print(f"{'case':>14} {'matrix_exp':>11} {'scipy expm':>11} {'vjp':>8}")
    for batch, n in ((1, 64), (1, 256), (1024, 16), (64, 64)):
        a = _random(rng, (batch, n, n), 4.0).astype(np.float32)
        am = mx.array(a)
        g = mx.array(rng.standard_normal(a.shape).astype(np.float32))
        ours = _median_ms(lambda am=am: mx.eval(mle.matrix_exp(am, stream=mx.cpu)))
        vjp = _median_ms(
            lambda am=am, g=g: mx.eval(mx.vjp(mle.matrix_exp, [am], [g])[1])
        )
        ref = _median_ms(lambda a=a: expm(a), repeats=3)
        print(f"{f'{batch}x{n}x{n}':>14} {ours:11.2f} {ref:11.2f} {vjp:8.2f}")


def main():
    rng = np.random.default_rng(0)
    print(
        f"mlx_linalg_ext {mle.__version__}, mlx {mx.__version__}, "
        f"GPU kernels: {mle.has_gpu_kernels}"
    )
    failures = self_check(rng)
    timing(rng)
    print("\nself-check:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
