"""Self-check and demo: ``python -m mlx_linalg_ext``.

Checks ``matrix_exp`` and its derivatives against closed forms and identities
(they need only MLX), and against SciPy's float64 ``expm`` and ``expm_frechet``
on every degree branch and dtype when SciPy is installed; then prints a short
timing table. Exits non-zero if a check fails. For the SciPy comparison:
``pip install "mlx-linalg-ext[test]"`` (or ``pip install scipy``).
"""

import argparse
import cmath
import math
import random
import statistics
import sys
import time

import mlx.core as mx

import mlx_linalg_ext as mle

# 1-norms that reach every Taylor degree and the squarings.
_NORMS = (1e-8, 1e-4, 0.03, 0.4, 1.2, 2.5, 40.0)
_DTYPES = {"float32": mx.float32, "float64": mx.float64, "complex64": mx.complex64}
# Normwise relative error allowed per unit of 1-norm (at least 1): past norm ~1
# the condition number of exp, not the method, sets the error.
_TOL = {"float32": 5e-6, "float64": 1e-13, "complex64": 5e-6}
_SCIPY_HINT = 'pip install "mlx-linalg-ext[test]"  (or: pip install scipy)'


# ----------------------------------------------------- small dense helpers
# Plain Python on nested lists, in double precision, so that the references
# share no code with MLX or the package.


def _eye(n):
    return [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]


def _matmul(x, y):
    return [[sum(a * b for a, b in zip(row, col)) for col in zip(*y)] for row in x]


def _add(x, y, s=1.0):
    return [[a + s * b for a, b in zip(rx, ry)] for rx, ry in zip(x, y)]


def _scale(x, s):
    return [[s * a for a in row] for row in x]


def _adjoint(x):
    return [[a.conjugate() for a in col] for col in zip(*x)]


def _fro(x):
    return math.sqrt(sum(abs(a) ** 2 for row in x for a in row))


def _one_norm(x):
    return max(sum(abs(a) for a in col) for col in zip(*x))


def _relerr(x, ref):
    return _fro(_add(x, ref, -1.0)) / _fro(ref)


def _det3(m):
    (a, b, c), (d, e, f), (g, h, i) = m
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _random(rng, n, norm, complex_=False, upper=False):
    """An n x n matrix of 1-norm ``norm`` (strictly upper triangular if asked)."""
    m = [
        [
            (complex(rng.gauss(0, 1), rng.gauss(0, 1)) if complex_ else rng.gauss(0, 1))
            if (j > i or not upper)
            else 0.0
            for j in range(n)
        ]
        for i in range(n)
    ]
    return _scale(m, norm / _one_norm(m))


def _exp(a, dtype):
    """exp of a nested list in ``dtype``: (the input as rounded, the result)."""
    x = mx.array(a, dtype=_DTYPES[dtype])
    return x.tolist(), mle.matrix_exp(x).tolist()


# ----------------------------------------------------------- closed forms


def _exp_2x2(m):
    """exp of a 2x2 matrix: e^mu (cosh(d) I + sinh(d)/d (A - mu I)), with
    mu = tr(A)/2 and d^2 = ((a - d)/2)^2 + bc."""
    (a, b), (c, d) = m
    mu = (a + d) / 2
    delta = cmath.sqrt(((a - d) / 2) ** 2 + b * c)
    sinhc = cmath.sinh(delta) / delta if abs(delta) > 1e-4 else 1 + delta**2 / 6
    ch, em = cmath.cosh(delta), cmath.exp(mu)
    out = [
        [em * (ch + sinhc * (a - mu)), em * sinhc * b],
        [em * sinhc * c, em * (ch + sinhc * (d - mu))],
    ]
    real = not any(isinstance(v, complex) for row in m for v in row)
    return [[v.real for v in row] for row in out] if real else out


def _exp_nilpotent(m):
    """exp of a strictly triangular n x n matrix: its Taylor series ends at
    N^(n-1)/(n-1)!."""
    n = len(m)
    out, term = _eye(n), _eye(n)
    for k in range(1, n):
        term = _scale(_matmul(term, m), 1.0 / k)
        out = _add(out, term)
    return out


def _frechet_diag(d, e):
    """L(diag(d), E)_ij = E_ij (e^d_i - e^d_j) / (d_i - d_j) (e^d_i if equal)."""

    def divided(x, y):
        if abs(x - y) < 1e-8 * max(1.0, abs(x)):
            return (
                cmath.exp((x + y) / 2)
                if isinstance(x, complex)
                else math.exp((x + y) / 2)
            )
        f = cmath.exp if isinstance(x, complex) or isinstance(y, complex) else math.exp
        return (f(x) - f(y)) / (x - y)

    n = len(d)
    return [[e[i][j] * divided(d[i], d[j]) for j in range(n)] for i in range(n)]


# ------------------------------------------------------------------ checks


def closed_form_checks(rng):
    """(name, dtype, error, bound) rows: closed forms over every 1-norm in
    _NORMS (the bound scales with the norm), then identities."""
    rows = []

    def over_norms(name, dtype, make, reference):
        worst, worst_ratio = 0.0, 0.0
        for norm in _NORMS:
            a, x = _exp(make(norm), dtype)
            err = _relerr(x, reference(a))
            ratio = err / (_TOL[dtype] * max(1.0, norm))
            if ratio >= worst_ratio:
                worst, worst_ratio = err, ratio
        rows.append((name, dtype, worst, worst_ratio))

    for dtype in _DTYPES:
        c = dtype == "complex64"
        over_norms(
            "exp(diag(d)) = diag(e^d)",
            dtype,
            lambda v, c=c: [
                [
                    rng.uniform(-v, v) + (1j * rng.uniform(-v, v) if c else 0)
                    if i == j
                    else 0.0
                    for j in range(4)
                ]
                for i in range(4)
            ],
            lambda a: [
                [cmath.exp(a[i][i]) if i == j else 0.0 for j in range(4)]
                for i in range(4)
            ],
        )
        over_norms(
            "[[0,-t],[t,0]] -> cos/sin",
            dtype,
            lambda t: [[0.0, -t], [t, 0.0]],
            lambda a: [
                [math.cos(a[1][0].real), -math.sin(a[1][0].real)],
                [math.sin(a[1][0].real), math.cos(a[1][0].real)],
            ],
        )
        over_norms(
            "2x2 closed form",
            dtype,
            lambda v, c=c: _random(rng, 2, v, c),
            _exp_2x2,
        )
        over_norms(
            "nilpotent 5x5 -> finite series",
            dtype,
            lambda v, c=c: _random(rng, 5, v, c, upper=True),
            _exp_nilpotent,
        )

    def identity(name, dtype, err, tol):
        rows.append((name, dtype, err, err / tol))

    for dtype in _DTYPES:
        c, tol = dtype == "complex64", _TOL[dtype]
        # exp(A) exp(-A) = I; the residual scales with |exp(A)| |exp(-A)|.
        a, x = _exp(_random(rng, 6, 3.0, c), dtype)
        _, y = _exp(_scale(a, -1.0), dtype)
        identity(
            "exp(A) exp(-A) = I",
            dtype,
            _fro(_add(_matmul(x, y), _eye(6), -1.0)) / (_fro(x) * _fro(y)),
            tol,
        )
        # det exp(A) = e^tr(A).
        a, x = _exp(_random(rng, 3, 2.0, c), dtype)
        ref = cmath.exp(sum(a[i][i] for i in range(3)))
        identity("det exp(A) = e^tr(A)", dtype, abs(_det3(x) - ref) / abs(ref), 2 * tol)
        # Skew-symmetric (skew-Hermitian) A -> orthogonal (unitary) exp(A).
        w = _random(rng, 8, 4.0, c)
        _, q = _exp(_add(w, _adjoint(w), -1.0), dtype)
        identity(
            "skew A -> exp(A)^H exp(A) = I",
            dtype,
            _fro(_add(_matmul(_adjoint(q), q), _eye(8), -1.0)) / math.sqrt(8),
            8 * tol,
        )

    # Frechet derivative of a diagonal matrix: divided differences.
    for dtype, mx_dtype in _DTYPES.items():
        c = dtype == "complex64"
        d = [
            rng.uniform(-2, 2) + (1j * rng.uniform(-2, 2) if c else 0) for _ in range(4)
        ]
        d[3] = d[2]  # an equal pair: the confluent case e^d_i
        a = mx.array(
            [[d[i] if i == j else 0.0 for j in range(4)] for i in range(4)],
            dtype=mx_dtype,
        )
        e = mx.array(_random(rng, 4, 1.0, c), dtype=mx_dtype)
        _, l_ = mle.expm_frechet(a, e)
        da = [a.tolist()[i][i] for i in range(4)]
        ref = _frechet_diag(da, e.tolist())
        identity(
            "L(diag(d), E): divided differences",
            dtype,
            _relerr(l_.tolist(), ref),
            4 * _TOL[dtype] * 2.0,
        )

    # Frechet derivative and gradient of a general matrix: central differences
    # in float64 (truncation error ~h^2 |A|^2, rounding ~u/h).
    a = mx.array(_random(rng, 5, 2.0), dtype=mx.float64)
    e = mx.array(_random(rng, 5, 1.0), dtype=mx.float64)
    g = mx.array(_random(rng, 5, 1.0), dtype=mx.float64)
    h = 1e-5
    fd = (mle.matrix_exp(a + h * e) - mle.matrix_exp(a - h * e)) / (2 * h)
    _, l_ = mle.expm_frechet(a, e)
    identity(
        "L(A, E) vs central difference",
        "float64",
        _relerr(l_.tolist(), fd.tolist()),
        1e-7,
    )

    def f(m):
        return (mle.matrix_exp(m) * g).sum()

    grad = mx.grad(f)(a)
    directional = (mx.sum(grad * e)).item()
    fd = ((f(a + h * e) - f(a - h * e)) / (2 * h)).item()
    identity(
        "grad: <grad f, E> vs central diff.",
        "float64",
        abs(directional - fd) / abs(fd),
        1e-7,
    )
    return rows


def scipy_checks(np, expm, expm_frechet):
    """Random matrices of every 1-norm in _NORMS against SciPy in float64."""
    rng = np.random.default_rng(0)
    rows = []

    def random(shape, norm, complex_=False):
        a = rng.standard_normal(shape)
        if complex_:
            a = a + 1j * rng.standard_normal(shape)
        return a * (norm / np.abs(a).sum(-2).max(-1))[..., None, None]

    def relerr(x, ref):
        return float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))

    for dtype, mx_dtype in _DTYPES.items():
        for norm in _NORMS:
            a = random((8, 8), norm, dtype == "complex64").astype(dtype)
            x = mle.matrix_exp(mx.array(a, dtype=mx_dtype))
            err = relerr(x, expm(a.astype(np.result_type(a.dtype, np.float64))))
            rows.append(
                (
                    f"expm, 8x8, |A|_1 = {norm:g}",
                    dtype,
                    err,
                    err / (_TOL[dtype] * max(1.0, norm)),
                )
            )

    a = random((6, 6), 3.0)
    e = rng.standard_normal((6, 6))
    _, l_ = mle.expm_frechet(mx.array(a), mx.array(e))
    g = mx.grad(lambda m: (mle.matrix_exp(m) * mx.array(e)).sum())(mx.array(a))
    for name, x, ref in (
        ("expm_frechet L(A, E)", l_, expm_frechet(a, e)[1]),
        ("grad (vjp) L(A^T, G)", g, expm_frechet(a.T, e)[1]),
    ):
        err = relerr(x, ref)
        rows.append((name, "float32", err, err / 1e-5))
    return rows


def _print_rows(rows):
    print(f"{'check':>36} {'dtype':>10} {'rel. error':>10} {'/bound':>7}")
    for name, dtype, err, ratio in rows:
        flag = "  FAIL" if not ratio <= 1.0 else ""
        print(f"{name:>36} {dtype:>10} {err:10.1e} {ratio:7.2f}{flag}")
    return sum(not ratio <= 1.0 for *_, ratio in rows)


# ------------------------------------------------------------------ timing


def _median_ms(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def timing(scipy_expm):
    print("\ntiming, median ms (1-norm ~4, float32; mx.eval included)")
    head = f"{'case':>14} {'matrix_exp':>11} {'vjp':>8}"
    print(head + (f" {'scipy expm':>11}" if scipy_expm else ""))
    key = mx.random.key(0)
    for batch, n in ((1, 64), (1, 256), (1024, 16), (64, 64)):
        key, k1, k2 = mx.random.split(key, 3)
        a = mx.random.normal((batch, n, n), key=k1)
        a = a * (4.0 / mx.abs(a).sum(-2).max(-1))[..., None, None]
        g = mx.random.normal(a.shape, key=k2)
        mx.eval(a, g)
        ours = _median_ms(lambda a=a: mx.eval(mle.matrix_exp(a)))
        vjp = _median_ms(lambda a=a, g=g: mx.eval(mx.vjp(mle.matrix_exp, [a], [g])[1]))
        line = f"{f'{batch}x{n}x{n}':>14} {ours:11.2f} {vjp:8.2f}"
        if scipy_expm:
            import numpy as np

            an = np.array(a)
            line += f" {_median_ms(lambda an=an: scipy_expm(an), repeats=3):11.2f}"
        print(line)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mlx_linalg_ext", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "--no-timing", action="store_true", help="run the checks only, no timing"
    )
    args = parser.parse_args(argv)
    print(
        f"mlx_linalg_ext {mle.__version__}, mlx {mx.__version__}, "
        f"GPU kernels: {mle.has_gpu_kernels}"
    )
    try:
        import numpy as np
        from scipy.linalg import expm, expm_frechet
    except ImportError:
        np = expm = expm_frechet = None

    # float64 runs on the CPU only; the checks run there for every dtype.
    with mx.stream(mx.cpu):
        print(
            "\nclosed forms and identities (MLX only; references in Python doubles;"
            "\nthe closed forms: worst of the 1-norms 1e-8 ... 40, bound scaled by it)"
        )
        failures = _print_rows(closed_form_checks(random.Random(0)))
        if expm is not None:
            print("\nscipy.linalg.expm / expm_frechet (float64 references)")
            failures += _print_rows(scipy_checks(np, expm, expm_frechet))
        if not args.no_timing:
            timing(expm)
    if expm is None:
        print(
            f"\nSciPy is not installed: the comparison with SciPy was skipped.\n"
            f"For it: {_SCIPY_HINT}"
        )
    print("\nself-check:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
