"""Property tests (hypothesis): random batch shapes, sizes 1..12, norms over
eleven decades and the three compute dtypes, against SciPy in float64."""

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
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
    tol_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st

DTYPES = {"float32": mx.float32, "float64": mx.float64, "complex64": mx.complex64}


def _dtypes(device):
    """The dtypes the device computes (MLX has no float64 on the GPU; that it
    is rejected there is test_inputs.test_float64_on_gpu_raises)."""
    return sorted(k for k in DTYPES if device == mx.cpu or k != "float64")


@st.composite
def problems(draw, dtypes):
    dtype = draw(st.sampled_from(dtypes))
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    n = draw(st.integers(1, 12))
    log_norm = draw(st.floats(-9.0, 3.0))
    seed = draw(st.integers(0, 2**32 - 1))
    # Gaussian matrices only where exp(A) cannot overflow; beyond that a
    # dissipative matrix (large skew part) reaches the squaring regime safely.
    kind = (
        draw(st.sampled_from(["gauss", "dissipative"]))
        if log_norm < 0.6
        else ("dissipative")
    )
    return DTYPES[dtype], batch, n, 10.0**log_norm, kind, seed


def _build(dtype, batch, n, norm, kind, seed):
    rng = np.random.default_rng(seed)
    cplx = dtype == mx.complex64
    count = int(np.prod(batch)) if batch else 1
    if n == 1:  # 1 x 1: exp of a scalar, which must not overflow
        kind, norm = "gauss", min(norm, 4.0)
    mats = [matrix_with_norm(rng, n, norm, kind, complex_=cplx) for _ in range(count)]
    a = rounded(np.stack(mats).reshape(*batch, n, n), dtype)
    return a, rng


@settings(max_examples=60)
@given(data=st.data())
def test_matrix_exp_matches_scipy(device, data):
    problem = data.draw(problems(_dtypes(device)), label="problem")
    dtype, batch, n, norm, kind, seed = problem
    a, _ = _build(dtype, batch, n, norm, kind, seed)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert x.shape == a.shape
    tols = tol_cond(dtype, a)
    assert_relerr(
        x.reshape(-1, n, n), expm_ref(a).reshape(-1, n, n), tols, f"{problem}"
    )


@settings(max_examples=40)
@given(data=st.data())
def test_expm_frechet_matches_scipy(device, data):
    problem = data.draw(problems(_dtypes(device)), label="problem")
    dtype, batch, n, norm, kind, seed = problem
    a, rng = _build(dtype, batch, n, norm, kind, seed)
    e = rng.standard_normal(a.shape)
    if dtype == mx.complex64:
        e = e + 1j * rng.standard_normal(a.shape)
    e = rounded(e, dtype)
    x, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    xr, lr = frechet_ref(a, e)
    tols = tol_cond(dtype, a)
    tols_l = tol_cond(dtype, a, C_DERIV)
    assert_relerr(to_np(x).reshape(-1, n, n), xr.reshape(-1, n, n), tols, "exp")
    assert_relerr(to_np(lx).reshape(-1, n, n), lr.reshape(-1, n, n), tols_l, "L")


@settings(max_examples=40)
@given(data=st.data())
def test_inverse_property(device, data):
    problem = data.draw(problems(_dtypes(device)), label="problem")
    """exp(A) exp(-A) = I, relative to ||exp(A)|| ||exp(-A)||."""
    dtype, batch, n, norm, kind, seed = problem
    a, _ = _build(dtype, batch, n, norm, kind, seed)
    xp = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    xm = to_np(mle.matrix_exp(to_mx(-a, dtype), stream=device))
    err = np.linalg.norm(xp @ xm - np.eye(n), axis=(-2, -1))
    growth = np.linalg.norm(xp, axis=(-2, -1)) * np.linalg.norm(xm, axis=(-2, -1))
    assert np.all(err <= 2 * growth * tol_for(dtype, norm)), (err / growth, problem)
