"""What the ops accept: mx.array and the array-likes MLX's own ops convert
(numpy arrays, scalars, objects with the buffer or DLPack protocol), nested
lists and tuples as mx.array converts them; anything else is a TypeError that
names the op and the type."""

import math

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import pytest
import scipy.linalg as sla

F32_TOL = 5e-6


def _relerr(x, ref):
    return float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))


def _rotation(t):
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


@pytest.mark.parametrize(
    "np_dtype", [np.float64, np.float32, np.float16, np.complex128, np.int64]
)
def test_numpy_input_converts_like_mlx_ops(rng, np_dtype):
    a = rng.standard_normal((3, 5, 5)) * 0.4
    if np.issubdtype(np_dtype, np.complexfloating):
        a = a + 0.4j * rng.standard_normal(a.shape)
    if np.issubdtype(np_dtype, np.integer):
        a = rng.integers(-2, 3, a.shape)
    a = a.astype(np_dtype)
    x = mle.matrix_exp(a)
    # The dtype MLX's own elementwise op gives the same operand.
    assert x.dtype == mx.exp(a).dtype
    assert x.shape == a.shape
    tol = 5e-3 if np_dtype == np.float16 else F32_TOL
    wide = np.complex128 if np.iscomplexobj(a) else np.float64
    assert (
        _relerr(
            x.astype(mx.complex64 if x.dtype == mx.complex64 else mx.float32),
            sla.expm(a.astype(wide)),
        )
        < tol
    )


def test_numpy_float64_is_float32_like_mx_array(rng):
    a = rng.standard_normal((4, 4))
    assert mle.matrix_exp(a).dtype == mx.array(a).dtype == mx.float32
    # float64 is asked for explicitly, as with MLX's ops.
    x = mle.matrix_exp(mx.array(a, dtype=mx.float64))
    assert x.dtype == mx.float64
    assert _relerr(x, sla.expm(a)) < 1e-13


@pytest.mark.parametrize("t", [1e-3, 0.5, 2.0, 30.0])
def test_nested_list_and_tuple_rotation_generator(t):
    ref = _rotation(t)
    for a in ([[0.0, -t], [t, 0.0]], ((0.0, -t), (t, 0.0))):
        x = mle.matrix_exp(a)
        assert x.dtype == mx.float32
        assert _relerr(x, ref) < F32_TOL * max(1.0, t)


def test_nested_list_batch_and_ints():
    # A batch of two nilpotent matrices of integers: exp(N) = I + N.
    x = mle.matrix_exp([[[0, 1], [0, 0]], [[0, 0], [3, 0]]])
    assert x.dtype == mx.float32
    np.testing.assert_array_equal(
        np.array(x), [[[1.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [3.0, 1.0]]]
    )


def test_complex_list():
    # exp(diag(i t)) = diag(e^(i t)).
    x = mle.matrix_exp([[1j, 0], [0, -2j]])
    assert x.dtype == mx.complex64
    ref = np.diag([np.exp(1j), np.exp(-2j)])
    assert _relerr(x, ref) < F32_TOL


def test_buffer_protocol_and_dlpack(rng):
    a = (rng.standard_normal((6, 6)) * 0.5).astype(np.float32)
    ref = sla.expm(a.astype(np.float64))
    assert _relerr(mle.matrix_exp(memoryview(a)), ref) < F32_TOL
    torch = pytest.importorskip("torch")
    assert _relerr(mle.matrix_exp(torch.from_numpy(a)), ref) < F32_TOL


def test_expm_frechet_array_likes(rng):
    a = rng.standard_normal((5, 5)) * 0.5
    e = rng.standard_normal((5, 5))
    ref_x, ref_l = sla.expm_frechet(a, e)
    for ea in (e, e.tolist()):
        x, l_ = mle.expm_frechet(a.tolist(), ea)
        assert _relerr(x, ref_x) < F32_TOL
        assert _relerr(l_, ref_l) < 2 * F32_TOL


def test_array_like_with_stream(rng):
    a = rng.standard_normal((4, 4)) * 0.5
    x = mle.matrix_exp(a, stream=mx.cpu)
    assert _relerr(x, sla.expm(a)) < F32_TOL


@pytest.mark.parametrize(
    "bad", [{"a": 1}, "abc", None, object(), {1.0, 2.0}], ids=lambda v: type(v).__name__
)
def test_not_array_like_is_type_error(bad):
    name = type(bad).__name__
    msg = f"Expected an array-like (mx.array, numpy array, list, scalar), got {name}."
    with pytest.raises(TypeError) as info:
        mle.matrix_exp(bad)
    assert str(info.value) == f"[matrix_exp] {msg}"
    with pytest.raises(TypeError) as info:
        mle.expm_frechet(mx.eye(2), bad)
    assert str(info.value) == f"[expm_frechet] {msg}"
    with pytest.raises(TypeError) as info:
        mle.expm_frechet(bad, mx.eye(2))
    assert str(info.value) == f"[expm_frechet] {msg}"


def test_unconvertible_contents():
    with pytest.raises(ValueError, match=r"^\[matrix_exp\] .*list"):
        mle.matrix_exp([[1.0, 2.0], [3.0]])  # ragged
    with pytest.raises(TypeError, match=r"^\[matrix_exp\] .*ndarray"):
        mle.matrix_exp(np.array([[None, 1], [2, 3]], dtype=object))


def test_scalar_is_converted_then_refused_for_its_shape():
    # A scalar is an array-like (as for mx.exp) but not a matrix.
    with pytest.raises(ValueError, match=r"^\[matrix_exp\] .*shape \(\)"):
        mle.matrix_exp(2.0)


def test_array_likes_inside_transforms(rng):
    # The conversion happens before the op, so constants may be array-likes
    # inside a traced function: d/da sum(exp(a) * G) = L(a^T, G).
    a = rng.standard_normal((4, 4)) * 0.5
    g = rng.standard_normal((4, 4))

    def f(m):
        return (mle.matrix_exp(m) * mx.array(g.astype(np.float32))).sum()

    grad = mx.grad(f)(mx.array(a.astype(np.float32)))
    assert _relerr(grad, sla.expm_frechet(a.T, g)[1]) < 2 * F32_TOL
    x = mx.compile(lambda m: mle.matrix_exp(m) @ mle.matrix_exp(-m))(
        mx.array(a.astype(np.float32))
    )
    assert _relerr(x, np.eye(4)) < F32_TOL
