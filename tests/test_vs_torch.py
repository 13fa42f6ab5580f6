"""float32 accuracy against PyTorch's torch.linalg.matrix_exp (CPU).

Both results are compared with SciPy's float64 expm of the same float32 input;
ours must be no worse than 3x PyTorch's normwise relative error, plus 1e-7
(a floor for when both errors sit at the ~1e-8 rounding level).
"""

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np
import pytest
from expm_testutils import expm_ref, matrix_with_norm, relerr, to_np

torch = pytest.importorskip("torch")

# The 1-norms: the degree-8 band (0.058, 0.58) in detail, then the degree-12
# and degree-18 bands and scaling and squaring around 4 and beyond.
NORMS = [0.06, 0.1, 0.2, 0.3, 0.4, 0.5, 0.57, 1.0, 2.0, 3.5, 4.0, 4.5, 12.0]


def _compare(device, a):
    a = np.asarray(a, dtype=np.float32)
    ref = expm_ref(a.astype(np.float64))
    ours = to_np(mle.matrix_exp(mx.array(a), stream=device))
    theirs = torch.linalg.matrix_exp(torch.from_numpy(a)).double().numpy()
    e_ours = np.atleast_1d(relerr(ours, ref))
    e_torch = np.atleast_1d(relerr(theirs, ref))
    assert np.all(e_ours <= 3 * e_torch + 1e-7), (e_ours, e_torch)


KINDS = ["gauss", "stochastic", "neg_stochastic", "dissipative"]


@pytest.mark.parametrize(
    "norm,kind",
    [
        pytest.param(nu, kind, id=f"{nu}-{kind}")
        for nu in NORMS
        for kind in KINDS
        if kind == "dissipative" or nu <= 5
    ],
)
@pytest.mark.parametrize("n", [3, 8, 12])
def test_float32_no_worse_than_torch(device, n, norm, kind):
    """Positive (stochastic) matrices make every Taylor term as large as it
    can be: on them PyTorch's degree-8 approximant is off by up to 2e-5 in the
    degree-8 band, while this op stays near 1e-7."""
    rng = np.random.default_rng(1000 * n + int(norm * 100) + len(kind))
    _compare(device, [matrix_with_norm(rng, n, norm, kind) for _ in range(4)])


@pytest.mark.parametrize(
    "name,a",
    [
        ("moler_van_loan", [[-49.0, 24.0], [-64.0, 31.0]]),
        ("ward1", [[4.0, 2.0, 0.0], [1.0, 4.0, 1.0], [1.0, 1.0, 4.0]]),
        ("ward3", [[-131.0, 19.0, 18.0], [-390.0, 56.0, 54.0], [-387.0, 57.0, 52.0]]),
        ("laub", [[0.0, 1.0], [-39.0, -40.0]]),
    ],
)
def test_classic_matrices_no_worse_than_torch(device, name, a):
    """(Moler's badly scaled example is not here: its 1-norm, 4e10, is past
    1/u in float32, where the answer is NaN by design; test_forward checks it
    in float64.)"""
    _compare(device, np.array(a)[None])
