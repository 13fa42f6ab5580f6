"""Two paths of the Metal kernels (metal/launch_plan.h): one fused
threadgroup per matrix while the matrix and its products fit in 32 KB of
threadgroup memory, a predicated list of dispatches beyond (the tiny kernels
of n <= 8: test_tiny.py). The cases sit at the border between the paths, mix
every degree band with squarings and NaN in one batch (each matrix decides on
the device), and use batch and matrix sizes that are no multiple of the
kernels' tiles.

They run on every build against SciPy; with the Metal emulator
(``_ext.backend == "metal-emulator"``) or Metal they run the Metal kernels.
The overscaling tests (non-normal matrices whose squarings the norms of B^2
and B^3, or of B^6, lower) check every Metal path against closed forms, and
every other backend with them.
"""

import math

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import pytest
from expm_testutils import (
    assert_relerr,
    expm_ref,
    frechet_ref,
    matrix_with_norm,
    rounded,
    to_mx,
    to_np,
    tol_for,
)

# One matrix per degree band (1, 2, 4, 8, 12, 18), then 2 and 6 squarings;
# None marks the matrix that holds a NaN.
NORMS = [1e-8, 3e-4, 0.03, 0.4, 1.2, 2.5, None, 10.0, 150.0]

# The last n of the fused path and the first of the predicated one, per case
# (n^2 slots of 4 or 8 bytes: 7 buffers forward, 14 with the derivative).
BORDER = [
    (mx.float32, False, 32),
    (mx.float32, False, 33),
    (mx.float32, True, 24),
    (mx.float32, True, 25),
    (mx.complex64, False, 24),
    (mx.complex64, False, 25),
    (mx.complex64, True, 17),
    (mx.complex64, True, 18),
]


def _batch(rng, n, dtype):
    cplx = dtype == mx.complex64
    mats = []
    for norm in NORMS:
        if norm is None:
            a = matrix_with_norm(rng, n, 1.0, complex_=cplx)
            a[n // 2, n // 3] = np.nan
        else:
            kind = "gauss" if norm <= 3 else "dissipative"
            a = matrix_with_norm(rng, n, norm, kind, complex_=cplx)
        mats.append(a)
    return rounded(np.stack(mats), dtype)


def _check(x, ref, dtype, what):
    for i, norm in enumerate(NORMS):
        if norm is None:
            assert np.isnan(x[i]).all(), f"{what}: the NaN matrix is not all NaN"
        else:
            assert_relerr(x[i], ref[i], tol_for(dtype, norm), f"{what} norm {norm}")


@pytest.mark.parametrize(
    "dtype,frechet,n",
    BORDER,
    ids=[f"{d}-{'L' if f else 'X'}-{n}" for d, f, n in BORDER],
)
def test_mixed_batch_at_the_path_border(device, rng, dtype, frechet, n):
    a = _batch(rng, n, dtype)
    finite = np.nan_to_num(a)
    if not frechet:
        x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
        _check(x, expm_ref(finite), dtype, f"exp n={n}")
        return
    e = rounded(
        rng.standard_normal(a.shape)
        + (1j * rng.standard_normal(a.shape) if dtype == mx.complex64 else 0),
        dtype,
    )
    x, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    xr, lr = frechet_ref(finite, e)
    _check(to_np(x), xr, dtype, f"X n={n}")
    # L carries the squarings' rounding of X into its own: as in the other
    # Frechet tests, four times the bound of X.
    lx = to_np(lx)
    for i, norm in enumerate(NORMS):
        if norm is None:
            assert np.isnan(lx[i]).all(), "the NaN matrix's L is not all NaN"
        else:
            assert_relerr(lx[i], lr[i], 4 * tol_for(dtype, norm), f"L norm {norm}")


@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("n", [5, 45])
def test_batch_and_size_not_multiples_of_tiles(device, rng, batch, n):
    """n = 45 takes two 32-wide tiles per side, the second one mostly empty."""
    norms = rng.uniform(0.05, 8.0, size=batch)
    a = np.stack([matrix_with_norm(rng, n, v, "dissipative") for v in norms])
    a = rounded(a, mx.float32)
    x = to_np(mle.matrix_exp(to_mx(a, mx.float32), stream=device))
    ref = expm_ref(a)
    for i, v in enumerate(norms):
        assert_relerr(x[i], ref[i], tol_for(mx.float32, v), f"matrix {i}")


# Overscaling (expm::refine_squarings): non-normal matrices whose 1-norm asks
# for many more squarings than the norms of B^2 and B^3 do. Each squaring
# doubles the rounding errors of the approximant (and of the shift factor
# e^(mu 2^-s)), so the 1-norm's s leaves 2^(s - s') times the error of the
# refined s' (on the emulator, before the refinement: 2.5e-5 to 6e-4 for the
# cases below, the shift factor's rounding alone 1.2e-4 at s = 12; after it:
# at most 4.2e-7). The bound sits between the two.
OVERSCALING_TOL = 2e-6  # ~34 u
# n = 2 and 8 run the tiny kernels, 16 the fused one, 40 the predicated path
# (forward and Frechet, float32 and complex64).
OVERSCALING_NS = [2, 8, 16, 40]


def _entries(rng, shape, lo, hi, cplx):
    """Magnitudes uniform in [lo, hi], random signs (phases for complex)."""
    mag = rng.uniform(lo, hi, shape)
    if cplx:
        return mag * np.exp(2j * np.pi * rng.uniform(size=shape))
    return mag * rng.choice([-1.0, 1.0], shape)


def _flip(rng, n, cplx):
    """Upper triangular B = D + N: D = diag(1, -1, 1, ...), N (entries 1e2 to
    1e3; 1e4 at n = 2) nonzero only from the rows of D's +1 to the columns of
    its -1. Then D N + N D = 0 and N^2 = 0, so B^2 = I: ||B^2|| = 1 and
    ||B^3|| = ||B||, which asks for a third of the 1-norm's squarings, and
    exp(B) = cosh(1) I + sinh(1) B. At n = 2: [[1, b], [0, -1]]."""
    d = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    lo, hi = (1e4, 1e4) if n == 2 else (1e2, 1e3)
    pairs = np.triu((d[:, None] > 0) & (d[None, :] < 0), 1)
    return np.diag(d) + _entries(rng, (n, n), lo, hi, cplx) * pairs


def _nilpotent_shift(rng, n, cplx):
    """-I + N with N nonzero in the upper right block only (rows < n/2,
    columns >= n/2), ||N||_1 = 1e4: N^2 = 0, so after the trace shift B = N
    needs no squaring at all (the 1-norm: 12), and exp = e^-1 (I + N). At
    n = 2: the Jordan block [[-1, 1e4], [0, -1]]."""
    h = n // 2
    a = -np.eye(n, dtype=complex if cplx else float)
    block = _entries(rng, (h, n - h), 1.0, 2.0, cplx)
    a[:h, h:] = block * (1e4 / np.abs(block).sum(axis=0).max())
    return a


def _overscaling_batch(rng, n, dtype):
    """The two non-normal matrices and a matrix that needs no squaring (its
    decision is not refined), rounded to dtype, with closed-form references
    (SciPy for the third)."""
    cplx = dtype == mx.complex64
    flip = rounded(_flip(rng, n, cplx), dtype)
    shift = rounded(_nilpotent_shift(rng, n, cplx), dtype)
    small = rounded(matrix_with_norm(rng, n, 0.4, complex_=cplx), dtype)
    eye = np.eye(n)
    refs = [
        np.cosh(1.0) * eye + np.sinh(1.0) * flip,
        np.exp(-1.0) * (shift + 2 * eye),
        expm_ref(small),
    ]
    return np.stack([flip, shift, small]), np.stack(refs)


@pytest.mark.parametrize("dtype", [mx.float32, mx.complex64], ids=str)
@pytest.mark.parametrize("n", OVERSCALING_NS)
def test_overscaling_against_closed_forms(device, rng, n, dtype):
    a, ref = _overscaling_batch(rng, n, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert_relerr(x[:2], ref[:2], OVERSCALING_TOL, f"B^2 = I, N^2 = 0 at n={n}")
    assert_relerr(x[2], ref[2], tol_for(dtype, 0.4), f"unrefined at n={n}")


@pytest.mark.parametrize("dtype", [mx.float32, mx.complex64], ids=str)
@pytest.mark.parametrize("n", OVERSCALING_NS)
def test_overscaling_frechet(device, rng, n, dtype):
    """The derivative takes the refined s too: E scaled by 2^-s', dP2 and dP3
    formed from the scaled slots."""
    a, ref = _overscaling_batch(rng, n, dtype)
    cplx = dtype == mx.complex64
    e = rounded(
        rng.standard_normal(a.shape)
        + (1j * rng.standard_normal(a.shape) if cplx else 0),
        dtype,
    )
    x, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    xr, lr = frechet_ref(a, e)
    x, lx = to_np(x), to_np(lx)
    assert_relerr(x[:2], ref[:2], OVERSCALING_TOL, f"X at n={n}")
    assert_relerr(lx[:2], lr[:2], OVERSCALING_TOL, f"L at n={n}")
    assert_relerr(x[2], xr[2], tol_for(dtype, 0.4), f"unrefined X at n={n}")
    assert_relerr(lx[2], lr[2], 4 * tol_for(dtype, 0.4), f"unrefined L at n={n}")


# The second overscaling rule (expm::refine_squarings_sixth): non-normal
# matrices whose B^2 and B^3 are large and B^6 small, where the first rule
# still asks for 9 to 12 squarings and the 1-norm of B^6 for 0 or 1. Measured
# on the emulator: at most 1.3e-7 (X) and 3.0e-7 (L) with both rules; with
# the first alone, 2.6e-6 to 1.2e-4 for the Jordan blocks and 3.4e-6 to
# 3.6e-6 for the complex square-one blocks (the real ones, 1.8e-7 to 3.2e-7,
# are not told apart). The bound sits between the two.
SIXTH_TOL = 8e-7  # ~13 u
# Tiny, fused and predicated for every dtype, forward and Frechet. Powers of
# two: the kernels sum mu = tr(A) / n in float32 as the a_ii / n, exact for
# -I only then (at n = 40 the shift misses -1 by 4e-7 and B^6 is not 0).
SIXTH_NS = [8, 16, 64]


def _nilpotent_exp(m):
    """exp of a nilpotent matrix: its Taylor series, finite."""
    term = np.eye(m.shape[-1], dtype=m.dtype)
    total = term.copy()
    for k in range(1, m.shape[-1] + 1):
        term = term @ m / k
        total = total + term
    return total


def _permuted(rng, a):
    """P A P^T for a random permutation P: exact, and no longer triangular."""
    p = rng.permutation(a.shape[-1])
    return a[p][:, p]


def _jordan_blocks(rng, n, c, cplx):
    """-I + c N, N the shift within diagonal blocks of 6 (the last one
    shorter), permuted: after the trace shift B = c N, B^6 = 0 and
    ||B^3|| = |c|^3. exp(A) = e^-1 exp(B) and L(A, E) = e^-1
    [exp([[B, E], [0, B]])]_12, both finite sums (the block matrix is
    nilpotent too)."""
    c = c * np.exp(0.7j) if cplx else c
    b = np.zeros((n, n), dtype=complex if cplx else float)
    for i in range(n - 1):
        if i % 6 != 5:
            b[i, i + 1] = c
    return _permuted(rng, b - np.eye(n))


def _jordan_refs(a, e):
    n = a.shape[-1]
    b = a + np.eye(n)
    x = np.exp(-1.0) * _nilpotent_exp(b)
    big = np.block([[b, e], [np.zeros_like(b), b]])
    return x, np.exp(-1.0) * _nilpotent_exp(big)[:n, n:]


# z of _square_one: exact in float32, as are z b and z / b at b = 2^20.
SQUARE_ONE_B = 2.0**20


def _square_one(rng, n, cplx):
    """Blocks [[0, z b], [z / b, 0]] (b = 2^20, z = 1, or 1 + i for complex64),
    permuted: B^2 = z^2 I, so ||B^3|| = |z|^3 b while B^6 = z^6 I."""
    z = 1 + 1j if cplx else 1.0
    a = np.zeros((n, n), dtype=complex if cplx else float)
    for i in range(0, n - 1, 2):
        a[i, i + 1] = z * SQUARE_ONE_B
        a[i + 1, i] = z / SQUARE_ONE_B
    return _permuted(rng, a)


def _square_one_refs(a, e, cplx):
    """With A^2 = lam I: exp(A) = cosh(z) I + sinh(z) / z A, and the series
    L(A, E) = sum_k 1/k! sum_j A^j E A^(k-1-j) collects into
    alpha E + beta (A E + E A) + gamma A E A."""
    z = 1 + 1j if cplx else 1.0
    lam = z * z
    x = np.cosh(z) * np.eye(a.shape[-1]) + np.sinh(z) / z * a
    f = math.factorial
    alpha = sum((m + 1) * lam**m / f(2 * m + 1) for m in range(30))
    beta = sum(m * lam ** (m - 1) / f(2 * m) for m in range(1, 30))
    gamma = sum(m * lam ** (m - 1) / f(2 * m + 1) for m in range(1, 30))
    return x, alpha * e + beta * (a @ e + e @ a) + gamma * (a @ e @ a)


def _sixth_batch(rng, n, dtype):
    """Jordan blocks at c = 1e3 and 1e4 and square-one blocks, rounded to
    dtype (exactly: the references take the rounded matrices), names, and a
    function of E giving the references (X, L)."""
    cplx = dtype == mx.complex64
    names = ["jordan c=1e3", "jordan c=1e4", "square-one b=2^20"]
    mats = [
        rounded(_jordan_blocks(rng, n, 1e3, cplx), dtype),
        rounded(_jordan_blocks(rng, n, 1e4, cplx), dtype),
        rounded(_square_one(rng, n, cplx), dtype),
    ]

    def refs(e):
        pairs = [_jordan_refs(mats[0], e[0]), _jordan_refs(mats[1], e[1])]
        pairs.append(_square_one_refs(mats[2], e[2], cplx))
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    return names, np.stack(mats), refs


@pytest.mark.parametrize("dtype", [mx.float32, mx.complex64], ids=str)
@pytest.mark.parametrize("n", SIXTH_NS)
def test_sixth_power_overscaling(device, rng, n, dtype):
    names, a, refs = _sixth_batch(rng, n, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    xr, _ = refs(np.zeros_like(a))
    for i, name in enumerate(names):
        assert_relerr(x[i], xr[i], SIXTH_TOL, f"{name} at n={n}")


@pytest.mark.parametrize("dtype", [mx.float32, mx.complex64], ids=str)
@pytest.mark.parametrize("n", SIXTH_NS)
def test_sixth_power_overscaling_frechet(device, rng, n, dtype):
    """The derivative takes the final s: E scaled by it, and the derivatives
    of B^2, B^3, B^6 formed from the slots scaled for it."""
    names, a, refs = _sixth_batch(rng, n, dtype)
    cplx = dtype == mx.complex64
    e = rounded(
        rng.standard_normal(a.shape)
        + (1j * rng.standard_normal(a.shape) if cplx else 0),
        dtype,
    )
    x, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    xr, lr = refs(e)
    x, lx = to_np(x), to_np(lx)
    for i, name in enumerate(names):
        assert_relerr(x[i], xr[i], SIXTH_TOL, f"X {name} at n={n}")
        assert_relerr(lx[i], lr[i], SIXTH_TOL, f"L {name} at n={n}")
