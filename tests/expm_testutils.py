"""Reference helpers shared by the tests (no fixtures here, see conftest.py).

All references are computed independently of the package under test:
SciPy in float64/complex128, mpmath at high precision, truncated Taylor series
in float64 for tiny norms, or closed forms written in the tests themselves.
"""

import mlx.core as mx
import mpmath
import numpy as np
import scipy.linalg as sla

U32 = 2.0**-24  # unit roundoff of float32 (and complex64)
U64 = 2.0**-53  # unit roundoff of float64

# Degree thresholds on the 1-norm (Bader, Blanes & Casas 2019), as documented
# in csrc/expm_numerics.h: degrees 1, 2, 4, 8, 12, 18, then scaling and squaring.
THETA32 = [
    1.192092800768788e-07,
    5.978858893805233e-04,
    5.116619363445086e-02,
    5.800524627688768e-01,
    1.461661507209034e00,
    3.010066362817634e00,
]
THETA64 = [
    2.220446049250313e-16,
    2.580956802971767e-08,
    3.397168839976962e-04,
    4.991228871115323e-02,
    2.996158913811580e-01,
    1.090863719290036e00,
]

# Normwise relative error bounds, scaled by max(1, ||A||_1) because the
# condition number of exp grows with the norm and the rounding of A itself is
# relative to it. Measured on this machine (CPU, n <= 12, 20 matrices per
# point): float32/complex64 at most 1.0 u up to ||A||_1 = 0.6 and 14 u
# max(1, ||A||_1) beyond; float64 at most 3 u up to 0.6 and 131 u max(1, ||A||_1)
# beyond (SciPy's own error is of the same size there).
TOL32_SMALL = 6 * U32  # ||A||_1 <= 0.6 (degrees 1 to 8): ~3.6e-7
TOL32 = 24 * U32  # ~1.4e-6
TOL64 = 4e-14  # ~360 u, the "~1e-13" of the spec with margin to spare


MX_DTYPES = {
    "float32": mx.float32,
    "float64": mx.float64,
    "complex64": mx.complex64,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
}


# Bounds from the condition of the problem, for float32/complex64 against
# float64 references. The relative condition number of exp at A is at least
# ||A||_2 and equal to it for normal A (Van Loan 1977): rounding errors of
# size u committed anywhere in the evaluation reach the result amplified by
# about max(1, ||A||_2). Measured on this machine (CPU; n = 2..9, 1-norms
# 1e-4..1e4, Gaussian, (negative) stochastic and dissipative matrices, 32 per
# point): the normwise error of exp(A) is at most 7.3 u max(1, ||A||_2) and
# at most 1.3 u up to ||A||_1 = 0.6; that of the vjp at most 3.0 u max(1,
# ||A||_2). The bounds below are ~1.6-5x those maxima, so that an error 10x
# the usual one fails at every norm.
C_SMALL = 6  # ||A||_1 <= 0.6: degree <= 8, no squaring
C_EXP = 12  # exp(A) beyond
C_DERIV = 8  # Frechet derivative, jvp and vjp beyond


def tol_cond(dtype, a, c=C_EXP):
    """Normwise relative error bound of each matrix of the batch ``a``:
    C_SMALL u up to ||A||_1 = 0.6, c u max(1, ||A||_2) beyond, times
    sqrt(n / 16) for n > 16 (float32 and complex64); float64 keeps ``tol_for`` (its references are SciPy's, whose
    own error dominates)."""
    a = np.asarray(a).reshape(-1, *np.shape(a)[-2:])
    n1 = onenorm(a)
    if dtype in (mx.float64, np.float64, "float64"):
        return np.array([tol_for(dtype, nu) for nu in n1])
    n2 = np.linalg.norm(a, 2, axis=(-2, -1)) if a.size else n1
    # Inner products of length n round like sqrt(n) u (on average): the
    # constants were measured up to n = 12.
    grow = np.sqrt(max(1.0, a.shape[-1] / 16))
    return grow * np.where(n1 <= 0.6, C_SMALL * U32, c * U32 * np.maximum(1.0, n2))


def tol_for(dtype, norm=1.0):
    """The normwise relative error bound for a matrix of 1-norm ``norm``."""
    norm = float(norm)
    if dtype in (mx.float64, np.float64, "float64"):
        return TOL64 * max(1.0, norm)
    return (TOL32_SMALL if norm <= 0.6 else TOL32) * max(1.0, norm)


def to_mx(a, dtype):
    """An mx.array of ``dtype`` holding ``a`` (numpy)."""
    a = np.asarray(a)
    if dtype == mx.float64:
        return mx.array(a.astype(np.float64), dtype=mx.float64)
    if dtype == mx.complex64:
        return mx.array(a.astype(np.complex64))
    return mx.array(a.astype(np.float32)).astype(dtype)


def to_np(x):
    """float64 / complex128 numpy copy of an mx.array (any dtype)."""
    if x.dtype in (mx.float16, mx.bfloat16):
        x = x.astype(mx.float32)
    out = np.array(x)
    return out.astype(np.complex128 if np.iscomplexobj(out) else np.float64)


def rounded(a, dtype):
    """``a`` rounded to ``dtype`` and back to float64/complex128: the exact input
    the op sees, so references are not charged with the input rounding."""
    return to_np(to_mx(a, dtype))


def expm_ref(a):
    """scipy.linalg.expm in float64/complex128 of each matrix of a batch."""
    a = np.asarray(a)
    a = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    out = np.empty_like(a)
    for idx in np.ndindex(a.shape[:-2]):
        out[idx] = sla.expm(a[idx])
    return out


def expm_mp(a, dps=32):
    """mpmath.expm at ``dps`` digits of each matrix of a batch, rounded to
    float64/complex128. Used as the float64 reference where SciPy's own error
    (up to ~2e3 u, e.g. for positive matrices of norm 3.5) would dominate."""
    a = np.asarray(a)
    cplx = np.iscomplexobj(a)
    out = np.empty(a.shape, dtype=np.complex128 if cplx else np.float64)
    with mpmath.workdps(dps):
        for idx in np.ndindex(a.shape[:-2]):
            r = mpmath.expm(mpmath.matrix(a[idx].tolist()))
            r = np.array(r.tolist(), dtype=np.complex128)
            out[idx] = r if cplx else r.real
    return out


def frechet_ref(a, e):
    """scipy.linalg.expm_frechet per matrix; a and e must have equal shapes."""
    cplx = np.iscomplexobj(a) or np.iscomplexobj(e)
    dt = np.complex128 if cplx else np.float64
    a = np.asarray(a, dtype=dt)
    e = np.asarray(e, dtype=dt)
    x = np.empty_like(a)
    lx = np.empty_like(a)
    for idx in np.ndindex(a.shape[:-2]):
        x[idx], lx[idx] = sla.expm_frechet(a[idx], e[idx])
    return x, lx


def taylor_expm1(a, terms=40):
    """exp(a) - I by its Taylor series in float64: accurate for tiny norms,
    where exp(a) - I cannot be recovered from exp(a) itself."""
    a = np.asarray(a)
    term = a.copy()
    total = a.copy()
    for k in range(2, terms):
        term = term @ a / k
        total = total + term
    return total


def onenorm(a):
    """The 1-norm (largest column sum) of each matrix of a batch."""
    return np.abs(np.asarray(a)).sum(axis=-2).max(axis=-1)


def relerr(x, r):
    """Normwise (Frobenius) relative error of each matrix of a batch."""
    num = np.linalg.norm(np.asarray(x) - r, axis=(-2, -1))
    den = np.linalg.norm(r, axis=(-2, -1))
    return num / den


def offdiag_relerr(x, r):
    """Relative error on the off-diagonal entries only. For tiny norms those
    carry A, A^2/2, ... at full precision, while the diagonal rounds to 1, so
    this metric sees a wrong low-order coefficient that relerr cannot."""
    n = r.shape[-1]
    mask = ~np.eye(n, dtype=bool)
    d = (np.asarray(x) - r)[..., mask]
    return np.linalg.norm(d, axis=-1) / np.linalg.norm(r[..., mask], axis=-1)


def matrix_with_norm(rng, n, norm, kind="gauss", complex_=False):
    """An n x n matrix of 1-norm exactly ``norm`` (up to rounding).

    kind="gauss": i.i.d. normal entries (only sensible up to norm ~5, beyond
        which exp(A) may overflow).
    kind="stochastic" / "neg_stochastic": +-norm times a column-stochastic
        matrix with positive entries, so ||A^k||_1 = norm^k exactly: every
        Taylor term is as large as it can be, which exposes a wrong
        coefficient of a high power (only sensible up to norm ~5).
    kind="dissipative": a large skew-symmetric (skew-Hermitian) part of the
        requested norm plus a negative semidefinite part of norm ~1, so that
        ||exp(A)||_2 <= 1 and exp(A) stays of order one at any norm: the way
        to reach the scaling-and-squaring regime without overflow.
    """

    def draw():
        g = rng.standard_normal((n, n))
        if complex_:
            g = g + 1j * rng.standard_normal((n, n))
        return g

    if kind == "gauss":
        a = draw()
    elif kind in ("stochastic", "neg_stochastic"):
        p = np.abs(draw())
        a = p / p.sum(axis=0) * (1 if kind == "stochastic" else -1)
    elif kind == "dissipative":
        k = draw()
        k = k - k.conj().T
        k *= norm / max(onenorm(k), 1e-300)
        b = draw()
        s = b @ b.conj().T
        a = k - s / onenorm(s)
    else:
        raise ValueError(kind)
    return a * (norm / onenorm(a))


def _assert_within(err, tol, what, kind):
    """Every entry of err (one per batch element) at most tol."""
    err = np.atleast_1d(err)
    tol = np.broadcast_to(np.asarray(tol, dtype=float), err.shape)
    bad = np.nonzero(~(err <= tol))[0]
    assert bad.size == 0, (
        f"{what}: {kind} {err[bad]} exceeds {tol[bad]} (batch elements {bad.tolist()})"
    )


def assert_relerr(x, r, tol, what=""):
    """Every matrix of the batch x within normwise relative error tol of r."""
    _assert_within(relerr(x, r), tol, what, "normwise relative error")


def assert_offdiag_relerr(x, r, tol, what=""):
    _assert_within(offdiag_relerr(x, r), tol, what, "off-diagonal relative error")
