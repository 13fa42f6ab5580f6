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

import math

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


# Overscaling (Al-Mohy & Higham 2009): matrices whose 1-norm asks for many
# more squarings than ||B^2||^(1/2) and ||B^3||^(1/3) do. Each squaring
# doubles the rounding errors of the scaled approximant, so s from the 1-norm
# alone costs these matrices 1-3 digits in float32. The bounds lie between
# the two in a float32 simulation of the algorithm (NOTES.md, "Overscaling"):
# a few times above the error with the refined s, several times below the
# smallest one with s from the 1-norm. tol_cond does not apply (||A||_2 is
# 1e3 and more; the refined errors are far below c u ||A||_2).


def _block_triangular(n, dtype):
    """P [[D1, C], [0, D2]] P^T with diagonal D1, D2 of entries in [-1, 1]
    (complex: both parts), C of entries +-[1e2, 1e3] and a random
    permutation P (so that no backend sees a triangular matrix), n x n,
    rounded to dtype; and its exponential in closed form: P [[e^D1, X], [0,
    e^D2]] P^T with X_ij = C_ij (e^a_i - e^b_j) / (a_i - b_j) for D1 =
    diag(a), D2 = diag(b)."""
    gen = np.random.default_rng(n)
    h = n // 2
    d = gen.uniform(-1, 1, n)
    if dtype == mx.complex64:
        d = d + 1j * gen.uniform(-1, 1, n)
    a = np.diag(d)
    a[:h, h:] = gen.uniform(1e2, 1e3, (h, n - h)) * gen.choice([-1, 1], (h, n - h))
    a = rounded(a, dtype)
    d = np.diag(a)
    x = np.diag(np.exp(d))
    diff = d[:h, None] - d[None, h:]
    same = diff == 0
    # e^b (e^(a - b) - 1) / (a - b), and e^a where a == b.
    dd = np.exp(d[None, h:]) * np.expm1(diff) / np.where(same, 1, diff)
    x[:h, h:] = a[:h, h:] * np.where(same, np.exp(d[:h, None]) + 0 * diff, dd)
    p = gen.permutation(n)
    return a[p][:, p], x[p][:, p]


# Normwise relative error bounds of exp and L on _block_triangular(n), both
# dtypes. Simulated: s from the 1-norm 10..16, refined 4..8; errors with the
# refined s 3e-7..1.6e-5 (at most a fifth of the bound), with s from the
# 1-norm 3.8e-5..3.4e-3 (at least 4.5x the bound). The targets with coarser
# products widen it by _path_factor (gpu-tc64: 8x, little margin left
# against the 1-norm s at n = 130). complex64 at n = 512 on the 3xTF32
# mma.sync path measured 1.3e-4 on an H200 (s = 8 against the 1-norm's 16,
# four real products a complex one): 3x there.
_OVERSCALED_BOUND = {8: 8e-6, 40: 3e-5, 100: 5e-5, 130: 6e-5, 512: 1e-4}


@pytest.fixture
def overscaled_bound(request):
    """_OVERSCALED_BOUND[n] times the target's _path_factor."""
    target = request.node.callspec.params["device"]
    dtype = request.node.callspec.params["dtype"]

    def bound(n):
        c = 3.0 if (dtype == mx.complex64 and n >= 512) else 1.0
        return c * _path_factor(target.id, n) * _OVERSCALED_BOUND[n]

    return bound


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b", [1e4, 1e5])
def test_overscaling_2x2(device, dtype, b):
    """[[1, b], [0, -1]]: ||A||_1 = b + 1 asks for log2(b / 3) squarings,
    while B^2 = I and B^3 = B ask for a third of them. exp(A) = [[e, b
    sinh(1)], [0, 1/e]]. Simulated float32: b = 1e4: 1.2e-4 with s = 12,
    6.5e-7 with s = 3; b = 1e5: 3.8e-3 (s = 16), 1.8e-6 (s = 4)."""
    a = rounded(np.array([[1.0, b], [0.0, -1.0]]), dtype)
    r = np.array([[np.e, b * np.sinh(1.0)], [0.0, np.exp(-1.0)]])
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert_relerr(x, r, 1e-5 if b < 1e5 else 2e-5, f"b={b:g}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [8, 40, 100, 130, 512])
def test_overscaling_block_triangular(device, dtype, n, tol, overscaled_bound):
    """_block_triangular(n) alone, and in a batch with a dissipative matrix
    of norm 40 (s from the 1-norm is right for it: normal enough) and a
    Gaussian one of norm 0.4 (no squaring), each against its own reference:
    the refinement is per matrix. n = 100: the cluster kernel (float32); 512:
    the wgmma path where it applies (single matrix)."""
    a, r = _block_triangular(n, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert_relerr(x, r, overscaled_bound(n), f"n={n}")
    if n > 130:
        return
    gen = np.random.default_rng(n + 1)
    cplx = dtype == mx.complex64
    others = np.stack(
        [
            matrix_with_norm(gen, n, 40.0, "dissipative", complex_=cplx),
            matrix_with_norm(gen, n, 0.4, "gauss", complex_=cplx),
        ]
    )
    batch = np.stack([rounded(others[0], dtype), a, rounded(others[1], dtype)])
    xb = to_np(mle.matrix_exp(to_mx(batch, dtype), stream=device))
    assert_relerr(xb[1], r, overscaled_bound(n), f"n={n} in a batch")
    for i in (0, 2):
        ref = expm_ref(batch[i])
        assert_relerr(xb[i], ref, tol(dtype, batch[i]), f"neighbour {i}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [8, 40, 130, 512])
def test_overscaling_frechet(device, dtype, n, overscaled_bound):
    """expm_frechet of _block_triangular(n) in direction E (Gaussian, 1-norm
    1): the derivative runs with the refined s too (512: the wgmma path
    where it applies). X against the closed form, L(A, E) against SciPy's
    expm_frechet in float64."""
    a, r = _block_triangular(n, dtype)
    gen = np.random.default_rng(n + 2)
    e = rounded(matrix_with_norm(gen, n, 1.0, complex_=dtype == mx.complex64), dtype)
    xf, lf = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    _, lr = frechet_ref(a, e)
    assert_relerr(to_np(xf), r, overscaled_bound(n), f"X n={n}")
    assert_relerr(to_np(lf), lr, overscaled_bound(n), f"L n={n}")


# The second overscaling rule (expm::refine_squarings_sixth): matrices whose
# B^6 is small although ||B^2||^(1/2) and ||B^3||^(1/3) are not, embedded in
# every size a path covers. "jordan-1e4": -I + 1e4 N with N the
# block-diagonal shift of 6 x 6 blocks (the last one n mod 6): B = 1e4 N
# after the trace shift and B^6 = 0, so no squaring, where the first rule
# squares 12 times. "rotation-1e6": blocks [[0, 1e6], [-1e-6, 0]] (B^2 = -I):
# the first rule squares 6 times, the second not at all. complex64: entries
# times e^(0.7i) (and the Jordan diagonal -1 + 0.5i). A float32 model of the
# algorithm (products in float32, in float64 rounded once, or in 3xTF32),
# n = 12..512, exp and L: with both rules at most 1.3e-7 / 3.9e-7 (jordan)
# and 9.9e-8 / 2.6e-7 (rotation); with the first rule alone at least 5.9e-5
# (jordan) and 2.3e-6 (rotation). The bounds lie between the two.
# _path_factor does not apply: with s = 0 no squaring amplifies the coarser
# rounding of those targets' products. SciPy is no reference here (its
# float64 expm is off by 6e-7 on jordan-1e4): the closed forms are.
_SIXTH_BOUND = {"jordan-1e4": 2e-6, "rotation-1e6": 8e-7}


def _sixth_power_case(kind, n, dtype):
    """(A, exp(A), L(A, .)) for a case of _SIXTH_BOUND: A rounded to dtype,
    exp(A) and the Frechet derivative in closed form from A's rounded
    entries. n is even for "rotation"."""
    cplx = dtype == mx.complex64
    phase = np.exp(0.7j) if cplx else 1.0
    name, size = kind.split("-")
    size = float(size)
    if name == "jordan":
        lam = -1.0 + 0.5j if cplx else -1.0
        shift = np.zeros((n, n))
        for i in range(n - 1):
            shift[i, i + 1] = 1.0 if (i + 1) % 6 else 0.0
        a = rounded(lam * np.eye(n) + size * phase * shift, dtype)
        w = a[0, 1]  # the rounded c e^(0.7i)
        # exp(lam I + w N) = e^lam sum_p (w N)^p / p!, and L(A, E) = e^lam
        # sum_{p,q} w^(p+q) N^p E N^q / (p + q + 1)! (Higham 2008, (10.15)):
        # N^6 = 0.
        powers = [np.linalg.matrix_power(shift, p) for p in range(6)]
        x = np.exp(lam) * sum(w**p / math.factorial(p) * powers[p] for p in range(6))

        def frechet(e):
            return np.exp(lam) * sum(
                w ** (p + q) / math.factorial(p + q + 1) * powers[p] @ e @ powers[q]
                for p in range(6)
                for q in range(6)
            )

        return a, x, frechet
    assert name == "rotation" and n % 2 == 0
    a = np.zeros((n, n), dtype=complex)
    for i in range(0, n, 2):
        a[i, i + 1] = phase * size
        a[i + 1, i] = -phase / size
    a = rounded(a if cplx else a.real, dtype)
    # A^2 = lam I (the blocks are equal), so exp(A) = cosh(r) I + sinh(r) / r A
    # and L(A, E) = al E + be (A E + E A) + ga A E A with r^2 = lam and the
    # integrals over t in [0, 1] of C(t) C(1 - t), C(t) S(1 - t), S(t) S(1 - t)
    # (C = cosh(t r), S = sinh(t r) / r).
    r = np.sqrt(complex(a[0, 1] * a[1, 0]))
    ch, sh = np.cosh(r), np.sinh(r) / r
    al, be, ga = (ch + sh) / 2, sh / 2, (ch - sh) / (2 * r**2)
    x = ch * np.eye(n) + sh * a

    def frechet(e):
        return al * e + be * (a @ e + e @ a) + ga * (a @ e @ a)

    if not cplx:
        x, al, be, ga = x.real, al.real, be.real, ga.real
    return a, x, frechet


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [12, 40, 100, 130, 512])
@pytest.mark.parametrize("kind", sorted(_SIXTH_BOUND))
def test_overscaling_sixth_power(device, dtype, n, kind, tol):
    """_sixth_power_case(kind, n) alone (n = 100: the cluster kernel for
    float32; 512: the wgmma path where it applies) and expm_frechet of it in
    direction E (Gaussian, 1-norm 1) against the closed forms; up to n = 130
    also in a batch between a dissipative matrix of norm 40 and a Gaussian
    one of norm 0.4 (the rule is per matrix)."""
    a, x_ref, frechet = _sixth_power_case(kind, n, dtype)
    bound = _SIXTH_BOUND[kind]
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert_relerr(x, x_ref, bound, f"{kind} n={n}")
    gen = np.random.default_rng(n + 3)
    cplx = dtype == mx.complex64
    e = rounded(matrix_with_norm(gen, n, 1.0, complex_=cplx), dtype)
    xf, lf = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    assert_relerr(to_np(xf), x_ref, bound, f"X {kind} n={n}")
    assert_relerr(to_np(lf), frechet(e), bound, f"L {kind} n={n}")
    if n > 130:
        return
    others = [
        rounded(matrix_with_norm(gen, n, 40.0, "dissipative", complex_=cplx), dtype),
        rounded(matrix_with_norm(gen, n, 0.4, "gauss", complex_=cplx), dtype),
    ]
    batch = np.stack([others[0], a, others[1]])
    xb = to_np(mle.matrix_exp(to_mx(batch, dtype), stream=device))
    assert_relerr(xb[1], x_ref, bound, f"{kind} n={n} in a batch")
    for i in (0, 2):
        assert_relerr(xb[i], expm_ref(batch[i]), tol(dtype, batch[i]), f"neighbour {i}")
