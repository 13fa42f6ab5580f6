"""Forward values of matrix_exp against independent references.

References: SciPy's expm in float64/complex128 (on the exactly rounded input)
for float32/complex64, mpmath.expm at 32 or 50 digits for float64 (SciPy's own
error, up to ~2e3 u, would hide a float64 bug), a float64 Taylor series of
exp(A) - I for tiny norms (where only the off-diagonal entries carry the
low-order terms), closed forms and identities.
"""

import mlx.core as mx
import mlx_linalg_ext as mle
import mpmath
import numpy as np
import pytest
from expm_testutils import (
    THETA32,
    THETA64,
    U32,
    U64,
    assert_offdiag_relerr,
    assert_relerr,
    expm_mp,
    expm_ref,
    frechet_ref,
    matrix_with_norm,
    onenorm,
    relerr,
    rounded,
    taylor_expm1,
    to_mx,
    to_np,
    tol_cond,
    tol_for,
)


def _band_norms(thetas):
    """Norms inside every degree band: below, just under and just over each
    threshold (where the degree switches), then the scaling-and-squaring
    regime up to 1e4."""
    norms = {1e-9}
    for t in thetas:
        norms.update({0.5 * t, 0.97 * t, 1.03 * t})
    norms.update({5.0, 10.0, 100.0, 1e3, 1e4})
    return sorted(norms)


def _check_against_refs(x, a, dtype, what):
    """Each matrix of x = exp(a) within tolerance of SciPy (float32/complex64)
    or 32-digit mpmath (float64) and, for tiny norms, its off-diagonal part
    within tolerance of the Taylor series."""
    r = expm_mp(a) if dtype == mx.float64 else expm_ref(a)
    norms = np.atleast_1d(onenorm(a)).ravel()
    tols = tol_cond(dtype, a)
    n = x.shape[-1]
    assert_relerr(x.reshape(-1, n, n), r.reshape(-1, n, n), tols, what)
    small = norms < 0.1
    if small.any():
        a2 = a.reshape(-1, *a.shape[-2:])[small]
        x2 = x.reshape(-1, *x.shape[-2:])[small]
        ref = np.stack([np.eye(a.shape[-1]) + taylor_expm1(m) for m in a2])
        assert_offdiag_relerr(x2, ref, tols[small], what + " (off-diagonal)")


def _band_case(device, rng, norm, kind, dtype):
    # n < 4 and n >= 4 take different product paths on the CPU.
    for n in (2, 3, 6, 9):
        a = np.stack([matrix_with_norm(rng, n, norm, kind) for _ in range(3)])
        a = rounded(a, dtype)
        x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
        _check_against_refs(x, a, dtype, f"{dtype} n={n} norm {norm:.3g} {kind}")


KINDS = ["gauss", "stochastic", "neg_stochastic", "dissipative"]


def _band_params(norms):
    # Only dissipative matrices beyond norm 4, where exp of the others may
    # overflow.
    return [
        pytest.param(nu, kind, id=f"{nu:.3g}-{kind}")
        for nu in norms
        for kind in KINDS
        if kind == "dissipative" or nu <= 4
    ]


@pytest.mark.parametrize("norm,kind", _band_params(_band_norms(THETA32)))
def test_degree_bands_float32(device, rng, norm, kind):
    _band_case(device, rng, norm, kind, mx.float32)


@pytest.mark.float64
@pytest.mark.parametrize("norm,kind", _band_params([1e-17, *_band_norms(THETA64)]))
def test_degree_bands_float64(device, rng, norm, kind):
    _band_case(device, rng, norm, kind, mx.float64)


@pytest.mark.parametrize("norm", [1e-9, 3e-4, 0.03, 0.4, 1.2, 2.5, 7.0, 60.0])
def test_degree_bands_complex64(device, rng, norm):
    kind = "gauss" if norm < 4 else "dissipative"
    a = np.stack(
        [matrix_with_norm(rng, 5, norm, kind, complex_=True) for _ in range(3)]
    )
    a = rounded(a, mx.complex64)
    x = to_np(mle.matrix_exp(to_mx(a, mx.complex64), stream=device))
    assert x.dtype == np.complex128 and np.abs(x.imag).max() > 0
    _check_against_refs(x, a, mx.complex64, f"complex64 norm {norm:.3g}")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
def test_mixed_batch_every_branch(device, rng, dtype):
    """One batch holding a matrix from every degree band and several scaling
    levels: every element must match its own reference (the degree is chosen
    per matrix, not for the batch)."""
    thetas = THETA32 if dtype == mx.float32 else THETA64
    norms = [0.9 * thetas[0], 1e-9 if dtype == mx.float32 else 1e-17]
    norms += [0.9 * t for t in thetas[1:]] + [0.5 * t for t in thetas[1:]]
    norms += [1.1 * thetas[-1], 20.0, 300.0, 5e3]
    order = rng.permutation(len(norms))
    mats = []
    for i in order:
        nu = norms[i]
        kind = "gauss" if nu < 4 else "dissipative"
        mats.append(matrix_with_norm(rng, 5, nu, kind))
    a = rounded(np.stack(mats).reshape(2, -1, 5, 5), dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert x.shape == a.shape
    _check_against_refs(x, a, dtype, f"mixed batch {dtype}")
    # The same matrices one at a time give the same values.
    flat = a.reshape(-1, 5, 5)
    for i in range(flat.shape[0]):
        solo = to_np(mle.matrix_exp(to_mx(flat[i], dtype), stream=device))
        np.testing.assert_allclose(
            x.reshape(-1, 5, 5)[i], solo, rtol=tol_for(dtype), atol=0
        )


@pytest.mark.parametrize("n", [65, 100, 128])
def test_batch_of_larger_matrices_every_branch(device, rng, n):
    """48 float32 matrices of size 65..128 from every degree band and several
    scaling levels, with a NaN and an Inf matrix among them: each matches its
    own reference and the non-finite ones stay in their own result. On a
    Hopper GPU this takes the fused kernel that splits each matrix over a
    cluster of two blocks (n > 64), elsewhere the GEMM path."""
    norms = _band_norms(THETA32)
    norms = [norms[i % len(norms)] for i in range(46)]
    mats = [
        matrix_with_norm(rng, n, nu, "gauss" if nu < 4 else "dissipative")
        for nu in norms
    ]
    a = rounded(np.stack(mats), mx.float32)
    bad = np.stack([a[0], a[1]])
    bad[0, 3, 5] = np.nan
    bad[1, n - 1, 0] = np.inf
    a = np.concatenate([a[:20], bad, a[20:]])
    x = to_np(mle.matrix_exp(to_mx(a, mx.float32), stream=device))
    assert np.isnan(x[20]).all() and np.isnan(x[21]).all()
    finite = np.r_[0:20, 22:48]
    assert np.isfinite(x[finite]).all()
    _check_against_refs(x[finite], a[finite], mx.float32, f"batch of n={n}")


# --- closed forms -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64], ids=str)
def test_diagonal(device, rng, dtype):
    d = rng.uniform(-8, 8, size=(4, 7))
    if dtype == mx.complex64:
        d = d + 1j * rng.uniform(-20, 20, size=(4, 7))
    d = rounded(d, dtype)
    a = np.zeros((4, 7, 7), dtype=d.dtype)
    idx = np.arange(7)
    a[:, idx, idx] = d
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    expected = np.zeros_like(a)
    expected[:, idx, idx] = np.exp(d)
    # A diagonal matrix stays diagonal: off-diagonal entries exactly zero.
    off = ~np.eye(7, dtype=bool)
    assert np.all(x[:, off] == 0)
    tols = [tol_for(dtype, nu) for nu in onenorm(a)]
    assert_relerr(x, expected, tols, "diagonal")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64], ids=str)
@pytest.mark.parametrize("x", [-10.0, -5.0, -2.9, -2.5, -1.0, 1.0, 2.9, 5.0])
def test_scalar_multiple_of_identity(device, dtype, x):
    """exp(x I) = e^x I. The relative condition number of exp here is |x|, so
    the bound is the usual tol_for(dtype, |x|) (24 u |x| in float32). It is
    attainable: SciPy's float32 expm is within 2.3 u at x = -10, and this op
    applied to A - mu I with mu = tr(A)/n (the trace shift of Higham 2005)
    stays within 1.7 u ||A||_1 on the 2 x 2 negative stochastic matrices where
    the op alone reaches 130 u ||A||_1 (test_degree_bands_float32)."""
    n = 3
    a = x * np.eye(n)
    got = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert_relerr(got, np.exp(x) * np.eye(n), tol_for(dtype, abs(x)), f"exp({x} I)")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
def test_nilpotent_moler_van_loan(device, dtype):
    """Strictly triangular example of Moler & Van Loan ("Nineteen dubious ways",
    2003): the exponential is the finite Taylor sum I + A + A^2/2 + A^3/6,
    here with integer entries. A / 2^s and its powers are exact dyadic
    numbers; only the approximant's coefficients round, so each entry is
    within a few ulps (the CPU gets them exactly) and the zeros stay zero."""
    a = np.diag([6.0, 6.0, 6.0], -1)
    expected = np.array(
        [[1, 0, 0, 0], [6, 1, 0, 0], [18, 6, 1, 0], [36, 18, 6, 1]], dtype=float
    )
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert np.all(x[expected == 0] == 0), x
    u = U32 if dtype == mx.float32 else U64
    np.testing.assert_allclose(x, expected, rtol=4 * u, atol=0)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize("scale", [1e-3, 0.3, 2.0, 30.0])
def test_nilpotent_random(device, rng, dtype, scale):
    n = 8
    a = rounded(np.triu(rng.standard_normal((3, n, n)), 1) * scale, dtype)
    expected = np.broadcast_to(np.eye(n), a.shape).copy()
    term = expected.copy()
    for k in range(1, n):  # A^n = 0
        term = term @ a / k
        expected += term
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert np.all(np.tril(x, -1) == 0), "lower triangle must stay exactly zero"
    # The lower-triangular zeros and unit diagonal are exact; the accuracy of
    # the upper part is relative to the size of the result.
    tol = (30 * U32 if dtype == mx.float32 else 1e-14) * max(1, scale)
    assert_relerr(x, expected, tol, f"nilpotent scale {scale}")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize("t", [1e-8, 0.01, 0.5, 1.0, np.pi, 10.0, 123.0, 1e4])
def test_rotation_generator(device, dtype, t):
    t = float(rounded(np.array(t), dtype))
    a = np.array([[0.0, -t], [t, 0.0]])
    expected = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    # The error of exp of a rotation generator grows like t * u (squarings).
    tol = (8 * U32 if dtype == mx.float32 else 4e-15) * max(1.0, t)
    np.testing.assert_allclose(x, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize(
    "alpha,beta", [(0.0, 1.0), (1.0, 1.0), (-3.0, 7.5), (2.5, -1e-3), (0.1, 50.0)]
)
def test_jordan_block_2x2(device, dtype, alpha, beta):
    """[[a, b], [0, a]] -> e^a [[1, b], [0, 1]] (Moler & Van Loan's
    non-diagonalizable example for a = b = 1)."""
    a = np.array([[alpha, beta], [0.0, alpha]])
    expected = np.exp(alpha) * np.array([[1.0, beta], [0.0, 1.0]])
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert x[1, 0] == 0
    tol = tol_for(dtype, onenorm(a))
    assert_relerr(x, expected, tol, "Jordan block")


def test_complex_diagonal_phases(device):
    theta = np.linspace(-50, 50, 9)
    a = np.diag(1j * theta).astype(np.complex64)
    x = to_np(mle.matrix_exp(to_mx(a, mx.complex64), stream=device))
    np.testing.assert_allclose(np.diag(x), np.exp(1j * theta), atol=60 * 8 * U32)


# --- classic test matrices vs mpmath ----------------------------------------


def _mp_expm(a):
    return expm_mp(a, dps=50)


def _ward4():
    a = np.diag(np.ones(9), 1)
    a[9, 0] = 1e-10
    return a


CLASSIC = {
    # Moler & Van Loan, "Nineteen dubious ways to compute the exponential of
    # a matrix" (SIAM Review 1978; 2003), the example with eigenvalues -1, -17.
    "moler_van_loan": np.array([[-49.0, 24.0], [-64.0, 31.0]]),
    # Ward 1977 (SIAM J. Numer. Anal. 14:600-610), test 1: defective,
    # eigenvalues 3, 3, 6.
    "ward1": np.array([[4.0, 2.0, 0.0], [1.0, 4.0, 1.0], [1.0, 1.0, 4.0]]),
    # Ward test 2: symmetric, eigenvalues 20, 30, 40.
    "ward2": np.array(
        [
            [29.87942128909879, 0.7815750847907159, -2.289519314033932],
            [0.7815750847907159, 25.72656945571064, 8.680737820540137],
            [-2.289519314033932, 8.680737820540137, 34.39400925519054],
        ]
    ),
    # Ward test 3: eigenvalues -1, -2, -20.
    "ward3": np.array(
        [[-131.0, 19.0, 18.0], [-390.0, 56.0, 54.0], [-387.0, 57.0, 52.0]]
    ),
    # Ward test 4: a 10 x 10 Forsythe matrix (badly conditioned eigenvectors).
    "ward4": _ward4(),
    # Laub's example (SIAM Review 52:779, 2010), from Burkardt's collection
    # of expm test matrices: hard for the plain Taylor series.
    "laub": np.array([[0.0, 1.0], [-39.0, -40.0]]),
    # NAG F01ECF example, also in Burkardt's collection.
    "nag_f01ecf": np.array(
        [
            [1.0, 2.0, 2.0, 2.0],
            [3.0, 1.0, 1.0, 2.0],
            [3.0, 2.0, 1.0, 2.0],
            [3.0, 3.0, 3.0, 1.0],
        ]
    ),
}


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_matrices(device, dtype, name):
    a = rounded(CLASSIC[name], dtype)
    expected = _mp_expm(a)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert_relerr(x, expected, tol_for(dtype, onenorm(a)), name)


def test_moler_badly_scaled_float64():
    """Moler's badly scaled example (Cleve's Corner, "A balancing act for the
    matrix exponential", 2012). Without balancing, scaling and squaring loses
    accuracy here (34 squarings); PyTorch's matrix_exp gives the same float64
    result. We measured a normwise error of 7e-5 and hold it under 1e-3."""
    a = np.array(
        [[0.0, -2e10 - 2e8 / 3, 200 / 3], [1e-8, -3.0, 0.0], [0.0, 2e10, -200 / 3]]
    )
    expected = _mp_expm(a)
    x = to_np(mle.matrix_exp(to_mx(a, mx.float64), stream=mx.cpu))
    assert np.all(np.isfinite(x))
    assert_relerr(x, expected, 1e-3, "Moler badly scaled")


@pytest.mark.parametrize(
    "n,norm", [(3, 1e-5), (4, 0.04), (4, 0.25), (5, 0.9), (3, 6.0)]
)
def test_random_float64_vs_mpmath(rng, n, norm):
    """A few random float64 matrices against 50-digit mpmath."""
    a = matrix_with_norm(rng, n, norm)
    expected = _mp_expm(a)
    x = to_np(mle.matrix_exp(to_mx(a, mx.float64), stream=mx.cpu))
    assert_relerr(x, expected, tol_for(mx.float64, norm), f"norm {norm}")
    if norm < 0.1:
        with mpmath.workdps(50):
            m = mpmath.matrix(a.tolist())
            em1 = mpmath.expm(m) - mpmath.eye(n)
            em1 = np.array(em1.tolist(), dtype=np.complex128).real
        assert_offdiag_relerr(x, em1 + np.eye(n), tol_for(mx.float64), "offdiag")


# --- identities -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64], ids=str)
@pytest.mark.parametrize("norm", [0.01, 0.5, 2.0, 8.0])
def test_inverse_identity(device, rng, dtype, norm):
    """exp(A) exp(-A) = I."""
    cplx = dtype == mx.complex64
    a = np.stack([matrix_with_norm(rng, 6, norm, complex_=cplx) for _ in range(4)])
    a = rounded(a, dtype)
    xa = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    xm = to_np(mle.matrix_exp(to_mx(-a, dtype), stream=device))
    prod = xa @ xm
    # Error of the product ~ ||e^A|| ||e^-A|| times the relative error of each.
    growth = np.linalg.norm(xa, axis=(-2, -1)) * np.linalg.norm(xm, axis=(-2, -1))
    err = np.linalg.norm(prod - np.eye(6), axis=(-2, -1))
    assert np.all(err <= 2 * growth * tol_for(dtype, norm)), err / growth


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64], ids=str)
def test_determinant_is_exp_trace(device, rng, dtype):
    cplx = dtype == mx.complex64
    a = np.stack([matrix_with_norm(rng, 5, nu, complex_=cplx) for nu in (0.1, 1, 3)])
    a = rounded(a, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    det = np.linalg.det(x)
    expected = np.exp(np.trace(a, axis1=-2, axis2=-1))
    rtol = 200 * U32 if dtype != mx.float64 else 1e-13
    np.testing.assert_allclose(det, expected, rtol=rtol)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize("norm", [0.3, 3.0, 50.0, 2000.0])
def test_skew_symmetric_gives_orthogonal(device, rng, dtype, norm):
    k = rng.standard_normal((4, 7, 7))
    k = k - np.swapaxes(k, -1, -2)
    k *= norm / onenorm(k)[:, None, None]
    k = rounded(k, dtype)
    q = to_np(mle.matrix_exp(to_mx(k, dtype), stream=device))
    eye = np.eye(7)
    err = np.abs(np.swapaxes(q, -1, -2) @ q - eye).max()
    assert err <= tol_for(dtype, norm), err
    np.testing.assert_allclose(np.linalg.det(q), 1.0, atol=7 * tol_for(dtype, norm))
    assert_relerr(q, expm_ref(k), tol_for(dtype, norm), "skew")


@pytest.mark.parametrize("norm", [0.3, 3.0, 50.0])
def test_i_hermitian_gives_unitary(device, rng, norm):
    h = rng.standard_normal((3, 6, 6)) + 1j * rng.standard_normal((3, 6, 6))
    h = h + np.conj(np.swapaxes(h, -1, -2))
    a = 1j * h * (norm / onenorm(h)[:, None, None])
    a = rounded(a, mx.complex64)
    u = to_np(mle.matrix_exp(to_mx(a, mx.complex64), stream=device))
    err = np.abs(np.conj(np.swapaxes(u, -1, -2)) @ u - np.eye(6)).max()
    assert err <= tol_for(mx.complex64, norm), err
    assert_relerr(u, expm_ref(a), tol_for(mx.complex64, norm), "i*Hermitian")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64], ids=str)
def test_commutes_with_a(device, rng, dtype):
    cplx = dtype == mx.complex64
    a = np.stack([matrix_with_norm(rng, 6, nu, complex_=cplx) for nu in (0.05, 1, 4)])
    a = rounded(a, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    comm = a @ x - x @ a
    scale = np.linalg.norm(a, axis=(-2, -1)) * np.linalg.norm(x, axis=(-2, -1))
    rel = np.linalg.norm(comm, axis=(-2, -1)) / scale
    assert np.all(rel <= 4 * tol_for(dtype, 4.0)), rel


# --- transforms that do not differentiate -----------------------------------


def test_compile_matches_eager(device, rng):
    a = mx.array(rng.standard_normal((3, 6, 6)).astype(np.float32))
    compiled = mx.compile(lambda x: mle.matrix_exp(x, stream=device))
    eager = mle.matrix_exp(a, stream=device)
    got = compiled(a)
    np.testing.assert_array_equal(np.array(got), np.array(eager))
    assert_relerr(to_np(got), expm_ref(to_np(a)), tol_for(mx.float32, 20), "compile")
    # A new shape retraces, still correct.
    b = mx.array(rng.standard_normal((2, 3, 3)).astype(np.float32))
    assert_relerr(to_np(compiled(b)), expm_ref(to_np(b)), tol_for(mx.float32, 20), "")


def test_compile_inside_larger_graph(device, rng):
    """exp(A) composed with other ops and with expm_frechet under compile."""

    def f(a, e):
        x, lx = mle.expm_frechet(a * 0.5, e, stream=device)
        return mx.matmul(x, x) + lx, mle.matrix_exp(a, stream=device)

    a = mx.array(rng.standard_normal((2, 5, 5)).astype(np.float32) * 0.7)
    e = mx.array(rng.standard_normal((2, 5, 5)).astype(np.float32))
    cf = mx.compile(f)
    got = cf(a, e)
    eager = f(a, e)
    for g, h in zip(got, eager):
        np.testing.assert_array_equal(np.array(g), np.array(h))
    a64, e64 = to_np(a), to_np(e)
    x_half, l_half = frechet_ref(a64 * 0.5, e64)
    assert_relerr(to_np(got[0]), x_half @ x_half + l_half, 1e-5, "compiled sum")
    assert_relerr(to_np(got[1]), expm_ref(a64), 1e-5, "compiled exp")


def test_async_eval(device, rng):
    a = rng.standard_normal((4, 8, 8)) * 0.3
    x = mle.matrix_exp(to_mx(a, mx.float32), stream=device)
    y = mle.matrix_exp(to_mx(2 * a, mx.float32), stream=device)
    mx.async_eval(x, y)
    ra = rounded(a, mx.float32)
    assert_relerr(to_np(x), expm_ref(ra), tol_for(mx.float32, 8), "async x")
    assert_relerr(to_np(y), expm_ref(2 * ra), tol_for(mx.float32, 16), "async y")


def test_stream_context(device, rng):
    a = rng.standard_normal((2, 4, 4)).astype(np.float32)
    with mx.stream(device):
        x = mle.matrix_exp(mx.array(a))
        _, lx = mle.expm_frechet(mx.array(a), mx.array(a))
    assert_relerr(to_np(x), expm_ref(a), tol_for(mx.float32, 10), "stream ctx")
    # L(A, A) = A exp(A) since A commutes with itself.
    ref = a.astype(np.float64) @ expm_ref(a)
    assert_relerr(to_np(lx), ref, 5 * tol_for(mx.float32, 10), "L(A, A)")


def test_large_matrix(device, rng):
    """A large matrix (n = 160): products big enough to thread inside BLAS."""
    a = matrix_with_norm(rng, 160, 30.0, "dissipative")
    a = rounded(a, mx.float32)
    x = to_np(mle.matrix_exp(to_mx(a, mx.float32), stream=device))
    assert relerr(x, expm_ref(a)) <= tol_for(mx.float32, 30.0)


@pytest.mark.parametrize(
    "dtype,n", [(mx.float32, 2048), (mx.complex64, 1024)], ids=["f32", "c64"]
)
def test_single_large_matrix(device, rng, dtype, n):
    """One large matrix (n c >= 2048 floats per row: the GPU's Hopper wgmma
    path) with no squaring, a few, and more than that path runs itself (1-norm
    60: about 5), then the Frechet derivative; against SciPy in float64."""
    cplx = dtype == mx.complex64
    for norm, kind in ((0.5, "gauss"), (4.0, "gauss"), (60.0, "dissipative")):
        a = rounded(matrix_with_norm(rng, n, norm, kind, complex_=cplx), dtype)
        x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
        assert_relerr(x, expm_ref(a), tol_for(dtype, norm), f"norm {norm}")
    a = rounded(matrix_with_norm(rng, n, 4.0, complex_=cplx), dtype)
    e = rounded(matrix_with_norm(rng, n, 1.0, complex_=cplx), dtype)
    xr, lr = frechet_ref(a, e)
    x, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    assert_relerr(to_np(x), xr, tol_for(dtype, 4.0), "frechet X")
    assert_relerr(to_np(lx), lr, 4 * tol_for(dtype, 4.0), "frechet L")
