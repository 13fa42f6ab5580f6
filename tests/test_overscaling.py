"""Non-normal matrices: the squarings from ||B^2|| and ||B^3|| (expm::
refine_squarings, Al-Mohy & Higham 2009) on every device, and the exact
diagonal band of triangular matrices on the CPU (csrc/cpu/triangular.h).

The 1-norm of a non-normal matrix can exceed what bounds its Taylor remainder
by orders of magnitude; each squaring too many doubles the rounding error
already there. The bounds below are about twice the largest errors measured
with the refined choice, and far below those of the 1-norm choice (noted at
each): they fail if the refinement is lost.
"""

import math

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import pytest
import scipy.linalg as sla
from expm_testutils import (
    THETA32,
    THETA64,
    U32,
    U64,
    expm_mp,
    onenorm,
    relerr,
    rounded,
    to_mx,
    to_np,
)


def two_by_two(a, b, c, phase=1.0):
    """phase [[a, b], [c, -a]] (complex when phase is)."""
    m = phase * np.array([[a, b], [c, -a]], dtype=complex)
    return m if phase != 1.0 else m.real


def exp_two_by_two(m):
    """exp of a trace-free 2x2 matrix m: m^2 = lam I with lam = m00^2 + m01 m10,
    so exp(m) = cosh(r) I + sinh(r) / r m, r^2 = lam."""
    r = np.sqrt(complex(m[0, 0] ** 2 + m[0, 1] * m[1, 0]))
    e = np.cosh(r) * np.eye(2) + (np.sinh(r) / r if r != 0 else 1.0) * m
    return e if np.iscomplexobj(m) else e.real


# (a, b, c) of two_by_two at b = 1e2 .. 1e5: triangular, A^2 = I, A^2 = -3.75 I.
SHAPES = {
    "triangular": lambda b: (1.0, b, 0.0),
    "square-one": lambda b: (0.0, b, 1.0 / b),
    "rotation": lambda b: (0.5, b, -4.0 / b),
}
SIZES = [1e2, 1e3, 1e4, 1e5]


@pytest.mark.parametrize("b", SIZES, ids=lambda b: f"b{b:g}")
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("dtype", [mx.float32, mx.complex64], ids=str)
def test_non_normal_2x2(device, shape, b, dtype):
    # Refined choice: at most 17 u measured (float32 products, no exact
    # band); the 1-norm choice: 115 u (triangular, b = 1e3) to 7.5e4 u
    # (rotation, b = 1e5).
    phase = np.exp(0.7j) if dtype == mx.complex64 else 1.0
    a = rounded(two_by_two(*SHAPES[shape](b), phase=phase), dtype)
    ref = expm_mp(a)
    assert relerr(ref, exp_two_by_two(a)) < 1e-14  # the closed form, checked
    out = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert relerr(out, ref) <= 32 * U32


def jordan(n, lam, c):
    """lam I + c N (N the shift matrix) and exp of it: e^lam sum c^k N^k / k!."""
    a = lam * np.eye(n) + c * np.eye(n, k=1)
    e = sum(c**k / math.factorial(k) * np.eye(n, k=k) for k in range(n))
    return a, math.exp(lam) * e


def triangular(rng, n, scale, lower=False, complex_=False):
    """A triangular matrix with a Gaussian diagonal and off-diagonal entries
    `scale` times Gaussian."""

    def gauss():
        g = rng.standard_normal((n, n))
        return g + 1j * rng.standard_normal((n, n)) if complex_ else g

    a = np.triu(gauss(), 1) * scale + np.diag(np.diag(gauss()))
    return a.T if lower else a


def hard_cases():
    """(id, matrix, closed-form exponential or None) of the float64 table."""
    rng = np.random.default_rng(20261201)
    for b in [1e2, 1e4, 1e6, 1e8, 1e10]:
        a = two_by_two(1.0, b, 0.0)
        yield f"tri2-{b:g}", a, exp_two_by_two(a)
        a = two_by_two(0.0, b, 1.0 / b)
        yield f"square-one-{b:g}", a, exp_two_by_two(a)
    a = two_by_two(1.0, 1e6, 0.0).T
    yield "tri2-lower-1e6", a, exp_two_by_two(a.T).T
    for c in [1e1, 1e2, 1e3, 1e4]:
        yield (f"jordan6-{c:g}", *jordan(6, -1.0, c))
    yield ("jordan12-1e3", *jordan(12, -1.0, 1e3))
    for scale in [1e1, 1e2, 1e3]:
        for n in [8, 12]:
            yield f"triu{n}-{scale:g}", triangular(rng, n, scale), None
    yield "tril10-1e2", triangular(rng, 10, 1e2, lower=True), None
    # Moler & Van Loan (1978), "Nineteen Dubious Ways", Sec. 1.
    yield "moler", np.array([[-49.0, 24.0], [-64.0, 31.0]]), None


HARD = list(hard_cases())


@pytest.mark.parametrize("case", HARD, ids=[c[0] for c in HARD])
def test_float64_within_10x_of_scipy(case):
    # The accuracy target on the CPU (float64 runs there only). With
    # the 1-norm choice: 2.3e4 u (tri2, b = 1e4) up to 1.5e8 u (b = 1e10).
    _, a, closed = case
    ref = expm_mp(a, dps=40)
    if closed is not None:
        assert relerr(ref, closed) < 1e-14
    ours = relerr(to_np(mle.matrix_exp(to_mx(a, mx.float64))), ref)
    scipy = relerr(sla.expm(a), ref)
    assert ours <= max(10 * scipy, 4 * U64), f"ours {ours:.2e} scipy {scipy:.2e}"


@pytest.mark.cpu_backend
@pytest.mark.parametrize("dtype", [mx.float32, mx.complex64, mx.float64], ids=str)
@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
@pytest.mark.parametrize("n", [1, 3, 8, 12, 40])
def test_triangular_band_on_the_cpu(device, rng, n, lower, dtype):
    # With the exact band the error stays near u whatever s: at most 3.7 u
    # measured up to n = 12 and 15 u at n = 40 (complex64); without it, up to
    # 1.7e3 u (float32, n = 8, scale 1e3).
    cplx = dtype == mx.complex64
    a = triangular(rng, n, 1e3 if n <= 12 else 1e2, lower=lower, complex_=cplx)
    a = rounded(a, dtype)
    ref = expm_mp(a, dps=40)
    u = U64 if dtype == mx.float64 else U32
    out = to_np(mle.matrix_exp(to_mx(a, dtype)))
    assert relerr(out, ref) <= 8 * u * max(1, n / 8)
    # The diagonal itself is e^(a_ii), rounded once.
    d = np.diagonal(out)
    assert np.all(np.abs(d - np.exp(np.diagonal(a))) <= 2 * u * np.abs(d))


@pytest.mark.cpu_backend
def test_jordan_on_the_cpu(device):
    # exp(-I + c N) entry by entry in float32 on the CPU: the band is exact,
    # the rest follows from it (at most 0.6 u measured).
    for c in [1e1, 1e2, 1e3]:
        a, e = jordan(6, -1.0, c)
        out = to_np(mle.matrix_exp(to_mx(a, mx.float32)))
        assert relerr(out, e) <= 8 * U32, c


@pytest.mark.parametrize("dtype", [mx.float32, mx.complex64], ids=str)
@pytest.mark.parametrize("c", [1e3, 1e4, 1e7], ids=lambda c: f"c{c:g}")
@pytest.mark.parametrize("blocks", [1, 2, 6])
def test_jordan_blocks_need_the_sixth_power(device, blocks, c, dtype):
    # lam I + c N, 6x6, repeated down the diagonal (n = 6, 12, 36: the tiny,
    # fused and larger paths): B^6 = 0, so expm::refine_squarings_sixth
    # needs no squaring, where ||B^2||, ||B^3|| alone ask for 10 (c = 1e3)
    # and 14 (c = 1e4) and the float32 error reaches 2.8e-6 and 1.2e-4.
    # At c = 1e7 B^6 is scaled back by 64^24, past the float range in one
    # factor.
    lam = -1.0 + 0.5j if dtype == mx.complex64 else -1.0
    block = lam * np.eye(6) + c * np.eye(6, k=1)
    ref_block = np.exp(lam) * sum(
        c**k / math.factorial(k) * np.eye(6, k=k) for k in range(6)
    )
    a = np.kron(np.eye(blocks), block)
    ref = np.kron(np.eye(blocks), ref_block)
    out = to_np(mle.matrix_exp(to_mx(a, dtype), stream=device))
    assert relerr(out, ref) <= 16 * U32


def frechet_mp(a, e, dps=40):
    """L(A, E) from exp([[A, E], [0, A]]) (Higham 2008, (3.16)) at dps digits."""
    n = a.shape[-1]
    big = np.block([[a, e], [np.zeros_like(a), a]])
    return expm_mp(big, dps=dps)[:n, n:]


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64], ids=str)
@pytest.mark.parametrize("b", [1e3, 1e5], ids=lambda b: f"b{b:g}")
def test_frechet_uses_the_refined_scaling(device, rng, b, dtype):
    # Measured with the refined s: at most 8 u (float32), 24 u (float64);
    # with the 1-norm s (float32, b = 1e5): 1.1e3 u.
    a = rounded(two_by_two(0.5, b, -4.0 / b), dtype)
    e = rounded(rng.standard_normal((2, 2)), dtype)
    ref = frechet_mp(a, e)
    _, lx = mle.expm_frechet(to_mx(a, dtype), to_mx(e, dtype), stream=device)
    u = U64 if dtype == mx.float64 else U32
    assert relerr(to_np(lx), ref) <= 64 * u


@pytest.mark.parametrize("n", [3, 8, 20])
def test_neighbours_do_not_change_a_result(device, rng, n):
    # A matrix whose refined s (3) is far below its 1-norm's (12) among normal
    # ones of the same degree: each result is the one it gets alone.
    a = two_by_two(0.0, 1e4, 1e-4)
    hard = np.zeros((n, n))
    hard[:2, :2] = a
    normal = rng.standard_normal((7, n, n)) * 2.0
    batch = np.concatenate([normal[:3], hard[None], normal[3:]])
    together = np.array(
        mle.matrix_exp(mx.array(batch, dtype=mx.float32), stream=device)
    )
    for i, m in enumerate(batch):
        alone = np.array(mle.matrix_exp(mx.array(m, dtype=mx.float32), stream=device))
        np.testing.assert_array_equal(together[i], alone)


@pytest.mark.parametrize("double", [False, True], ids=["single", "double"])
def test_refine_squarings_rule(rng, double):
    # The rule against its definition: the least s, at most the 1-norm's, with
    # max(||B^2||^(1/2), ||B^3||^(1/3)) 2^-s <= theta_18.
    theta = (THETA64 if double else THETA32)[-1]
    for _ in range(200):
        b = rng.standard_normal((4, 4)) * 10.0 ** rng.uniform(-1, 5)
        b[np.tril_indices(4, -1)] *= 10.0 ** rng.uniform(-8, 0)
        n2, n3 = onenorm(b @ b), onenorm(b @ b @ b)
        cap = mle._ext.decide(onenorm(b), onenorm(b), double)[2]
        x = math.log2(max(n2**0.5, n3 ** (1 / 3)) / theta)
        want = min(cap, max(0, math.ceil(x)))
        got = mle._ext.refine_squarings(n2, n3, cap, double)
        if abs(x - round(x)) > 1e-9:  # not a tie within the roots' rounding
            assert got == want
    assert mle._ext.refine_squarings(float("nan"), 1.0, 7, double) == 7


@pytest.mark.parametrize("double", [False, True], ids=["single", "double"])
def test_refine_squarings_sixth_rule(rng, double):
    # Against the bound it implements: ||B^k|| <= (beta K^(1/18))^k for
    # k >= 19, beta = ||B^6||^(1/6), K = max_r N_r / beta^r over the
    # remainders r in {0, 2, 3, 4, 5, 7} of k mod 6 (N_r from ||B^2||,
    # ||B^3||), so s' = s + min(0, ceil(log2(beta K^(1/18) / theta))).
    theta = (THETA64 if double else THETA32)[-1]
    checked = 0
    for _ in range(300):
        n = 5
        b = rng.standard_normal((n, n)) * 10.0 ** rng.uniform(-1, 4)
        b[np.tril_indices(n, -1)] *= 10.0 ** rng.uniform(-12, 0)
        s = int(rng.integers(0, 12))
        bs = b * 2.0**-s
        n2, n3 = onenorm(bs @ bs), onenorm(bs @ bs @ bs)
        n6 = onenorm(np.linalg.matrix_power(bs, 6))
        beta = n6 ** (1 / 6)
        k = max(1, n2 / beta**2, n3 / beta**3, n2**2 / beta**4)
        k = max(k, n2 * n3 / beta**5, n2**2 * n3 / beta**7)
        x = math.log2(beta * k ** (1 / 18) / theta)
        want = max(0, s + min(0, math.ceil(x)))
        got = mle._ext.refine_squarings_sixth(n2, n3, n6, s, double)
        if abs(x - round(x)) > 1e-9:
            assert got == want, (x, s)
            checked += 1
        # The promise itself, at the powers the remainder starts with.
        bk = bs * 2.0 ** (s - got)
        bound = beta * 2.0 ** (s - got) * k ** (1 / 18)
        for p in (19, 20, 21, 25):
            assert onenorm(np.linalg.matrix_power(bk, p)) <= bound**p * (1 + 1e-9)
    assert checked > 250
    assert mle._ext.refine_squarings_sixth(1.0, 1.0, 0.0, 9, double) == 0
    assert mle._ext.refine_squarings_sixth(1.0, float("nan"), 1.0, 9, double) == 9
