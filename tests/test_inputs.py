"""Inputs: errors, dtypes, empty and 1x1 matrices, NaN/Inf, huge norms,
non-contiguous arrays, streams and memory."""

import gc
import os

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import pytest
from expm_testutils import (
    U32,
    assert_relerr,
    expm_ref,
    frechet_ref,
    matrix_with_norm,
    onenorm,
    rounded,
    to_mx,
    to_np,
    tol_cond,
    tol_for,
)


def _call(op, x, device):
    if op == "matrix_exp":
        return mle.matrix_exp(x, stream=device)
    return mle.expm_frechet(x, x, stream=device)


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize("op", ["matrix_exp", "expm_frechet"])
@pytest.mark.parametrize(
    "shape,text",
    [
        ((), "()"),
        ((3,), "(3,)"),
        ((3, 4), "(3, 4)"),
        ((2, 3, 4), "(2, 3, 4)"),
        ((5, 1, 2), "(5, 1, 2)"),
        ((0, 2), "(0, 2)"),
    ],
)
def test_bad_shapes_raise(device, op, shape, text):
    x = mx.zeros(shape)
    with pytest.raises(ValueError) as info:
        _call(op, x, device)
    msg = str(info.value)
    assert f"[{op}]" in msg and text in msg, msg


@pytest.mark.parametrize("which", ["a", "e"])
def test_expm_frechet_bad_shape_of_one_argument(device, which):
    good, bad = mx.zeros((2, 3, 3)), mx.zeros((2, 3, 4))
    args = (bad, good) if which == "a" else (good, bad)
    with pytest.raises(ValueError, match=r"\[expm_frechet\].*\(2, 3, 4\)"):
        mle.expm_frechet(*args, stream=device)


def test_expm_frechet_size_mismatch(device):
    with pytest.raises(ValueError) as info:
        mle.expm_frechet(mx.zeros((3, 3)), mx.zeros((2, 4, 4)), stream=device)
    msg = str(info.value)
    assert "[expm_frechet]" in msg and "(3, 3)" in msg and "(2, 4, 4)" in msg


@pytest.mark.gpu_only
@pytest.mark.parametrize("op", ["matrix_exp", "expm_frechet"])
def test_float64_on_gpu_raises(device, op):
    x = mx.array(np.eye(3), dtype=mx.float64)
    with pytest.raises(ValueError, match=rf"\[{op}\].*float64"):
        _call(op, x, device)
    with pytest.raises(ValueError, match="float64"):
        _call(op, x, None)


def test_float64_on_cpu_works():
    a = np.array([[0.0, 1.0], [-2.0, -3.0]])
    x = mle.matrix_exp(mx.array(a, dtype=mx.float64), stream=mx.cpu)
    assert x.dtype == mx.float64
    assert_relerr(to_np(x), expm_ref(a), 1e-14, "float64")


# --- dtypes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,u",
    [(mx.float16, 2.0**-11), (mx.bfloat16, 2.0**-8)],
    ids=["float16", "bfloat16"],
)
def test_half_precision(device, rng, dtype, u):
    """Computed in float32, rounded once to the input dtype: the result is the
    float32 result cast to half, within half a half-ulp of the exact value."""
    a = rng.standard_normal((3, 5, 5)) * 0.5
    am = to_mx(a, dtype)
    x = mle.matrix_exp(am, stream=device)
    assert x.dtype == dtype and x.shape == (3, 5, 5)
    via32 = mle.matrix_exp(am.astype(mx.float32), stream=device).astype(dtype)
    np.testing.assert_array_equal(to_np(x), to_np(via32))
    exact = expm_ref(to_np(am))
    err = np.abs(to_np(x) - exact)
    assert np.all(err <= 1.01 * u * np.abs(exact) + 1e-6), (err / np.abs(exact)).max()
    x2, lx = mle.expm_frechet(am, am, stream=device)
    assert x2.dtype == dtype and lx.dtype == dtype


@pytest.mark.parametrize(
    "dtype",
    [mx.bool_, mx.int8, mx.uint8, mx.int16, mx.int32, mx.uint32, mx.int64],
    ids=str,
)
def test_integer_and_bool_promote_to_float32(device, rng, dtype):
    if dtype == mx.bool_:
        a = rng.integers(0, 2, size=(2, 4, 4))
    elif dtype in (mx.uint8, mx.uint32):
        a = rng.integers(0, 3, size=(2, 4, 4))
    else:
        a = rng.integers(-2, 3, size=(2, 4, 4))
    am = mx.array(a).astype(dtype)
    x = mle.matrix_exp(am, stream=device)
    assert x.dtype == mx.float32
    assert_relerr(to_np(x), expm_ref(a.astype(np.float64)), tol_for(mx.float32, 12), "")
    y, lx = mle.expm_frechet(am, am, stream=device)
    assert y.dtype == mx.float32 and lx.dtype == mx.float32


@pytest.mark.parametrize(
    "dtype", [mx.float32, mx.float64, mx.complex64, mx.float16, mx.bfloat16], ids=str
)
def test_float_dtypes_preserved(device, dtype):
    x = mle.matrix_exp(mx.zeros((2, 3, 3), dtype=dtype), stream=device)
    assert x.dtype == dtype
    np.testing.assert_array_equal(to_np(x), np.broadcast_to(np.eye(3), (2, 3, 3)))


# --- empty and 1 x 1 ---------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(0, 0), (3, 0, 0), (0, 4, 4), (2, 0, 3, 3), (0, 0, 0)]
)
@pytest.mark.parametrize(
    "dtype", [mx.float32, mx.complex64, mx.int32, mx.float16], ids=str
)
def test_empty(device, shape, dtype):
    want = mx.float32 if dtype == mx.int32 else dtype
    x = mle.matrix_exp(mx.zeros(shape, dtype=dtype), stream=device)
    mx.eval(x)
    assert x.shape == shape and x.dtype == want and x.size == 0
    y, lx = mle.expm_frechet(
        mx.zeros(shape, dtype=dtype), mx.zeros(shape, dtype=dtype), stream=device
    )
    mx.eval(y, lx)
    assert y.shape == lx.shape == shape and y.dtype == lx.dtype == want


def test_empty_broadcast_batch(device):
    y, lx = mle.expm_frechet(mx.zeros((0, 1, 3, 3)), mx.zeros((4, 3, 3)), stream=device)
    assert y.shape == lx.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("shape", [(1, 1), (5, 1, 1), (2, 3, 1, 1)])
@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64], ids=str)
def test_one_by_one_is_scalar_exp(device, rng, shape, dtype):
    a = rng.uniform(-30, 30, size=shape)
    if dtype == mx.complex64:
        a = a + 1j * rng.uniform(-30, 30, size=shape)
    a = rounded(a, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    rtol = 1e-14 if dtype == mx.float64 else 64 * U32
    np.testing.assert_allclose(x, np.exp(a), rtol=rtol)
    e = rounded(rng.standard_normal(shape), dtype)
    y, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    np.testing.assert_allclose(to_np(y), np.exp(a), rtol=rtol)
    np.testing.assert_allclose(to_np(lx), np.exp(a) * e, rtol=2 * rtol)


def test_one_by_one_derivatives(device):
    a = mx.array([[[0.5]], [[-2.0]]])
    g = mx.grad(lambda x: mx.sum(mle.matrix_exp(x, stream=device)))(a)
    np.testing.assert_allclose(np.array(g), np.exp(np.array(a)), rtol=1e-6)
    _, (t,) = mx.jvp(lambda x: mle.matrix_exp(x, stream=device), [a], [mx.ones_like(a)])
    np.testing.assert_allclose(np.array(t), np.exp(np.array(a)), rtol=1e-6)


def test_one_by_one_nan(device):
    x = mle.matrix_exp(mx.array([[[np.nan]], [[1.0]]]), stream=device)
    out = np.array(x)
    assert np.isnan(out[0]).all() and out[1, 0, 0] == pytest.approx(np.e, rel=1e-6)


# --- NaN / Inf -----------------------------------------------------------------

_BAD = {1: np.nan, 3: np.inf, 4: -np.inf}


def _poisoned_batch(rng, dtype):
    cplx = dtype == mx.complex64
    a = np.stack(
        [matrix_with_norm(rng, 4, nu, complex_=cplx) for nu in (0.1, 1, 2, 3, 4, 0.5)]
    )
    a = rounded(a, dtype)
    for b, v in _BAD.items():
        a[b, 1, 2] = v
    return a


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64], ids=str)
def test_nan_inf_stay_in_their_matrix(device, rng, dtype):
    a = _poisoned_batch(rng, dtype)
    x = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    good = [i for i in range(a.shape[0]) if i not in _BAD]
    for b, value in _BAD.items():
        assert np.all(np.isnan(x[b])), f"batch element {b} ({value}): {x[b]}"
    for i in good:
        solo = to_np(mle.matrix_exp(to_mx(a[i], dtype), stream=device))
        np.testing.assert_array_equal(x[i], solo)
        assert_relerr(x[i], expm_ref(a[i]), tol_for(dtype, 4), f"element {i}")


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64], ids=str)
def test_nan_inf_expm_frechet(device, rng, dtype):
    a = _poisoned_batch(rng, dtype)
    e = rounded(rng.standard_normal(a.shape), dtype)
    e[5, 0, 0] = np.nan  # E poisoned where A is finite
    x, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    x, lx = to_np(x), to_np(lx)
    for b in _BAD:
        assert np.all(np.isnan(x[b])) and np.all(np.isnan(lx[b])), b
    assert np.isnan(lx[5]).any()
    for i in (0, 2, 5):
        xr = expm_ref(a[i])
        assert_relerr(x[i], xr, tol_for(dtype, 4), f"exp {i}")
        if i != 5:
            _, lr = frechet_ref(a[i], e[i])
            assert_relerr(lx[i], lr, 2 * tol_for(dtype, 4), f"L {i}")


def test_nan_does_not_poison_gradient_of_others(device, rng):
    a = _poisoned_batch(rng, mx.float32)
    g = to_np(
        mx.grad(lambda x: mx.sum(mle.matrix_exp(x, stream=device)))(
            to_mx(a, mx.float32)
        )
    )
    for b in _BAD:
        assert np.isnan(g[b]).all()
    for i in (0, 2, 5):
        lr = frechet_ref(a[i].T, np.ones((4, 4)))[1]
        assert_relerr(g[i], lr, 2 * tol_for(mx.float32, 4), f"grad {i}")


# --- non-contiguous inputs -----------------------------------------------------


def _views(base):
    """(name, mx view, numpy equivalent) of a (4, 6, 6) array."""
    a = mx.array(base.astype(np.float32))
    b = base.astype(np.float32).astype(np.float64)
    return [
        ("swapaxes", mx.swapaxes(a, -1, -2), np.swapaxes(b, -1, -2)),
        ("step_slice", a[:, ::2, ::2], b[:, ::2, ::2]),
        ("batch_slice", a[1:3], b[1:3]),
        ("batch_step", a[::2], b[::2]),
        ("reversed", a[:, ::-1, :], b[:, ::-1, :]),
        ("offset_block", a[:, 1:5, 2:6], b[:, 1:5, 2:6]),
        (
            "broadcast_matrix",
            mx.broadcast_to(a[0], (3, 6, 6)),
            np.broadcast_to(b[0], (3, 6, 6)),
        ),
        (
            "broadcast_batch",
            mx.broadcast_to(a[:2][None], (3, 2, 6, 6)),
            np.broadcast_to(b[:2][None], (3, 2, 6, 6)),
        ),
        (
            "batch_transpose",
            mx.transpose(a.reshape(2, 2, 6, 6), (1, 0, 2, 3)),
            np.transpose(b.reshape(2, 2, 6, 6), (1, 0, 2, 3)),
        ),
        (
            "moveaxis",
            mx.moveaxis(a, 0, -1)[:, :, 1:3].transpose(2, 0, 1),
            np.moveaxis(b, 0, -1)[:, :, 1:3].transpose(2, 0, 1),
        ),
    ]


VIEW_NAMES = [
    "swapaxes",
    "step_slice",
    "batch_slice",
    "batch_step",
    "reversed",
    "offset_block",
    "broadcast_matrix",
    "broadcast_batch",
    "batch_transpose",
    "moveaxis",
]


@pytest.mark.parametrize("evaluated", [False, True], ids=["lazy", "evaluated"])
@pytest.mark.parametrize("i", range(len(VIEW_NAMES)), ids=VIEW_NAMES)
def test_non_contiguous(device, rng, i, evaluated):
    # Evaluated views keep their strides and offset (an evaluated
    # row-contiguous array goes into the primitive without a copy).
    name, view, ref = _views(rng.standard_normal((4, 6, 6)) * 0.6)[i]
    if evaluated:
        mx.eval(view)
    x = to_np(mle.matrix_exp(view, stream=device))
    assert x.shape == ref.shape, name
    n = ref.shape[-1]
    assert_relerr(
        x.reshape(-1, n, n),
        expm_ref(ref).reshape(-1, n, n),
        tol_for(mx.float32, 6),
        name,
    )
    e_view = mx.swapaxes(view, -1, -2)
    y, lx = mle.expm_frechet(view, e_view, stream=device)
    xr, lr = frechet_ref(ref, np.swapaxes(ref, -1, -2))
    assert_relerr(
        to_np(y).reshape(-1, n, n), xr.reshape(-1, n, n), tol_for(mx.float32, 6), name
    )
    assert_relerr(
        to_np(lx).reshape(-1, n, n),
        lr.reshape(-1, n, n),
        2 * tol_for(mx.float32, 6),
        name,
    )


def test_non_contiguous_complex_and_float64(device, rng):
    c = rng.standard_normal((3, 5, 5)) + 1j * rng.standard_normal((3, 5, 5))
    cm = mx.swapaxes(mx.array(c.astype(np.complex64)), -1, -2)[::2]
    cref = np.swapaxes(c.astype(np.complex64).astype(np.complex128), -1, -2)[::2]
    assert_relerr(
        to_np(mle.matrix_exp(cm, stream=device)),
        expm_ref(cref),
        tol_for(mx.complex64, 10),
        "",
    )
    if device == mx.cpu:
        d = rng.standard_normal((4, 5, 5))
        dm = mx.array(d, dtype=mx.float64)[1:, ::2, 1:4]
        assert_relerr(
            to_np(mle.matrix_exp(dm, stream=device)),
            expm_ref(d[1:, ::2, 1:4]),
            tol_for(mx.float64, 5),
            "",
        )


def test_gradient_of_non_contiguous_input(device, rng):
    base = rng.standard_normal((6, 6)).astype(np.float32) * 0.5
    w = rng.standard_normal((3, 3)).astype(np.float32)

    def loss(x):
        return mx.sum(mx.array(w) * mle.matrix_exp(x.T[::2, ::2], stream=device))

    g = to_np(mx.grad(loss)(mx.array(base)))
    sub = base.astype(np.float64).T[::2, ::2]
    lsub = frechet_ref(sub.T, w)[1]
    want = np.zeros((6, 6))
    want.T[::2, ::2] = lsub
    assert_relerr(g, want, 4e-6, "grad of a view")


# --- streams -------------------------------------------------------------------


def test_stream_forms(rng):
    a = rng.standard_normal((2, 4, 4)).astype(np.float32)
    ref = expm_ref(a)
    s = mx.new_stream(mx.cpu)
    for stream in (None, mx.cpu, mx.Device(mx.cpu), mx.default_stream(mx.cpu), s):
        x = mle.matrix_exp(mx.array(a), stream=stream)
        assert_relerr(to_np(x), ref, tol_for(mx.float32, 8), str(stream))


def test_results_across_two_streams(device, rng):
    """Results made on two streams of one device, some consumed on the other
    stream, some dropped before use: every value right, and (on CUDA, where
    a dropped result is freed at the next call on the stream that made it)
    no memory kept once both streams ran again."""
    a = rng.standard_normal((3, 24, 24)).astype(np.float32) * 0.3
    s2 = mx.new_stream(device)
    streams = [mx.default_stream(device), s2]
    x = mx.array(a)

    def one_call_each():
        # Each frees what waits on its stream; its own result then waits.
        for s in streams:
            mx.eval(mle.matrix_exp(x, stream=s))
        mx.synchronize(s2)
        mx.synchronize()

    one_call_each()
    # Garbage from earlier tests (reference cycles holding arrays) would
    # otherwise be collected between the two measurements.
    gc.collect()
    held = _active_memory()
    kept = []
    for i in range(8):
        y = mle.matrix_exp(x * (1 + 0.1 * i), stream=streams[i % 2])
        dropped = mle.matrix_exp(x * 2.0, stream=streams[(i + 1) % 2])
        mx.async_eval(dropped)
        del dropped
        # Consumed on the other stream than the one that made it.
        kept.append((i, mx.multiply(y, 1.0, stream=streams[(i + 1) % 2])))
    mx.eval([k for _, k in kept])
    for i, k in kept:
        ai = a * np.float32(1 + 0.1 * i)
        assert_relerr(to_np(k), expm_ref(ai), tol_for(mx.float32, onenorm(ai).max()), i)
    del kept, y, k
    gc.collect()
    one_call_each()
    assert _active_memory() == held


@pytest.mark.gpu_only
def test_has_gpu_kernels_flag(device, rng):
    """has_gpu_kernels says what a GPU stream runs. Without the kernels the op
    runs the CPU code whatever the stream: bit for bit the CPU result. With
    them on CUDA the result is a buffer of this package, which
    get_active_memory counts while it is referenced."""
    a = mx.array(rng.standard_normal((8, 16, 16)).astype(np.float32) * 0.3)
    mx.eval(a)
    x = mle.matrix_exp(a, stream=device)
    mx.eval(x)
    if not mle.has_gpu_kernels:
        want = mle.matrix_exp(a, stream=mx.cpu)
        np.testing.assert_array_equal(np.array(x), np.array(want))
    else:
        assert mle.get_active_memory() >= x.nbytes
    assert_relerr(to_np(x), expm_ref(to_np(a)), tol_cond(mx.float32, to_np(a)), "")


# --- memory --------------------------------------------------------------------


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _active_memory():
    """MLX's active memory plus the GPU buffers this package holds outside
    MLX's allocator (results and workspaces on CUDA)."""
    return mx.get_active_memory() + mle.get_active_memory()


def test_repeated_calls_do_not_grow_mlx_memory(device, rng):
    """After warm-up, the active memory (MLX's and this package's own GPU
    buffers) returns to its baseline after every call and the peak of each
    call stays the same (no growth, no leak)."""
    a = mx.array(rng.standard_normal((8, 48, 48)).astype(np.float32) * 0.2)
    e = mx.array(rng.standard_normal((8, 48, 48)).astype(np.float32))
    mx.eval(a, e)

    def step():
        peaks = []
        for f in (
            lambda: mle.matrix_exp(a, stream=device),
            lambda: mle.expm_frechet(a, e, stream=device),
            lambda: mx.grad(lambda t: mx.sum(mle.matrix_exp(t, stream=device)))(a),
        ):
            mx.synchronize()
            mx.reset_peak_memory()
            out = f()
            mx.eval(out)
            del out
            mx.synchronize()
            # This package's buffers of the call are still held here: a
            # dropped result is freed at the next GPU evaluation.
            peaks.append(mx.get_peak_memory() + mle.get_active_memory())
        return peaks

    step()
    gc.collect()
    base_active = _active_memory()
    first = step()
    # Each call holds at least its input copy or its output while it runs.
    assert all(p >= a.nbytes for p in first), first
    for i in range(30):
        peaks = step()
        assert all(p <= q + a.nbytes for p, q in zip(peaks, first)), (i, peaks, first)
    gc.collect()
    grown = _active_memory() - base_active
    # A leak of even one input-sized buffer per call would be 30x this slack.
    assert grown <= a.nbytes, f"active memory grew by {grown} bytes over 30 calls"


@pytest.mark.cuda_only  # elsewhere the counter is 0 by construction
@pytest.mark.parametrize("n", [40, 200])  # fused kernel; GEMM path (workspace)
def test_gpu_buffers_are_freed(device, rng, n):
    """The GPU results held outside MLX's allocator are counted while
    referenced and freed once dropped (at the next GPU evaluation); the
    workspace of the GEMM path is freed when the evaluation is done."""
    a = mx.array(rng.standard_normal((4, n, n)).astype(np.float32) * (12 / n))
    mx.eval(a)
    # Its dropped result waits to be freed at the next evaluation.
    mx.eval(mle.matrix_exp(a, stream=device))
    mx.synchronize()
    base = mle.get_active_memory()
    kept = [mle.matrix_exp(a * (i + 1), stream=device) for i in range(4)]
    mx.eval(kept)
    mx.synchronize()  # MLX releases an evaluation's temporaries after it
    held = mle.get_active_memory() - base
    # Four results held; the one waiting was freed.
    assert held == 3 * a.nbytes, held
    del kept
    gc.collect()
    mx.eval(mle.matrix_exp(a, stream=device))
    mx.synchronize()
    assert mle.get_active_memory() == base


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_repeated_calls_do_not_grow_process_memory(rng):
    """The CPU evaluator's own scratch buffers are not MLX allocations: check
    the resident set size too (a leak of one call's scratch is ~4 MB here)."""
    a = mx.array(rng.standard_normal((16, 64, 64)).astype(np.float32) * 0.2)
    mx.eval(a)
    for _ in range(20):
        mx.eval(*mle.expm_frechet(a, a, stream=mx.cpu))
    gc.collect()
    before = _rss_bytes()
    for _ in range(150):
        mx.eval(*mle.expm_frechet(a, a, stream=mx.cpu))
        mx.eval(mle.matrix_exp(a, stream=mx.cpu))
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 48 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 150 calls"
