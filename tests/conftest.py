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
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("mlx_linalg_ext")

_DEVICES = [pytest.param(mx.cpu, id="cpu")]
if mx.is_available(mx.gpu):
    _DEVICES.append(pytest.param(mx.gpu, id="gpu"))


@pytest.fixture(params=_DEVICES)
def device(request):
    """The device (mx.cpu or mx.gpu) a test runs the ops on. It is also the
    default device while the test runs, so that the surrounding MLX ops (and
    the ones the transforms add, e.g. grad's seed) stay on it: float64 tests
    on the CPU must not touch the GPU."""
    with mx.stream(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _cpu_unless_device(request):
    """Tests without the device fixture run everything on the CPU."""
    if "device" in request.fixturenames:
        yield
    else:
        with mx.stream(mx.cpu):
            yield


@pytest.fixture
def rng(request):
    """A numpy generator seeded from the test's id: deterministic per test, and
    the same matrices on the CPU and the GPU."""
    nodeid = request.node.nodeid.replace("[gpu", "[cpu")
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(nodeid))
    return np.random.default_rng(seed % (2**32))
