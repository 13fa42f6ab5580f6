"""Shared fixtures of the mlx_linalg_ext test suite.

Every test that runs the ops takes the ``device`` fixture: it is parametrized
over the CPU and, when MLX has a GPU backend, the GPU. float64 is CPU-only
(``skip_f64_on_gpu``).
"""

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "mlx_linalg_ext",
    deadline=None,
    max_examples=30,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("mlx_linalg_ext")

_DEVICES = [pytest.param(mx.cpu, id="cpu")]
if mx.is_available(mx.gpu):
    _DEVICES.append(pytest.param(mx.gpu, id="gpu"))


@pytest.fixture(params=_DEVICES)
def device(request):
    """The device (mx.cpu or mx.gpu) a test runs the ops on."""
    return request.param


@pytest.fixture
def rng(request):
    """A numpy generator seeded from the test's id: deterministic per test."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid))
    return np.random.default_rng(seed % (2**32))
