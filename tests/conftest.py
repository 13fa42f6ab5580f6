"""Shared fixtures of the mlx_linalg_ext test suite.

Every test that runs the ops takes the ``device`` fixture, parametrized over
the targets of ``TARGETS``: the CPU and, where MLX has one, the GPU; tests
marked ``cuda_paths`` also over every CUDA code path, forced through the
backend's test hooks (environment variables it reads at each evaluation).
Combinations a machine cannot run are deselected at collection, not skipped,
and the terminal summary says why in one line per reason.
"""

import os
import zlib
from dataclasses import dataclass, replace

import mlx.core as mx
import mlx_linalg_ext as mle
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

HAS_GPU = mx.is_available(mx.gpu)
# This package's CUDA kernels run (not the CPU fallback of a build without).
HAS_CUDA_KERNELS = (
    HAS_GPU
    and mle.has_gpu_kernels
    and bool(getattr(getattr(mx, "cuda", None), "is_available", lambda: False)())
)


@dataclass(frozen=True)
class Target:
    """One value of the device fixture: its test id, the MLX device, the
    environment the CUDA backend reads while the test runs, whether it computes
    float64 and whether it runs this package's CUDA kernels."""

    id: str
    device: mx.Device
    env: tuple = ()  # (name, value) pairs
    float64: bool = False
    cuda: bool = False
    path: bool = False  # a forced CUDA path (only for tests marked cuda_paths)
    present: bool = True


# A Metal emulator build runs its float32/complex64 Metal kernels on the CPU
# stream: name that target after what runs.
_CPU_ID = "metal-emu" if getattr(mle._ext, "backend", "") == "metal-emulator" else "cpu"
_SMALL, _TINY, _TC, _SM90 = (
    f"MLX_LINALG_EXT_CUDA_{k}" for k in ("SMALL_MAX", "TINY_MAX", "TC_MIN", "SM90_MIN")
)
_NEVER = "1000000"  # a size no matrix reaches: the path is never taken

TARGETS = [
    Target(_CPU_ID, mx.cpu, float64=True),
    Target("gpu", mx.gpu, cuda=HAS_CUDA_KERNELS, present=HAS_GPU),
    # n <= 8 through the fused kernel (one block a matrix), not the tiny one.
    Target("gpu-fused", mx.gpu, ((_TINY, "0"),), cuda=True, path=True),
    # Every size through the GEMM path (no fused small-matrix kernel).
    Target("gpu-gemm", mx.gpu, ((_SMALL, "0"),), cuda=True, path=True),
    # Products on tensor cores (3xTF32) from n = 64, and never (SIMT FP32).
    Target("gpu-tc64", mx.gpu, ((_SMALL, "0"), (_TC, "64")), cuda=True, path=True),
    Target("gpu-simt", mx.gpu, ((_TC, _NEVER), (_SM90, _NEVER)), cuda=True, path=True),
    # Single matrices on the Hopper wgmma path from n c = 512, and never
    # (mma.sync instead).
    Target("gpu-wgmma512", mx.gpu, ((_SM90, "512"),), cuda=True, path=True),
    Target("gpu-mma", mx.gpu, ((_SM90, _NEVER),), cuda=True, path=True),
]
TARGETS = [replace(t, present=HAS_CUDA_KERNELS) if t.path else t for t in TARGETS]


def pytest_configure(config):
    for line in (
        "cuda_paths(*ids): also run on every forced CUDA code path (or those named)",
        "gpu_only: runs on GPU targets only",
        "cuda_only: runs where this package's CUDA kernels run",
        "cpu_backend: tests of the CPU backend itself (not the Metal emulator's kernels)",
        "float64: computes in float64 (CPU only in MLX)",
    ):
        config.addinivalue_line("markers", line)
    config._mle_deselected = {}


def pytest_generate_tests(metafunc):
    if "device" not in metafunc.fixturenames:
        return
    # cuda_paths: every forced path; cuda_paths("gpu-fused", ...): those named.
    marker = metafunc.definition.get_closest_marker("cuda_paths")
    named = set(marker.args) if marker is not None and marker.args else None
    targets = [
        t
        for t in TARGETS
        if not t.path or (marker is not None and (named is None or t.id in named))
    ]
    metafunc.parametrize("device", targets, ids=[t.id for t in targets], indirect=True)


def _why_not(item):
    """The reason this test cannot run here, or None."""
    spec = getattr(item, "callspec", None)
    target = spec.params.get("device") if spec else None
    if target is None:
        return None
    if not target.present:
        return f"{target.id}: no such target on this machine"
    if item.get_closest_marker("gpu_only") and target.device != mx.gpu:
        return "GPU-only tests on the CPU"
    if item.get_closest_marker("cuda_only") and not target.cuda:
        return f"CUDA-only tests on {target.id} (no CUDA kernels there)"
    if item.get_closest_marker("cpu_backend") and target.id != "cpu":
        return f"CPU-backend tests on {target.id} (other kernels run there)"
    uses_f64 = item.get_closest_marker("float64") or any(
        (isinstance(v, mx.Dtype) and v == mx.float64)
        or (isinstance(v, str) and v == "float64")
        for v in spec.params.values()
    )
    if uses_f64 and not target.float64:
        return f"float64 on {target.id} (MLX computes float64 on the CPU only)"
    return None


def pytest_collection_modifyitems(config, items):
    keep, reasons = [], config._mle_deselected
    for item in items:
        why = _why_not(item)
        if why is None:
            keep.append(item)
        else:
            reasons.setdefault(why, []).append(item)
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for v in reasons.values() for i in v])
        items[:] = keep


def pytest_terminal_summary(terminalreporter, config):
    for why, dropped in sorted(getattr(config, "_mle_deselected", {}).items()):
        terminalreporter.write_line(f"deselected {len(dropped)}: {why}")


@pytest.fixture
def device(request):
    """The device (mx.cpu or mx.gpu) a test runs the ops on. It is also the
    default device while the test runs, so that the surrounding MLX ops (and
    the ones the transforms add, e.g. grad's seed) stay on it: float64 tests
    on the CPU must not touch the GPU. A forced CUDA path sets its
    environment for the duration of the test."""
    target = request.param
    saved = {k: os.environ.get(k) for k, _ in target.env}
    os.environ.update(target.env)
    try:
        with mx.stream(target.device):
            yield target.device
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _cpu_unless_device(request):
    """Tests without the device fixture run everything on the CPU."""
    if "device" in request.fixturenames:
        yield
    else:
        with mx.stream(mx.cpu):
            yield


def rng_seed(node):
    """A seed from the test's file name, function name and parameters other
    than the device: the same wherever pytest runs from, and the same matrices
    on every device."""
    spec = getattr(node, "callspec", None)
    params = sorted(
        (k, str(v)) for k, v in (spec.params.items() if spec else ()) if k != "device"
    )
    key = f"{os.path.basename(node.path)}::{node.originalname}::{params}"
    return zlib.crc32(key.encode())


@pytest.fixture
def rng(request):
    """A numpy generator seeded by ``rng_seed``."""
    return np.random.default_rng(rng_seed(request.node))
