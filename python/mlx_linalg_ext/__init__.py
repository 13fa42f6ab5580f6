"""Matrix exponential for MLX, with exact derivatives.

``matrix_exp(a)`` computes exp(a) for every square matrix of a batch
``(..., n, n)``. The Taylor degree and the number of squarings are chosen per
matrix inside the op (Bader, Blanes & Casas 2019), so it needs no host
synchronisation and works under ``mx.compile``, ``mx.vmap``, ``mx.grad``,
``mx.jvp`` and ``mx.vjp`` (to any order).
"""

from typing import TYPE_CHECKING, Any, Union

import mlx.core as mx  # loads libmlx before the extension

from ._ext import expm_frechet as _expm_frechet
from ._ext import get_active_memory as _get_active_memory
from ._ext import has_gpu_kernels
from ._ext import matrix_exp as _matrix_exp

__all__ = ["expm_frechet", "get_active_memory", "has_gpu_kernels", "matrix_exp"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    import numpy as np

# What the ops take: what MLX's own ops convert (scalars, objects with the
# buffer, __array__ or DLPack protocol), and nested sequences as mx.array does.
ArrayLike = Union[mx.array, "np.ndarray", list, tuple, complex, float, int, bool]
_SCALARS = (bool, int, float, complex)


def _as_array(op: str, x: Any) -> mx.array:
    """x as an mx.array, converted as MLX converts the operands of its ops:
    Python scalars, objects with the buffer, ``__array__`` or DLPack protocol
    (numpy arrays: float64 becomes float32, as in ``mx.array``), and nested
    lists and tuples."""
    if isinstance(x, mx.array):
        return x
    if not isinstance(x, (*_SCALARS, list, tuple)) and not (
        hasattr(x, "__array__") or hasattr(x, "__dlpack__") or _has_buffer(x)
    ):
        raise TypeError(
            f"[{op}] Expected an array-like (mx.array, numpy array, list, scalar), "
            f"got {type(x).__name__}."
        )
    try:
        return mx.array(x)
    except Exception as err:  # a ragged list, a numpy array of objects, ...
        kind = ValueError if isinstance(err, ValueError) else TypeError
        raise kind(
            f"[{op}] Could not convert the {type(x).__name__} to an array: {err}"
        ) from err


def _has_buffer(x: Any) -> bool:
    try:
        memoryview(x)
    except TypeError:
        return False
    return True


def matrix_exp(
    a: ArrayLike, /, *, stream: mx.Stream | mx.Device | None = None
) -> mx.array:
    """The matrix exponential exp(a) of each matrix of a batch.

    Args:
        a: array of shape ``(..., n, n)``. float32, float16, bfloat16 (computed
            in float32, returned in the input dtype), float64 (CPU stream only)
            or complex64. Integer and bool inputs promote to float32. Array-likes
            (numpy arrays, nested lists) are converted as ``mx.array(a)`` converts
            them: numpy float64 becomes float32, as for MLX's own ops; pass
            ``mx.array(a, dtype=mx.float64)`` to compute in float64.
        stream: stream or device to run on. Builds without GPU kernels run on
            the CPU stream whatever is asked.

    Returns:
        exp(a), same shape; float dtypes as the input, float32 for integers.

    Raises:
        TypeError: if ``a`` is not an array-like.
        ValueError: if ``a`` has fewer than 2 dimensions or non-square trailing
            dimensions, or is float64 on a GPU stream.

    A matrix containing NaN or Inf gives NaN in its own result only; so does
    a matrix whose 1-norm (after the trace shift) exceeds 1/u of the
    precision (float32 and complex64: 2**24; float64: 2**53), where the
    precision cannot carry an answer. The derivatives are exact: ``jvp`` is the Frechet derivative L(a, t) and
    ``vjp`` is L(a^H, g), both computed by differentiating the same Taylor
    evaluation and squarings.

    Example:
        >>> import mlx.core as mx, mlx_linalg_ext as mle
        >>> w = mx.random.normal((4, 4))
        >>> q = mle.matrix_exp(w - w.T)  # orthogonal
    """
    return _matrix_exp(_as_array("matrix_exp", a), stream=stream)


def expm_frechet(
    a: ArrayLike, e: ArrayLike, /, *, stream: mx.Stream | mx.Device | None = None
) -> tuple[mx.array, mx.array]:
    """exp(a) and the Frechet derivative L(a, e), like scipy.linalg.expm_frechet.

    L(a, e) = d/dt exp(a + t e) at t = 0. Both are computed together at about
    three times the cost of exp(a) alone (Al-Mohy & Higham 2009).

    Args:
        a, e: arrays of shape ``(..., n, n)`` with the same n; batch dimensions
            broadcast. Dtypes and array-likes as for :func:`matrix_exp`
            (promoted together).
        stream: stream or device to run on.

    Returns:
        ``(exp(a), L(a, e))``.

    Raises:
        TypeError: if ``a`` or ``e`` is not an array-like.
        ValueError: for shapes as in :func:`matrix_exp`, or if the n differ.
    """
    return _expm_frechet(
        _as_array("expm_frechet", a), _as_array("expm_frechet", e), stream=stream
    )


def get_active_memory() -> int:
    """Bytes of GPU memory held by this package's own buffers.

    On CUDA the results and workspaces of the ops are device memory taken
    from the same pool as MLX's, but outside MLX's allocator, so
    ``mx.get_active_memory()`` and ``mx.get_peak_memory()`` do not count them.
    This counts them: results still referenced, workspaces of evaluations in
    flight, and dropped results waiting to be freed (at the next GPU
    evaluation of these ops on the same stream). 0 for builds without GPU
    kernels and on the CPU.
    """
    return _get_active_memory()
