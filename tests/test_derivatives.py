"""Derivatives: jvp, vjp, grad, second order, expm_frechet and vmap.

References: scipy.linalg.expm_frechet in float64/complex128; second Frechet
derivatives from the block formula D2 exp(A)[E, F] = B(E, F) + B(F, E), where
B(E, F) is the top-right block of exp([[A, E, 0], [0, A, F], [0, 0, A]])
(Mathias 1996; Higham, "Functions of Matrices", Thm 3.6 generalised);
central finite differences of SciPy in float64.
"""

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import pytest
import scipy.linalg as sla
from expm_testutils import (
    C_DERIV,
    U32,
    U64,
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

DTYPES = [mx.float32, mx.float64, mx.complex64]
NORMS = [1e-8, 1e-6, 0.03, 0.4, 2.0, 10.0, 150.0]  # 1e-8: degree 1 in float32


def _mat(rng, n, norm, dtype, batch=()):
    cplx = dtype == mx.complex64
    kind = "gauss" if norm < 4 else "dissipative"
    mats = [
        matrix_with_norm(rng, n, norm, kind, complex_=cplx)
        for _ in range(int(np.prod(batch)))
    ]
    return rounded(np.stack(mats).reshape(*batch, n, n), dtype)


def _dir(rng, shape, dtype):
    d = rng.standard_normal(shape)
    if dtype == mx.complex64:
        d = d + 1j * rng.standard_normal(shape)
    return rounded(d, dtype)


def _adj(a):
    return np.conj(np.swapaxes(a, -1, -2))


def _block13(a, e, f):
    """Top-right block of exp([[A, E, 0], [0, A, F], [0, 0, A]])."""
    n = a.shape[-1]
    z = np.zeros_like(a)
    big = np.block([[a, e, z], [z, a, f], [z, z, a]])
    return sla.expm(big)[:n, 2 * n :]


def _d2exp(a, e, f):
    """Second Frechet derivative of exp at a in directions e and f."""
    return _block13(a, e, f) + _block13(a, f, e)


def _expm(device):
    return lambda a: mle.matrix_exp(a, stream=device)


# --- first order -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_jvp_is_frechet(device, rng, dtype, norm):
    a = _mat(rng, 5, norm, dtype, (3,))
    e = _dir(rng, a.shape, dtype)
    (out,), (tan,) = mx.jvp(_expm(device), [to_mx(a, dtype)], [to_mx(e, dtype)])
    xr, lr = frechet_ref(a, e)
    assert out.dtype == dtype and tan.dtype == dtype
    assert_relerr(to_np(out), xr, tol_cond(dtype, a), "primal")
    assert_relerr(to_np(tan), lr, tol_cond(dtype, a, C_DERIV), "jvp")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_vjp_is_adjoint_frechet(device, rng, dtype, norm):
    """vjp with cotangent G is L(A^H, G): MLX's convention (as Matmul::vjp,
    which conjugates complex operands)."""
    a = _mat(rng, 5, norm, dtype, (3,))
    g = _dir(rng, a.shape, dtype)
    (out,), (cot,) = mx.vjp(_expm(device), [to_mx(a, dtype)], [to_mx(g, dtype)])
    _, lr = frechet_ref(_adj(a), g)
    assert_relerr(to_np(out), expm_ref(a), tol_cond(dtype, a), "primal")
    assert_relerr(to_np(cot), lr, tol_cond(dtype, a, C_DERIV), "vjp")


def test_complex_vjp_is_not_plain_transpose(rng):
    """The complex vjp uses A^H, not A^T: the two references differ a lot, and
    ours must match the conjugated one (guards the convention itself)."""
    a = _mat(rng, 4, 1.0, mx.complex64)
    g = _dir(rng, a.shape, mx.complex64)
    _, (cot,) = mx.vjp(
        _expm(mx.cpu), [to_mx(a, mx.complex64)], [to_mx(g, mx.complex64)]
    )
    conj_ref = sla.expm_frechet(_adj(a), g)[1]
    plain_ref = sla.expm_frechet(a.T, g)[1]
    assert np.linalg.norm(conj_ref - plain_ref) > 0.1 * np.linalg.norm(conj_ref)
    assert_relerr(to_np(cot), conj_ref, 2 * tol_for(mx.complex64, 1.0), "vjp")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize("norm", [0.01, 0.5, 3.0, 40.0])
def test_grad_of_real_loss(device, rng, dtype, norm):
    a = _mat(rng, 6, norm, dtype, (2,))
    w = _dir(rng, a.shape, dtype)
    wm = to_mx(w, dtype)

    def loss(x):
        return mx.sum(wm * mle.matrix_exp(x, stream=device))

    value, grad = mx.value_and_grad(loss)(to_mx(a, dtype))
    xr = expm_ref(a)
    # The sum of w * exp(a) cancels: bound its error by the sum of |terms|.
    assert abs(float(value.item()) - np.sum(w * xr)) <= 10 * tol_for(
        dtype, norm
    ) * np.sum(np.abs(w * xr))
    _, lr = frechet_ref(np.swapaxes(a, -1, -2), w)
    assert_relerr(to_np(grad), lr, tol_cond(dtype, a, C_DERIV), "grad")


def test_grad_of_quadratic_loss(device, rng):
    """loss = ||exp(A)||_F^2 has gradient L(A^T, 2 exp(A))."""
    a = _mat(rng, 5, 1.5, mx.float32)
    grad = mx.grad(lambda x: mx.sum(mle.matrix_exp(x, stream=device) ** 2))(
        to_mx(a, mx.float32)
    )
    lr = sla.expm_frechet(a.T, 2 * sla.expm(a))[1]
    assert_relerr(to_np(grad), lr, 4 * tol_for(mx.float32, 1.5), "grad")


def test_grad_through_compile(device, rng):
    a = to_mx(_mat(rng, 5, 2.0, mx.float32, (2,)), mx.float32)

    def loss(x):
        return mx.sum(mx.sin(mle.matrix_exp(x, stream=device)))

    g_eager = mx.grad(loss)(a)
    g_comp = mx.compile(mx.grad(loss))(a)
    np.testing.assert_array_equal(np.array(g_comp), np.array(g_eager))
    a64 = to_np(a)
    lr = frechet_ref(np.swapaxes(a64, -1, -2), np.cos(expm_ref(a64)))[1]
    assert_relerr(to_np(g_comp), lr, 4 * tol_for(mx.float32, 2.0), "grad")


# --- second order ------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", [0.02, 0.7, 5.0])
def test_jvp_of_jvp(device, rng, dtype, norm):
    """d/ds d/dt exp(A + tE + sF) = D2 exp(A)[E, F]."""
    a = _mat(rng, 4, norm, dtype)
    e = _dir(rng, a.shape, dtype)
    f = _dir(rng, a.shape, dtype)
    em = to_mx(e, dtype)

    def first(x):
        return mx.jvp(_expm(device), [x], [em])[1][0]

    (_,), (second,) = mx.jvp(first, [to_mx(a, dtype)], [to_mx(f, dtype)])
    assert_relerr(to_np(second), _d2exp(a, e, f), 8 * tol_for(dtype, norm), "d2")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize("norm", [0.02, 0.7, 5.0])
def test_jvp_of_grad(device, rng, dtype, norm):
    """grad f(A) = L(A^T, W) for f(A) = <W, exp(A)>; its jvp along D is
    D2 exp(A^T)[D^T, W]."""
    a = _mat(rng, 4, norm, dtype)
    w = _dir(rng, a.shape, dtype)
    d = _dir(rng, a.shape, dtype)
    wm = to_mx(w, dtype)

    def grad_f(x):
        return mx.grad(lambda y: mx.sum(wm * mle.matrix_exp(y, stream=device)))(x)

    (_,), (hvp,) = mx.jvp(grad_f, [to_mx(a, dtype)], [to_mx(d, dtype)])
    expected = _d2exp(a.T, d.T, w)
    assert_relerr(to_np(hvp), expected, 8 * tol_for(dtype, norm), "jvp of grad")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize("norm", [0.02, 0.7, 5.0])
def test_grad_of_grad(device, rng, dtype, norm):
    """h(A) = <V, grad f(A)> with f(A) = <W, exp(A)>; grad h is checked entry by
    entry against the closed form <V, D2 exp(A^T)[E_ij^T, W]>, and the float64
    case also against central finite differences of SciPy."""
    n = 4
    a = _mat(rng, n, norm, dtype)
    w = _dir(rng, a.shape, dtype)
    v = _dir(rng, a.shape, dtype)
    wm, vm = to_mx(w, dtype), to_mx(v, dtype)

    def h(x):
        g = mx.grad(lambda y: mx.sum(wm * mle.matrix_exp(y, stream=device)))(x)
        return mx.sum(vm * g)

    got = to_np(mx.grad(h)(to_mx(a, dtype)))
    expected = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            eij = np.zeros((n, n))
            eij[i, j] = 1.0
            expected[i, j] = np.sum(v * _d2exp(a.T, eij.T, w))
    assert_relerr(got, expected, 8 * tol_for(dtype, norm), "grad of grad")
    if dtype == mx.float64:

        def h_ref(x):
            return np.sum(v * sla.expm_frechet(x.T, w)[1])

        step = 1e-5 * max(1.0, norm)
        fd = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                dx = np.zeros((n, n))
                dx[i, j] = step
                fd[i, j] = (h_ref(a + dx) - h_ref(a - dx)) / (2 * step)
        assert_relerr(got, fd, 1e-7, "finite differences")


# --- expm_frechet ------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_expm_frechet_matches_scipy(device, rng, dtype, norm):
    a = _mat(rng, 6, norm, dtype, (2, 2))
    e = _dir(rng, a.shape, dtype)
    x, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    assert x.dtype == dtype and lx.dtype == dtype
    assert x.shape == lx.shape == a.shape
    xr, lr = frechet_ref(a, e)
    tx, tl = tol_cond(dtype, a), tol_cond(dtype, a, C_DERIV)
    assert_relerr(to_np(x).reshape(-1, 6, 6), xr.reshape(-1, 6, 6), tx, "exp")
    assert_relerr(to_np(lx).reshape(-1, 6, 6), lr.reshape(-1, 6, 6), tl, "L")
    # exp(A) from expm_frechet is the same as from matrix_exp.
    x2 = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    np.testing.assert_allclose(to_np(x), x2, rtol=tol_for(dtype), atol=0)


def test_expm_frechet_linear_in_e(device, rng):
    a = _mat(rng, 5, 1.0, mx.float32)
    e1 = _dir(rng, a.shape, mx.float32)
    e2 = _dir(rng, a.shape, mx.float32)
    am = to_mx(a, mx.float32)
    _, l1 = mle.expm_frechet(am, to_mx(e1, mx.float32), stream=device)
    _, l0 = mle.expm_frechet(am, mx.zeros_like(am), stream=device)
    _, l12 = mle.expm_frechet(am, to_mx(e1 + 3 * e2, mx.float32), stream=device)
    assert np.all(to_np(l0) == 0)
    lr = sla.expm_frechet(a, e1 + 3 * e2)[1]
    assert_relerr(to_np(l12), lr, 2 * tol_for(mx.float32, 1.0), "L(A, e1 + 3 e2)")
    assert_relerr(to_np(l1), sla.expm_frechet(a, e1)[1], 2 * tol_for(mx.float32), "")


@pytest.mark.parametrize(
    "shape_a,shape_e,shape_out",
    [
        ((3, 1, 4, 4), (1, 2, 4, 4), (3, 2, 4, 4)),
        ((4, 4), (5, 4, 4), (5, 4, 4)),
        ((2, 3, 4, 4), (4, 4), (2, 3, 4, 4)),
        ((2, 1, 4, 4), (3, 4, 4), (2, 3, 4, 4)),
    ],
)
def test_expm_frechet_broadcasts_batch(device, rng, shape_a, shape_e, shape_out):
    a = rng.standard_normal(shape_a).astype(np.float32) * 0.4
    e = rng.standard_normal(shape_e).astype(np.float32)
    x, lx = mle.expm_frechet(mx.array(a), mx.array(e), stream=device)
    assert x.shape == shape_out and lx.shape == shape_out
    ab, eb = np.broadcast_arrays(a.astype(np.float64), e.astype(np.float64))
    xr, lr = frechet_ref(ab, eb)
    assert_relerr(to_np(x).reshape(-1, 4, 4), xr.reshape(-1, 4, 4), 2e-6, "exp")
    assert_relerr(to_np(lx).reshape(-1, 4, 4), lr.reshape(-1, 4, 4), 4e-6, "L")


def test_expm_frechet_incompatible_batch_raises(device):
    with pytest.raises(ValueError):
        mle.expm_frechet(mx.zeros((2, 3, 3)), mx.zeros((4, 3, 3)), stream=device)


@pytest.mark.parametrize(
    "da,de,want",
    [
        (mx.float32, mx.float64, mx.float64),
        (mx.int32, mx.float32, mx.float32),
        (mx.float32, mx.complex64, mx.complex64),
        (mx.float16, mx.float32, mx.float32),
        (mx.bfloat16, mx.bfloat16, mx.bfloat16),
        (mx.int32, mx.int32, mx.float32),
    ],
    ids=str,
)
def test_expm_frechet_dtype_promotion(device, rng, da, de, want):
    a = rng.integers(-1, 2, size=(3, 3)).astype(np.float64)  # exact in all
    e = np.round(rng.standard_normal((3, 3)) * 4)
    am = mx.array(a).astype(da) if da != mx.float64 else to_mx(a, da)
    em = mx.array(e).astype(de) if de != mx.float64 else to_mx(e, de)
    x, lx = mle.expm_frechet(am, em, stream=device)
    assert x.dtype == want and lx.dtype == want
    xr, lr = frechet_ref(a, e)
    tol = {mx.bfloat16: 2**-7, mx.float16: 2**-10}.get(want, 2e-6)
    assert_relerr(to_np(x), xr, tol, "exp")
    assert_relerr(to_np(lx), lr, 2 * tol, "L")


# --- derivatives of expm_frechet (float64, against finite differences) ------


def _fd_frechet(a, e, da, de, step=1e-6):
    """Central differences of SciPy's (exp(A), L(A, E)) along (da, de)."""
    xp, lp = sla.expm_frechet(a + step * da, e + step * de)
    xm, lm = sla.expm_frechet(a - step * da, e - step * de)
    return (xp - xm) / (2 * step), (lp - lm) / (2 * step)


@pytest.mark.parametrize("norm", [0.03, 0.8, 6.0])
@pytest.mark.parametrize("wrt", ["a", "e", "both"])
def test_expm_frechet_jvp(rng, norm, wrt):
    n = 4
    a = _mat(rng, n, norm, mx.float64)
    e = _dir(rng, a.shape, mx.float64)
    da = _dir(rng, a.shape, mx.float64) if wrt != "e" else np.zeros_like(a)
    de = _dir(rng, a.shape, mx.float64) if wrt != "a" else np.zeros_like(a)
    am, em = to_mx(a, mx.float64), to_mx(e, mx.float64)
    dam, dem = to_mx(da, mx.float64), to_mx(de, mx.float64)

    def f(*args):
        return mle.expm_frechet(*args, stream=mx.cpu)

    if wrt == "a":
        outs, tans = mx.jvp(lambda x: f(x, em), [am], [dam])
    elif wrt == "e":
        outs, tans = mx.jvp(lambda y: f(am, y), [em], [dem])
    else:
        outs, tans = mx.jvp(f, [am, em], [dam, dem])
    fx, fl = _fd_frechet(a, e, da, de)
    xr, lr = sla.expm_frechet(a, e)
    assert_relerr(to_np(outs[0]), xr, tol_for(mx.float64, norm), "exp")
    assert_relerr(to_np(outs[1]), lr, 2 * tol_for(mx.float64, norm), "L")
    if wrt == "e":
        assert np.all(to_np(tans[0]) == 0)
    else:
        assert_relerr(to_np(tans[0]), fx, 1e-7, "d exp")
        # And the closed form: d exp(A)[dA] = L(A, dA).
        assert_relerr(to_np(tans[0]), sla.expm_frechet(a, da)[1], 1e-13, "")
    assert_relerr(to_np(tans[1]), fl, 1e-7, "d L")
    closed = sla.expm_frechet(a, de)[1] + (_d2exp(a, da, e) if wrt != "e" else 0)
    assert_relerr(to_np(tans[1]), closed, 20 * tol_for(mx.float64, norm), "d L")


@pytest.mark.parametrize("norm", [0.03, 0.8, 6.0])
def test_expm_frechet_vjp_full_jacobian(rng, norm):
    """vjp of (exp(A), L(A, E)) w.r.t. both A and E equals J^T g, with the
    Jacobian J built column by column from central differences of SciPy."""
    n = 3
    a = _mat(rng, n, norm, mx.float64)
    e = _dir(rng, a.shape, mx.float64)
    gx = _dir(rng, a.shape, mx.float64)
    gl = _dir(rng, a.shape, mx.float64)
    _, (ga, ge) = mx.vjp(
        lambda x, y: mle.expm_frechet(x, y, stream=mx.cpu),
        [to_mx(a, mx.float64), to_mx(e, mx.float64)],
        [to_mx(gx, mx.float64), to_mx(gl, mx.float64)],
    )
    want_a = np.zeros((n, n))
    want_e = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            unit = np.zeros((n, n))
            unit[i, j] = 1.0
            fx, fl = _fd_frechet(a, e, unit, np.zeros((n, n)))
            want_a[i, j] = np.sum(gx * fx) + np.sum(gl * fl)
            _, fl = _fd_frechet(a, e, np.zeros((n, n)), unit)
            want_e[i, j] = np.sum(gl * fl)
    assert_relerr(to_np(ga), want_a, 1e-7, "vjp wrt a (differences)")
    assert_relerr(to_np(ge), want_e, 1e-7, "vjp wrt e (differences)")
    # The closed forms, to the accuracy of float64: d/dE <gl, L(A, E)> is
    # L(A^T, gl); d/dA is <gx, L(A, dA)> + <gl, D2 exp(A)[dA, E]>.
    closed_a = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            unit = np.zeros((n, n))
            unit[i, j] = 1.0
            closed_a[i, j] = np.sum(gx * sla.expm_frechet(a, unit)[1]) + np.sum(
                gl * _d2exp(a, unit, e)
            )
    tol = 20 * tol_for(mx.float64, norm)
    assert_relerr(to_np(ga), closed_a, tol, "vjp wrt a")
    assert_relerr(to_np(ge), sla.expm_frechet(a.T, gl)[1], tol, "vjp wrt e")


@pytest.mark.parametrize("norm", [0.05, 1.0, 5.0])
def test_expm_frechet_vjp_complex(device, rng, norm):
    """Complex vjp of expm_frechet: <vjp(g), d> = <g, jvp(d)> under the
    Hermitian inner product, with the jvp from differences of SciPy."""
    dt = mx.complex64
    a = _mat(rng, 3, norm, dt)
    e, gx, gl = (_dir(rng, a.shape, dt) for _ in range(3))
    _, (ga, ge) = mx.vjp(
        lambda x, y: mle.expm_frechet(x, y, stream=device),
        [to_mx(a, dt), to_mx(e, dt)],
        [to_mx(gx, dt), to_mx(gl, dt)],
    )
    ga, ge = to_np(ga), to_np(ge)
    for _ in range(3):
        da, de = _dir(rng, a.shape, dt), _dir(rng, a.shape, dt)
        fx, fl = _fd_frechet(a, e, da, de, step=1e-7)
        lhs = np.vdot(ga, da) + np.vdot(ge, de)
        rhs = np.vdot(gx, fx) + np.vdot(gl, fl)
        scale = np.linalg.norm(ga) * np.linalg.norm(da) + np.linalg.norm(
            ge
        ) * np.linalg.norm(de)
        assert abs(lhs - rhs) <= 50 * tol_for(dt, norm) * scale, (lhs, rhs)


def test_expm_frechet_grad_of_scalar(device, rng):
    """mx.grad through expm_frechet w.r.t. both arguments (float32)."""
    a = _mat(rng, 4, 0.9, mx.float32)
    e = _dir(rng, a.shape, mx.float32)
    w = _dir(rng, a.shape, mx.float32)
    wm = to_mx(w, mx.float32)

    def loss(x, y):
        return mx.sum(wm * mle.expm_frechet(x, y, stream=device)[1])

    ga, ge = mx.grad(loss, argnums=(0, 1))(to_mx(a, mx.float32), to_mx(e, mx.float32))
    # d/dE <W, L(A, E)> = L(A^T, W); d/dA = D2-adjoint, from the block form.
    assert_relerr(to_np(ge), sla.expm_frechet(a.T, w)[1], 4e-6, "grad e")
    want = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            unit = np.zeros((4, 4))
            unit[i, j] = 1.0
            want[i, j] = np.sum(w * _d2exp(a, unit, e))
    assert_relerr(to_np(ga), want, 1e-5, "grad a")


# --- vmap --------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,axis",
    [
        ((4, 3, 3), 0),
        ((3, 4, 3), 1),
        ((3, 3, 4), 2),
        ((3, 3, 4), -1),
        ((2, 4, 3, 3), 1),
    ],
)
def test_vmap_matrix_exp(device, rng, shape, axis):
    x = rng.standard_normal(shape).astype(np.float32) * 0.8
    got = to_np(mx.vmap(_expm(device), in_axes=axis)(mx.array(x)))
    moved = np.moveaxis(x, axis, 0)
    assert got.shape == moved.shape
    assert_relerr(
        got.reshape(-1, 3, 3), expm_ref(moved).reshape(-1, 3, 3), 2e-6, "vmap"
    )


def test_vmap_out_axes_and_nested(device, rng):
    x = rng.standard_normal((2, 5, 3, 3)).astype(np.float32)
    f = mx.vmap(mx.vmap(_expm(device), in_axes=0), in_axes=1, out_axes=1)
    got = to_np(f(mx.array(x)))
    assert got.shape == x.shape
    assert_relerr(got.reshape(-1, 3, 3), expm_ref(x).reshape(-1, 3, 3), 4e-6, "")


@pytest.mark.parametrize(
    "axes,shape_a,shape_e",
    [
        ((0, None), (4, 3, 3), (3, 3)),
        ((None, 1), (3, 3), (3, 4, 3)),
        ((2, 0), (3, 3, 4), (4, 3, 3)),
        ((1, 1), (2, 4, 3, 3), (2, 4, 3, 3)),
    ],
)
def test_vmap_expm_frechet(device, rng, axes, shape_a, shape_e):
    a = rng.standard_normal(shape_a).astype(np.float32) * 0.6
    e = rng.standard_normal(shape_e).astype(np.float32)
    f = mx.vmap(lambda x, y: mle.expm_frechet(x, y, stream=device), in_axes=axes)
    x, lx = f(mx.array(a), mx.array(e))
    size = {s for s, ax in zip((shape_a, shape_e), axes) if ax is not None}
    am = np.moveaxis(a, axes[0], 0) if axes[0] is not None else a
    em = np.moveaxis(e, axes[1], 0) if axes[1] is not None else e
    if axes[0] is None:
        am = np.broadcast_to(am, (em.shape[0], *am.shape))
    if axes[1] is None:
        em = np.broadcast_to(em, (am.shape[0], *em.shape))
    assert size and x.shape == am.shape == lx.shape
    xr, lr = frechet_ref(am, em)
    assert_relerr(to_np(x).reshape(-1, 3, 3), xr.reshape(-1, 3, 3), 2e-6, "exp")
    assert_relerr(to_np(lx).reshape(-1, 3, 3), lr.reshape(-1, 3, 3), 4e-6, "L")


def test_vmap_of_grad_and_grad_of_vmap(device, rng):
    a = rng.standard_normal((3, 4, 4)).astype(np.float32) * 0.7
    w = rng.standard_normal((4, 4)).astype(np.float32)
    wm = mx.array(w)

    def loss(x):
        return mx.sum(wm * mle.matrix_exp(x, stream=device))

    per = mx.vmap(mx.grad(loss))(mx.array(a))
    tot = mx.grad(lambda x: mx.sum(mx.vmap(loss)(x)))(mx.array(a))
    _, lr = frechet_ref(np.swapaxes(a, -1, -2), np.broadcast_to(w, a.shape))
    assert_relerr(to_np(per), lr, 4e-6, "vmap(grad)")
    assert_relerr(to_np(tot), lr, 4e-6, "grad(vmap)")


def test_vmap_of_jvp(device, rng):
    a = rng.standard_normal((3, 4, 4)).astype(np.float32) * 0.7
    e = rng.standard_normal((3, 4, 4)).astype(np.float32)

    def tangent(x, t):
        return mx.jvp(_expm(device), [x], [t])[1][0]

    got = mx.vmap(tangent, in_axes=(0, 0))(mx.array(a), mx.array(e))
    assert_relerr(to_np(got), frechet_ref(a, e)[1], 4e-6, "vmap(jvp)")


# --- squarings without rounding ------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("beta", [50.0, 1e3, 1e5, 1e7])
def test_nilpotent_any_norm(device, rng, dtype, beta):
    """N = beta e_12 (and -beta e_21): N^2 = 0, so exp(N) = I + N and
    L(N, E) = E + (N E + E N) / 2 + N E N / 6 exactly. N / 2^s, its
    approximant and the squarings (5 to 22 of them here) are exact, so exp is
    within 4 u and the derivatives within 8 u (measured: 1.0 u and 3.2 u) at
    any norm: a wrong squaring step cannot hide behind the rounding, as it can
    for matrices whose error grows like 2^s u."""
    u = U64 if dtype == mx.float64 else U32
    b = beta * (np.exp(0.7j) if dtype == mx.complex64 else 1.0)
    a = np.zeros((2, 2, 2), dtype=complex if dtype == mx.complex64 else float)
    a[0, 0, 1], a[1, 1, 0] = b, -b
    a = rounded(a, dtype)
    e = _dir(rng, a.shape, dtype)

    def frechet(m, d):
        return d + (m @ d + d @ m) / 2 + m @ d @ m / 6

    eye = np.broadcast_to(np.eye(2), a.shape)
    am, em = to_mx(a, dtype), to_mx(e, dtype)
    assert_relerr(to_np(mle.matrix_exp(am, stream=device)), eye + a, 4 * u, "exp")
    x, lx = mle.expm_frechet(am, em, stream=device)
    assert_relerr(to_np(x), eye + a, 4 * u, "expm_frechet X")
    assert_relerr(to_np(lx), frechet(a, e), 8 * u, "expm_frechet L")
    (tan,) = mx.jvp(_expm(device), [am], [em])[1]
    assert_relerr(to_np(tan), frechet(a, e), 8 * u, "jvp")
    (cot,) = mx.vjp(_expm(device), [am], [em])[1]
    assert_relerr(to_np(cot), frechet(_adj(a), e), 8 * u, "vjp")
