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
and B^3 lower) check every Metal path against closed forms, and every
other backend with them.
"""

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
