"""Batches of tiny matrices (n <= 8), the Lie-group case: on Metal, and in
the emulator build, they run one matrix per thread, many matrices per
threadgroup (metal/expm_tiny.h); on CUDA many matrices per block, one thread
or one row a thread per matrix (csrc/cuda/tiny_kernel.cuh), and on the
gpu-fused target the same inputs through the fused kernel (one block a
matrix). The tests run on every target.

Each batch draws its elements from a pool of matrices spread over every degree
band, the squaring regime and the trace shift, in random order, so that every
SIMD group mixes degrees and squaring counts; batch sizes are no multiple of
any threadgroup size, so the last threadgroup is partly empty. Every element
is checked against SciPy in float64 on its exactly rounded input (the pool's
references, indexed), and copies of one matrix must agree to the bit wherever
they sit in the batch. NaN and Inf stay in their own matrix.
"""

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import pytest
from expm_testutils import (
    C_DERIV,
    C_EXP,
    U32,
    assert_relerr,
    expm_ref,
    frechet_ref,
    matrix_with_norm,
    rounded,
    to_mx,
    to_np,
    tol_cond,
)

pytestmark = pytest.mark.cuda_paths("gpu-fused")

HALF_U = {mx.float16: 2.0**-11, mx.bfloat16: 2.0**-8}
DTYPES = [mx.float32, mx.complex64, mx.float16, mx.bfloat16, mx.float64]
NS = list(range(1, 9))

# One norm per degree band (1, 2, 4, 8, 12, 18), then 2, 5 and 9 squarings.
NORMS = [1e-8, 3e-4, 0.03, 0.4, 1.2, 2.5, 10.0, 60.0, 1e3]


def _pool(rng, n, dtype, per_band):
    """Matrices over every band (Gaussian up to norm 3, dissipative beyond,
    where exp(A) stays of order one), and two copies of one close to a
    multiple of I (the trace shift: e^-8 is still a normal float16), rounded
    to dtype, with a direction E for each."""
    cplx = dtype == mx.complex64
    # A half-precision input at norm 1e3 is no longer close to dissipative;
    # a real 1 x 1 dissipative matrix is -norm, and exp(-norm) must stay a
    # normal number of the dtype.
    limit = 100 if dtype in HALF_U else np.inf
    if n == 1 and not cplx:
        limit = 8 if dtype == mx.float16 else 80
    mats = []
    for nu in NORMS:
        if nu > limit:
            continue
        kind = "gauss" if nu <= 3 else "dissipative"
        mats += [matrix_with_norm(rng, n, nu, kind, cplx) for _ in range(per_band)]
    # SciPy's float64 expm has no trace shift and is off by ~8e3 u there (the
    # float64 path never runs the Metal kernels).
    if dtype != mx.float64:
        shift = -8 + 25j if cplx else -8
        b = matrix_with_norm(rng, n, 0.5, "gauss", cplx)
        mats += [b + shift * np.eye(n)] * 2
    a = rounded(np.stack(mats), dtype)
    e = rng.standard_normal(a.shape)
    if cplx:
        e = e + 1j * rng.standard_normal(a.shape)
    return a, rounded(e, dtype)


def _draw(rng, size, batch):
    """batch indices into a pool of `size`: every member when batch >= size,
    in random order."""
    idx = np.resize(np.arange(size), batch)
    return rng.permutation(idx)


def _tol(dtype, a, c):
    """Per-matrix bound: tol_cond; half types are computed in float32 and
    rounded once, so the float32 bound plus one rounding."""
    if dtype in HALF_U:
        return 1.01 * HALF_U[dtype] + tol_cond(mx.float32, a, c)
    return tol_cond(dtype, a, c)


def _same_bits_per_copy(x, idx, what):
    """Copies of one pool matrix give one result, wherever they sit."""
    first = np.zeros(idx.max() + 1, dtype=int)
    first[idx[::-1]] = np.arange(len(idx))[::-1]
    same = (x == x[first[idx]]) | (np.isnan(x) & np.isnan(x[first[idx]]))
    bad = np.nonzero(~same.reshape(len(idx), -1).all(axis=1))[0]
    assert bad.size == 0, f"{what}: copies of one matrix differ at {bad[:10]}"


def _check_half(fn, args, dtype, device):
    """A half type's result is the float32 result rounded once."""
    if dtype not in HALF_U:
        return
    got = fn(*[to_mx(v, dtype) for v in args], stream=device)
    via32 = fn(*[to_mx(v, dtype).astype(mx.float32) for v in args], stream=device)
    got = got if isinstance(got, (tuple, list)) else [got]
    via32 = via32 if isinstance(via32, (tuple, list)) else [via32]
    for g, v in zip(got, via32):
        assert g.dtype == dtype
        np.testing.assert_array_equal(to_np(g), to_np(v.astype(dtype)))


# No multiple of any threadgroup size of the tiny kernels (3 .. 128 matrices
# on Metal, 16 .. 128 a block on CUDA).
BATCHES = [1, 63, 65, 1003]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", NS)
def test_exp(device, rng, n, dtype):
    pool, _ = _pool(rng, n, dtype, per_band=2)
    ref = expm_ref(pool)
    tol = _tol(dtype, pool, C_EXP)
    for batch in BATCHES:
        idx = _draw(rng, len(pool), batch)
        a = pool[idx]
        x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
        what = f"exp {dtype} n={n} batch={batch}"
        assert_relerr(x, ref[idx], tol[idx], what)
        _same_bits_per_copy(x, idx, what)
    _check_half(mle.matrix_exp, [a], dtype, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", NS)
def test_frechet(device, rng, n, dtype):
    pool, dirs = _pool(rng, n, dtype, per_band=2)
    xr, lr = frechet_ref(pool, dirs)
    tx, tl = _tol(dtype, pool, C_EXP), _tol(dtype, pool, C_DERIV)
    for batch in BATCHES[:-1] + [300]:
        idx = _draw(rng, len(pool), batch)
        a, e = pool[idx], dirs[idx]
        x, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
        x, lx = to_np(x), to_np(lx)
        what = f"frechet {dtype} n={n} batch={batch}"
        assert_relerr(x, xr[idx], tx[idx], what + " X")
        assert_relerr(lx, lr[idx], tl[idx], what + " L")
        _same_bits_per_copy(lx, idx, what)
    _check_half(mle.expm_frechet, [a, e], dtype, device)


@pytest.mark.parametrize("dtype", [mx.float32, mx.complex64, mx.float64], ids=str)
@pytest.mark.parametrize("n", NS)
def test_vjp(device, rng, n, dtype):
    """The vjp with cotangent G is L(A^H, G), evaluated as expm_frechet of the
    same order: the tiny Frechet kernel on Metal."""
    pool, cots = _pool(rng, n, dtype, per_band=1)
    idx = _draw(rng, len(pool), 65)
    a, g = pool[idx], cots[idx]
    (out,), (cot,) = mx.vjp(
        lambda m: mle.matrix_exp(m, stream=device), [to_mx(a, dtype)], [to_mx(g, dtype)]
    )
    adj = np.conj(np.swapaxes(pool, -1, -2))
    _, lr = frechet_ref(adj, cots)
    assert_relerr(to_np(out), expm_ref(pool)[idx], _tol(dtype, pool, C_EXP)[idx])
    assert_relerr(to_np(cot), lr[idx], _tol(dtype, pool, C_DERIV)[idx], "vjp")


# The non-finite entries (matrix, row, column, value): the first matrix, the
# ends of the first 64- and 128-matrix threadgroups, the middle, and the last
# one (in the masked tail of the grid); off the diagonal, and on it (where
# the trace shift reads it).
PLANTED = [
    (0, 0, 1, np.nan),
    (63, 1, 1, np.nan),
    (64, 2, 0, np.inf),
    (127, 1, 2, np.nan),
    (128, 0, 0, -np.inf),
    (50_000, 2, 1, np.nan),
    (-1, 0, 2, np.inf),
]


@pytest.mark.parametrize(
    "dtype,batch", [(mx.float32, 100_003), (mx.complex64, 20_011)], ids=str
)
def test_large_batch_nonfinite_stay_in_their_matrix(device, rng, dtype, batch):
    """A large batch of 3 x 3 matrices over many threadgroups, NaN, +Inf and
    -Inf planted in a few: those come back all NaN (no answer), every other
    one matches its reference, bit for bit across copies."""
    pool, _ = _pool(rng, 3, dtype, per_band=4)
    idx = _draw(rng, len(pool), batch)
    a = pool[idx]
    planted = np.array([p for p, *_ in PLANTED]) % batch
    for k, (p, (_, i, j, value)) in enumerate(zip(planted, PLANTED)):
        # A different band each, degree 1 first: there one NaN entry would
        # not spread over the result by itself; decide() must catch it.
        a[p] = pool[4 * k]
        a[p, i, j] = value
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert np.isnan(x[planted]).all(), "a non-finite input gave a number"
    keep = np.setdiff1d(np.arange(batch), planted)
    assert np.isfinite(x[keep]).all(), "NaN or Inf leaked into another matrix"
    ref = expm_ref(pool)
    tol = _tol(dtype, pool, C_EXP)
    assert_relerr(x[keep], ref[idx[keep]], tol[idx[keep]], f"{dtype} batch {batch}")
    _same_bits_per_copy(x[keep], idx[keep], "large batch")


def test_large_frechet_batch_nonfinite_stay_in_their_matrix(device, rng):
    """The same for expm_frechet: NaN in A spoils X and L of its own matrix;
    NaN in E spoils only L (X does not depend on E)."""
    batch = 30_011
    pool, dirs = _pool(rng, 3, mx.float32, per_band=2)
    idx = _draw(rng, len(pool), batch)
    a, e = pool[idx], dirs[idx]
    bad_a, bad_e = np.array([0, 127, batch - 1]), np.array([128, 5_000])
    a[bad_a] = pool[[0, 6, 12]]  # degree 1 (where L does not read A), 4, 12
    a[bad_a, 1, 2] = np.nan
    e[bad_e, 2, 0] = np.nan
    x, lx = mle.expm_frechet(to_mx(a, mx.float32), to_mx(e, mx.float32), stream=device)
    x, lx = to_np(x), to_np(lx)
    assert np.isnan(x[bad_a]).all() and np.isnan(lx[bad_a]).all()
    assert np.isnan(lx[bad_e]).any(axis=(1, 2)).all()
    keep = np.setdiff1d(np.arange(batch), np.r_[bad_a, bad_e])
    assert np.isfinite(x[keep]).all() and np.isfinite(lx[keep]).all()
    xr, lr = frechet_ref(pool, dirs)
    tx, tl = _tol(mx.float32, pool, C_EXP), _tol(mx.float32, pool, C_DERIV)
    assert_relerr(x[bad_e], xr[idx[bad_e]], tx[idx[bad_e]], "X beside a NaN E")
    assert_relerr(x[keep], xr[idx[keep]], tx[idx[keep]], "X")
    assert_relerr(lx[keep], lr[idx[keep]], tl[idx[keep]], "L")


def test_bounds_can_fail():
    """The bounds above reject a result that is off by 10 u in one entry of a
    degree-8 matrix (the tightest band), and a result of the wrong matrix."""
    rng = np.random.default_rng(0)
    a = rounded(matrix_with_norm(rng, 3, 0.4), mx.float32)[None]
    ref = expm_ref(a)
    tol = _tol(mx.float32, a, C_EXP)
    off = ref.copy()
    off[0, 1, 1] += 10 * U32 * np.linalg.norm(ref)
    with pytest.raises(AssertionError):
        assert_relerr(off, ref, tol)
    with pytest.raises(AssertionError):
        assert_relerr(ref[:, ::-1], ref, tol)
