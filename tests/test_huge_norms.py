"""The huge-norm policy (expm::decide in csrc/expm_numerics.h).

With mu = tr(A)/n and nu = ||A - mu I||_1 when that is below ||A||_1 (else
||A||_1): up to nu = 1/u (2^24 in float32/complex64, 2^53 in float64) the
result is finite and as accurate as the condition allows; beyond, the
matrix's result is all NaN (the relative condition number of exp is at least
||A||, so no finite value would mean anything). Where exp(A) itself overflows
the entries are Inf or NaN, where it underflows they are zeros; the other
matrices of a batch are unaffected.

Error analysis used for the bounds: scaling and squaring evaluates
exp(A / 2^s) to a few u, then squares s times, and each squaring doubles the
relative error already there and adds the rounding of one product, so the
error is about 2^s (e_0 + d) with s = ceil(log2(nu / theta_18)). The constants
are about twice the largest values measured over 100 seeds (noted at each).
"""

import math

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
    assert_relerr,
    expm_mp,
    expm_ref,
    frechet_ref,
    matrix_with_norm,
    onenorm,
    rounded,
    to_mx,
    to_np,
    tol_cond,
)

INV_U = {mx.float32: 2.0**24, mx.float64: 2.0**53}
UNIT = {mx.float32: U32, mx.float64: U64}
THETA_LAST = {mx.float32: THETA32[-1], mx.float64: THETA64[-1]}
# 1e6 up to the largest finite decade, with 0.9/u and 1.1/u around the bound.
HUGE = {
    mx.float32: [1e6, 4e6, 0.9 * 2.0**24, 1.1 * 2.0**24, 1e8, 1e20, 1e38],
    mx.float64: [1e6, 1e10, 1e13, 0.9 * 2.0**53, 1.1 * 2.0**53, 1e20, 1e100, 1e300],
}
HUGE_PARAMS = [
    pytest.param(dt, nu, id=f"{dt}-{nu:.3g}".replace("mlx.core.", ""))
    for dt in (mx.float32, mx.float64)
    for nu in HUGE[dt]
]


def _squarings(nu, dtype):
    """The squarings of the policy: the least s with nu / 2^s <= theta_18."""
    return max(0, math.ceil(math.log2(nu / THETA_LAST[dtype])))


def _rotations(rng, nu, dtype, n=6):
    """A skew-symmetric matrix of 1-norm nu (up to rounding): n/2 rotation
    generators with angles up to nu, permuted (exact), and its exponential
    from cos and sin of the rounded angles."""
    t = rng.uniform(0.3, 1.0, n // 2) * rng.choice([-1.0, 1.0], n // 2)
    t = rounded(t * (nu / np.abs(t).max()), dtype)
    a, r = np.zeros((n, n)), np.zeros((n, n))
    for i, ti in enumerate(t):
        a[2 * i, 2 * i + 1], a[2 * i + 1, 2 * i] = -ti, ti
        c, s = np.cos(ti), np.sin(ti)
        r[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[c, -s], [s, c]]
    p = rng.permutation(n)
    return a[p][:, p], r[p][:, p]


@pytest.mark.parametrize("dtype,norm", HUGE_PARAMS)
def test_skew_symmetric(device, rng, dtype, norm):
    """Rotations: finite up to 1/u, within 16 u 2^s of the closed form where
    that says something (measured: 11 u 2^s); all NaN beyond 1/u."""
    a, r = _rotations(rng, norm, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    if onenorm(a) > INV_U[dtype]:
        assert np.isnan(x).all(), x
        return
    assert np.isfinite(x).all(), x
    bound = 16 * UNIT[dtype] * 2.0 ** _squarings(onenorm(a), dtype)
    if bound < 0.5:  # beyond, the linear error analysis no longer holds
        assert np.abs(x - r).max() <= bound, (np.abs(x - r).max(), bound)


def _upper_triangular(rng, norm, dtype, count=4):
    """[[a, b], [0, c]] with |b| = norm (a = c in one of them) and
    exp = [[e^a, b (e^a - e^c) / (a - c)], [0, e^c]]."""
    m = np.zeros((count, 2, 2))
    m[:, 0, 0] = rng.uniform(-1.0, 0.5, count)
    m[:, 1, 1] = rng.uniform(-1.0, 0.5, count)
    m[0, 1, 1] = m[0, 0, 0]
    m[:, 0, 1] = norm * rng.choice([-1.0, 1.0], count)
    m = rounded(m, dtype)
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 1, 1]
    d = a - c
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(d == 0, 1.0, np.expm1(d) / np.where(d == 0, 1.0, d))
    r = np.zeros_like(m)
    r[:, 0, 0], r[:, 1, 1], r[:, 0, 1] = np.exp(a), np.exp(c), b * np.exp(c) * phi
    return m, r


@pytest.mark.parametrize("dtype,norm", HUGE_PARAMS)
def test_upper_triangular(device, rng, dtype, norm):
    """Non-normal: normwise error within 8 u 2^s (measured: 3.1 u 2^s) up to
    1/u, all NaN beyond; the trace shift leaves the norm at about |b|."""
    a, r = _upper_triangular(rng, norm, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    for i in range(a.shape[0]):
        nu = np.abs(a[i, 0, 1]) + np.abs(a[i, 0, 0] - a[i, 1, 1]) / 2
        if nu > INV_U[dtype]:
            assert np.isnan(x[i]).all(), (i, x[i])
            continue
        assert np.isfinite(x[i]).all(), (i, x[i])
        bound = 8 * UNIT[dtype] * 2.0 ** _squarings(nu, dtype)
        assert_relerr(x[i], r[i], bound, f"matrix {i}")


@pytest.mark.parametrize("dtype,norm", HUGE_PARAMS)
def test_shifted_identity_underflows_and_overflows(device, rng, dtype, norm):
    """+-mu I + S with ||S||_1 = 1: after the trace shift the norm is small at
    every mu, so the result is e^(+-mu) exp(S): exactly zero where e^-mu
    underflows, no finite entry where e^mu overflows."""
    s = np.stack([matrix_with_norm(rng, 4, 1.0) for _ in range(2)])
    down = rounded(-norm * np.eye(4) + s, dtype)
    up = rounded(norm * np.eye(4) + s, dtype)
    x = to_np(mle.matrix_exp(to_mx(np.stack([down, up]), dtype), stream=device))
    assert np.all(x[0] == 0), x[0]
    assert not np.isfinite(x[1]).any(), x[1]


@pytest.mark.parametrize(
    "dtype,mu",
    [(mx.float32, m) for m in (-80.0, -10.0, 10.0, 80.0)]
    + [(mx.float64, m) for m in (-600.0, -50.0, 50.0, 600.0)],
    ids=str,
)
def test_shifted_identity_accurate(device, rng, dtype, mu):
    """mu I + S with e^mu in range: the trace shift makes the error that of
    exp(S), not mu u (measured: 2.2 u max(1, ||S||_2) in float32, 4.3 u in
    float64 against 40-digit mpmath; bound 8)."""
    s = np.stack([matrix_with_norm(rng, 5, 1.0) for _ in range(3)])
    a = rounded(mu * np.eye(5) + s, dtype)
    shifted = a - mu * np.eye(5)  # exact: Sterbenz
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    with mpmath.workdps(40):
        scale = float(mpmath.exp(mu))
    tol = 8 * UNIT[dtype] * np.maximum(1, np.linalg.norm(shifted, 2, axis=(-2, -1)))
    assert_relerr(x / scale, expm_mp(shifted, dps=40), tol, f"mu = {mu}")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
def test_neighbours_unaffected(device, rng, dtype):
    """One batch holding matrices past 1/u (all NaN), whose exp overflows
    (no finite entry) or underflows (zeros), and ordinary ones: each ordinary
    matrix equals its own evaluation alone and its reference; expm_frechet's
    L is NaN exactly where exp is."""
    big = 4 * INV_U[dtype]
    ordinary = [matrix_with_norm(rng, 4, nu) for nu in (0.01, 0.5, 2.0)]
    ordinary.append(matrix_with_norm(rng, 4, 50.0, "dissipative"))
    s = matrix_with_norm(rng, 4, 1.0)
    huge = [_rotations(rng, big, dtype, 4)[0], _upper_triangular(rng, big, dtype)[0]]
    huge[1] = np.pad(huge[1][0], ((0, 2), (0, 2)))
    mats = [
        ordinary[0],
        huge[0],
        ordinary[1],
        -1e6 * np.eye(4) + s,
        ordinary[2],
        1e6 * np.eye(4) + s,
        huge[1],
        ordinary[3],
    ]
    a = rounded(np.stack(mats), dtype)
    e = rounded(rng.standard_normal(a.shape), dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    xf, lf = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    xf, lf = to_np(xf), to_np(lf)
    for i in (1, 6):
        assert np.isnan(x[i]).all() and np.isnan(xf[i]).all(), i
        assert np.isnan(lf[i]).all(), i
    assert np.all(x[3] == 0) and not np.isfinite(x[5]).any()
    good = [0, 2, 4, 7]
    ref = expm_mp(a[good]) if dtype == mx.float64 else expm_ref(a[good])
    assert_relerr(x[good], ref, tol_cond(dtype, a[good]), "ordinary")
    assert_relerr(xf[good], ref, tol_cond(dtype, a[good]), "expm_frechet X")
    _, lr = frechet_ref(a[good], e[good])
    assert_relerr(lf[good], lr, 2 * tol_cond(dtype, a[good]), "expm_frechet L")
    for i in good:
        solo = to_np(mle.matrix_exp(to_mx(a[i], dtype), stream=device))
        np.testing.assert_array_equal(x[i], solo)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
def test_largest_finite_entries_give_nan(device, dtype):
    """Entries at a quarter of the largest finite value (the 1-norm, summed in
    double, stays finite; in float it would overflow): past 1/u, all NaN."""
    big = float(np.finfo(np.float32 if dtype == mx.float32 else np.float64).max) / 4
    a = np.array([[0.0, -big, 0.0], [big, 0.0, -big], [0.0, big, 0.0]])
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert x.shape == (3, 3) and np.isnan(x).all(), x


@pytest.mark.parametrize(
    "dtype,scale",
    [(mx.float32, 1e3), (mx.float32, 1e6), (mx.float64, 1e6), (mx.float64, 1e8)],
    ids=str,
)
def test_huge_skew_symmetric_is_finite_and_orthogonal(device, rng, dtype, scale):
    """Random skew-symmetric K, entries ~scale. Each squaring doubles the
    orthogonality error e_k and adds the rounding of one product: with
    |fl(QQ) - QQ| <= gamma_n |Q||Q| and the rows of an orthogonal Q of unit
    length, e_(k+1) <= 2 e_k + 2 n^1.5 u, so after s squarings
    max |Q^T Q - I| <= 2^s (e_0 + 2 n^1.5 u). The bound 2^s 2 n^1.5 u (29 u 2^s
    for n = 6) holds over 300 seeds of 4 matrices each, where the largest
    ratio measured is 18.7 (float32, scale 1e6) and 7.3 (float64)."""
    n = 6
    k = rng.standard_normal((4, n, n)) * scale
    k = rounded(k - np.swapaxes(k, -1, -2), dtype)
    q = to_np(mle.matrix_exp(to_mx(k, dtype), stream=device))
    assert np.all(np.isfinite(q))
    err = np.abs(np.swapaxes(q, -1, -2) @ q - np.eye(n)).max(axis=(-2, -1))
    s = np.array([_squarings(nu, dtype) for nu in onenorm(k)])
    bound = 2.0**s * 2 * n**1.5 * UNIT[dtype]
    assert np.all(err <= bound), (err / (2.0**s * UNIT[dtype]), bound)
    if scale <= 1e3:  # accurate, not only orthogonal
        assert_relerr(q, expm_ref(k), tol_cond(dtype, k), "")


def test_huge_i_hermitian_is_unitary(device, rng):
    """i H of 1-norm 4e6 (a quarter of 1/u, where the error is still far
    below 1): unitary within the bound of the skew-symmetric case,
    2^s 2 n^1.5 u (largest ratio over 300 seeds: 5.3)."""
    n = 5
    h = rng.standard_normal((3, n, n)) + 1j * rng.standard_normal((3, n, n))
    a = 1j * (h + np.conj(np.swapaxes(h, -1, -2)))
    a = rounded(a * (4e6 / onenorm(a))[:, None, None], mx.complex64)
    v = to_np(mle.matrix_exp(to_mx(a, mx.complex64), stream=device))
    assert np.all(np.isfinite(v))
    err = np.abs(np.conj(np.swapaxes(v, -1, -2)) @ v - np.eye(n)).max(axis=(-2, -1))
    s = np.array([_squarings(nu, mx.float32) for nu in onenorm(a)])
    assert np.all(err <= 2.0**s * 2 * n**1.5 * U32), err / (2.0**s * U32)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
def test_huge_negative_definite_underflows_to_zero(device, rng, dtype):
    """exp(-1e6 (I + small)) is far below the smallest subnormal: exactly
    zero, no NaN from the squarings."""
    a = -1e6 * (np.eye(5) + 0.01 * rng.standard_normal((2, 5, 5)))
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert np.all(x == 0), x
