"""The end-to-end floor of one MLX GPU op whose kernel runs T us.

A one-warp mx.fast.cuda_kernel spins on %globaltimer for T us; each call is
timed with mx.eval, against torch.cuda._sleep of about the same length with
torch.cuda.synchronize. MLX waits for its result on a CUDA event created with
cudaEventBlockingSync (mlx/backend/cuda/event.cu in MLX 0.32), so once the
kernel outlasts the host's launch work the waiting thread sleeps and is woken
later; PyTorch's synchronize spins. Compare an op's end-to-end time with the
floor at its kernel time (ncu's gpu__time_duration) to see what is left to
gain inside the op.

Usage (GPU machine): python3 scripts/mlx_floor.py"""

import statistics
import time

import mlx.core as mx
import torch

k = mx.fast.cuda_kernel(
    name="spin",
    input_names=["inp", "ns"],
    output_names=["out"],
    source="""
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < (unsigned long long)ns[0]);
    out[threadIdx.x] = inp[threadIdx.x];
    """,
)
v = mx.ones((32,))
mx.eval(v)


def med(fn, sync, reps=200):
    for _ in range(20):
        sync(fn())
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sync(fn())
        ts.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(ts)


for us in [0, 2, 5, 10, 15, 20, 30, 40, 60]:
    ns = mx.array([us * 1000], dtype=mx.int32)
    mx.eval(ns)
    m = med(
        lambda ns=ns: k(
            inputs=[v, ns],
            grid=(32, 1, 1),
            threadgroup=(32, 1, 1),
            output_shapes=[(32,)],
            output_dtypes=[mx.float32],
        )[0],
        mx.eval,
    )
    # _sleep takes clock cycles: ~1.7 per ns on these cards.
    cyc = int(us * 1.7e3)
    t = med(lambda cyc=cyc: torch.cuda._sleep(cyc), lambda _: torch.cuda.synchronize())
    print(
        f"kernel {us:3d} us: MLX end-to-end {m:6.1f} us   "
        f"torch (_sleep ~{us} us) {t:6.1f} us",
        flush=True,
    )
