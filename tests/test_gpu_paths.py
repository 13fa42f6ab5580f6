"""Sizes, batches and norms that cross every code path of the backends.

Marked cuda_paths: on a build with CUDA kernels every test here also runs
with each CUDA path forced through the backend's test hooks (conftest.py:
GEMM path for every size, tensor cores from n = 64 or never, the Hopper
wgmma path from n c = 512 or never). On the CUDA backend n <= 64 takes a
fused kernel (one block a matrix; padded sizes 4, 8, 16, 32, 64), n = 65..128
the fused float kernel on a cluster of two blocks (Hopper), larger n the GEMM
path (128 x 128 tiles from n = 300 in a batch of 16), and a single matrix
with n c >= 2048 the wgmma path. On the CPU these are ordinary sizes.
References: SciPy in float64/complex128 on the exactly rounded inputs.
"""

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import pytest
from expm_testutils import (
    C_DERIV,
    assert_relerr,
    expm_ref,
    frechet_ref,
    matrix_with_norm,
    rounded,
    to_mx,
    to_np,
    tol_cond,
)

pytestmark = pytest.mark.cuda_paths

# Every degree and, up to 3000, up to 10 squarings in one batch.
NORMS = [1e-9, 1e-4, 0.03, 0.4, 1.2, 2.5, 4.0, 40.0, 3000.0]
SIZES = [1, 2, 3, 5, 8, 16, 17, 31, 32, 33, 48, 64, 65, 100, 128, 129, 200, 300]
DTYPES = [mx.float32, mx.complex64]


# Two targets force products outside their design range, so their bounds
# carry a factor. gpu-tc64: 3xTF32 tensor-core products from n = 64, where
# the default path uses FP32 FMA; 3xTF32 rounds each operand to ~22 bits, and
# at n = 96..256 its error was 4.4-6.5e-5 against 0.6-1.3e-5 for FP32 FMA
# (1-norm 300; NOTES.md, "3xTF32 from n = 512"). gpu-simt: FP32 FMA products
# from n = 512, where the default path uses 3xTF32; their accumulation error
# grows with n (n = 1024, complex64, 1-norm 3000: 2.4x the default bound on
# an H200).
def _path_factor(target_id, n):
    if target_id == "gpu-tc64":
        return 8.0
    if target_id == "gpu-simt" and n >= 512:
        return 4.0
    return 1.0


@pytest.fixture
def tol(request):
    """tol_cond, widened on a target whose products round more coarsely."""
    target = request.node.callspec.params["device"]
    return lambda dtype, a, *c: (
        _path_factor(target.id, np.shape(a)[-1]) * tol_cond(dtype, a, *c)
    )


def _batch(rng, count, n, dtype, norms):
    """count matrices with 1-norms cycling through norms: Gaussian up to 40,
    dissipative (a large skew part: exp stays of order one) beyond."""
    cplx = dtype == mx.complex64
    mats = []
    for i in range(count):
        nu = norms[i % len(norms)]
        kind = "gauss" if nu <= 40 else "dissipative"
        mats.append(matrix_with_norm(rng, n, nu, kind, complex_=cplx))
    return rounded(np.stack(mats), dtype)


def _mixed_norms_case(device, rng, dtype, n, tol):
    """One batch with every degree and many squarings, each matrix against
    its own reference; expm_frechet's exp(A) and L(A, E) too."""
    # exp(3000) of a 1 x 1 matrix overflows: there the norms stop at 40.
    norms = NORMS if n > 1 else NORMS[:-1]
    count = len(norms) if n <= 129 else 4 if n < 300 else 16
    if count < len(norms):
        norms = [0.03, 2.5, 40.0, 3000.0]
    a = _batch(rng, count, n, dtype, norms)
    e = _batch(rng, count, n, dtype, [1.0])
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    xf, lf = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    xr, lr = frechet_ref(a, e)
    bound = tol(dtype, a)
    assert_relerr(x, xr, bound, f"matrix_exp n={n}")
    assert_relerr(to_np(xf), xr, bound, f"expm_frechet X n={n}")
    assert_relerr(to_np(lf), lr, tol(dtype, a, C_DERIV), f"L n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [n for n in SIZES if n <= 64])
def test_mixed_norms_small(device, rng, dtype, n, tol):
    _mixed_norms_case(device, rng, dtype, n, tol)


@pytest.mark.gpu_only  # on the CPU these sizes take no other path
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [n for n in SIZES if n > 64])
def test_mixed_norms_large(device, rng, dtype, n, tol):
    _mixed_norms_case(device, rng, dtype, n, tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [4, 40, 70])
def test_nan_inf_isolation(device, rng, dtype, n, tol):
    """A NaN and an Inf matrix give all-NaN results (exp and L); the finite
    one between them is right."""
    a = _batch(rng, 3, n, dtype, [1.0, 5.0, 0.5])
    a[0, 1, 2] = np.nan
    a[2, 0, 0] = np.inf
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    xf, lf = mle.expm_frechet(to_mx(a, dtype), to_mx(a, dtype), stream=device)
    xf, lf = to_np(xf), to_np(lf)
    for i in (0, 2):
        assert np.isnan(x[i]).all() and np.isnan(xf[i]).all()
        assert np.isnan(lf[i]).all()
    assert_relerr(x[1], expm_ref(a[1]), tol(dtype, a[1]), "finite neighbour")
    _, lr = frechet_ref(a[1], a[1])
    assert_relerr(lf[1], lr, tol(dtype, a[1], C_DERIV), "L of the neighbour")


@pytest.mark.gpu_only  # the CPU runs these sizes in test_forward
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [512, 514, 1024])
def test_single_large_matrix_paths(device, rng, dtype, n, tol):
    """One matrix (the wgmma path for n c >= 2048 with n c % 4 == 0, mma.sync
    for n = 514 float) with no squaring, a few (norm 40: ~4) and more than
    the first steps of that path (3000: ~10); expm_frechet for n < 1024 at
    norms 4 and 40; a NaN anywhere gives all NaN."""
    for norm in (0.4, 4.0, 40.0, 3000.0):
        a = _batch(rng, 1, n, dtype, [norm])
        x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
        assert_relerr(x, expm_ref(a), tol(dtype, a), f"norm {norm}")
        if n < 1024 and norm in (4.0, 40.0):
            e = _batch(rng, 1, n, dtype, [1.0])
            xf, lf = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
            xr, lr = frechet_ref(a, e)
            assert_relerr(to_np(xf), xr, tol(dtype, a), f"X, norm {norm}")
            tl = tol(dtype, a, C_DERIV)
            assert_relerr(to_np(lf), lr, tl, f"L, norm {norm}")
    a = _batch(rng, 1, n, dtype, [1.0])
    a[0, 3, 5] = np.nan
    assert np.isnan(to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))).all()
