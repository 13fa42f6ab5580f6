"""Where the CUDA ops' results live, and what MLX's buffer cache does to it.

Times matrix_exp on the GPU (median ms of 30 calls, mx.eval included) for
small batches and one 1024 matrix: alone; after an MLX op left 40 device
buffers of the result's size in MLX's cache; and fed by an MLX op in every
call. Run it twice to compare the default (device memory from the
stream-ordered pool, csrc/cuda/device_buffers.cu) with
MLX_LINALG_EXT_CUDA_MANAGED_BUFFERS=1 (mx::allocator::malloc's managed
memory), e.g. on the lent GPU after `STAGES=build bash scripts/gpu-check.sh`:

    python3 scripts/gpu_buffers_ab.py
    MLX_LINALG_EXT_CUDA_MANAGED_BUFFERS=1 python3 scripts/gpu_buffers_ab.py
"""

import os
import statistics
import time

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np

mode = (
    "managed"
    if os.environ.get("MLX_LINALG_EXT_CUDA_MANAGED_BUFFERS") == "1"
    else "device"
)
rng = np.random.default_rng(0)


def on_gpu(a):
    x = mx.multiply(mx.array(a), 1, stream=mx.gpu)
    mx.eval(x)
    return x


def times(fn, reps=30):
    for _ in range(3):
        mx.eval(fn())
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        y = fn()
        mx.eval(y)
        t.append((time.perf_counter() - t0) * 1e3)
    return t


def med(t):
    return statistics.median(t)


def case(b, n):
    a = rng.standard_normal((b, n, n)).astype(np.float32)
    a *= 4.0 / np.abs(a).sum(axis=-2).max(axis=-1)[:, None, None]
    x = on_gpu(a)

    def alone():
        return mle.matrix_exp(x, stream=mx.gpu)

    def fed():
        # An MLX op feeding ours in every call (a training-loop pattern).
        return mle.matrix_exp(mx.multiply(x, 0.5, stream=mx.gpu), stream=mx.gpu)

    ref = np.array(alone())
    clean = times(alone)
    # Leave 40 device buffers of the result's size in MLX's cache.
    ys = [mx.multiply(x, float(i + 2), stream=mx.gpu) for i in range(40)]
    mx.eval(ys)
    del ys
    after = times(alone)
    same = np.array_equal(np.array(alone()), ref)
    print(
        f"{mode:8s} {b}x{n}: clean {med(clean):.3f}  after 40 cached MLX buffers "
        f"{med(after):.3f} (first 5: {' '.join(f'{v:.2f}' for v in after[:5])})  "
        f"MLX op feeding ours {med(times(fed)):.3f}  same result {same}  "
        f"mlx active {mx.get_active_memory() >> 20} MB "
        f"cache {mx.get_cache_memory() >> 20} MB",
        flush=True,
    )


for b, n in [(4096, 8), (4096, 16), (1024, 32), (256, 64), (64, 128), (1, 1024)]:
    case(b, n)
