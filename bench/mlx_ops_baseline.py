"""The pure-MLX-ops ``matrix_exp`` from the feature request, as a benchmark baseline.

This re-implements the Python version posted in the MLX feature request (ported by
its author from PyTorch's ``mexp``): Taylor approximants T1, T2, T4 and T8 chosen
by the 1-norm with a Python ``if`` chain, and above the degree-8 threshold scaling
by 2^-s, T8, and a Python loop of ``s`` squarings whose length is read with
``.item()``. Every ``if`` and the loop length force a graph evaluation, which is
the problem ``mlx_linalg_ext.matrix_exp`` solves. The algorithm is kept as the
user wrote it, on purpose, including its flaws, because it is what we compare
against. The deviations needed to make it run at all are marked "ADAPTED".
"""

import math

import mlx.core as mx

# 1-norm thresholds for degrees 1, 2, 4, 8, 12, 18 (Bader, Blanes & Casas 2019,
# as in PyTorch). The user's version only uses the first four.
THETA_FLOAT32 = (
    1.192092800768788e-07,
    5.978858893805233e-04,
    5.116619363445086e-02,
    5.800524627688768e-01,
    1.461661507209034e00,
    3.010066362817634e00,
)
THETA_FLOAT64 = (
    2.220446049250313e-16,
    2.580956802971767e-08,
    3.397168839976962e-04,
    4.991228871115323e-02,
    2.996158913811580e-01,
    1.090863719290036e00,
)


def _eye_like(a):
    return mx.eye(a.shape[-1])


def _t1(a):
    """I + A."""
    return _eye_like(a) + a


def _t2(a):
    """I + A + A^2/2."""
    a2 = a @ a
    return _eye_like(a) + a + a2 / 2


def _t4(a):
    """I + A + A^2 (I/2 + A/6 + A^2/24)."""
    a2 = a @ a
    inner = _eye_like(a) / 2 + a / 6 + a2 / 24
    return _eye_like(a) + a + a2 @ inner


def _t8(a):
    """Degree-8 approximant with three products, coefficients as the user wrote them.

    NOTE: x7 below is (89 - sqrt(177)) / (5040 * x3), copied from the user's code,
    which copied it from PyTorch's ``compute_T8``. The paper (Bader, Blanes & Casas
    2019, eq. for the degree-8 scheme) has x3**2 in that denominator. With x3 the
    polynomial's Taylor coefficients are wrong from degree 5 on (relative errors of
    about 10% at A^5 up to 33% at A^8), so this approximant (and PyTorch's) is
    inexact beyond degree 4 and the result carries a truncation error far above the
    float32 rounding level whenever T8 is used. mlx_linalg_ext uses the paper's
    value. We keep the user's value here because this is the baseline.
    """
    sqrt_177 = 0.1330413469565007072504e2
    x3 = 2 / 3
    x1 = x3 * ((1 + sqrt_177) / 88)
    x2 = x3 * ((1 + sqrt_177) / 352)
    x4 = (-271 + 29 * sqrt_177) / (315 * x3)
    x5 = (-11 + 11 * sqrt_177) / (1260 * x3)
    x6 = (-99 + 11 * sqrt_177) / (5040 * x3)
    x7 = (89 - sqrt_177) / (5040 * x3)  # paper: (5040 * x3**2), see docstring
    y2 = (857 - 58 * sqrt_177) / 630
    a2 = a @ a
    a4 = a2 @ (x1 * a + x2 * a2)
    a8 = (x3 * a2 + a4) @ (x4 * _eye_like(a) + x5 * a + x6 * a2 + x7 * a4)
    return _eye_like(a) + a + y2 * a2 + a8


def matrix_exp(a: mx.array) -> mx.array:
    """exp(a) for ``a`` of shape ``(..., n, n)``, the user's algorithm.

    dtype notes (all as in the user's code):
      * float32 uses the float32 thresholds; every other dtype, complex64
        included, uses the float64 ones, so complex64 does about 3-4 more
        squarings than it needs.
      * float64 runs on MLX's CPU stream only (MLX has no float64 on the GPU).
    """
    if a.shape[-2:] == (0, 0):
        return a  # ADAPTED: the user wrote A.clone(); MLX arrays are immutable.
    if a.shape[-2:] == (1, 1):
        return mx.exp(a)

    matrix_norm = mx.max(mx.sum(mx.abs(a), axis=-2), axis=-1)
    theta = THETA_FLOAT32 if a.dtype == mx.float32 else THETA_FLOAT64

    # ADAPTED: the user's ``if matrix_norm <= ...`` needs one element (bool() of a
    # larger MLX array raises). For a batch we branch on the largest norm, which is
    # still one host read per comparison like the user's single-matrix case.
    branch_norm = matrix_norm if matrix_norm.size == 1 else mx.max(matrix_norm)
    if branch_norm <= theta[0]:
        return _t1(a)
    elif branch_norm <= theta[1]:
        return _t2(a)
    elif branch_norm <= theta[2]:
        return _t4(a)
    elif branch_norm <= theta[3]:
        return _t8(a)

    # Larger norms: scaling and squaring with T8.
    s = mx.maximum(mx.zeros_like(matrix_norm), mx.ceil(mx.log2(matrix_norm / theta[3])))
    s = s.astype(mx.int32)
    a_scaled = a / mx.expand_dims(mx.expand_dims(2.0**s, -1), -1)
    x = _t8(a_scaled)

    # ADAPTED: the user's ``mx.where(s > 0, ...)`` broadcasts s of shape (batch,)
    # against the last matrix axis; it needs the two trailing axes to run on a batch
    # of more than one matrix (it is the same computation for one matrix).
    s = mx.expand_dims(mx.expand_dims(s, -1), -1)
    max_s = int(mx.max(s).item())
    for _ in range(max_s):
        x = mx.where(s > 0, x @ x, x)
        s = s - 1
    return x


def degree8_coefficient_error() -> list[float]:
    """Relative error of the user's T8 Taylor coefficients, degrees 0..8.

    Evaluates ``_t8`` on scalars (1x1 matrices multiply like numbers) for a few
    points and solves for the polynomial coefficients; used only to document the
    x7 issue. Entry k is c_k * k! - 1.
    """
    import numpy as np

    pts = np.linspace(-0.9, 0.9, 9)
    vals = [float(_t8(mx.array([[p]], dtype=mx.float64)).item()) for p in pts]
    coef = np.polynomial.polynomial.polyfit(pts, vals, 8)
    return [float(c * math.factorial(k) - 1) for k, c in enumerate(coef)]
