"""Two paths of the Metal kernels (metal/launch_plan.h): one fused
threadgroup per matrix while the matrix and its products fit in 32 KB of
threadgroup memory, a predicated list of dispatches beyond (the tiny kernels
of n <= 8: test_tiny.py). The cases sit at the border between the paths, mix
every degree band with squarings and NaN in one batch (each matrix decides on
the device), and use batch and matrix sizes that are no multiple of the
kernels' tiles.

They run on every build against SciPy; with the Metal emulator
(``_ext.backend == "metal-emulator"``) or Metal they run the Metal kernels.
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
