"""Where the time of a small-matrix matrix_exp goes on the GPU: end-to-end per
call (one mx.eval each) against many calls in one mx.eval (launch and sync
amortised). Under `ncu --metrics gpu__time_duration.sum -k regex:expm` it
also gives the kernel durations."""

import statistics
import sys
import time

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np

# The benchmark's small batches (batch, n, dtype).
SMALL_CASES = [
    (4096, 8, np.float32),
    (4096, 16, np.float32),
    (1024, 32, np.float32),
    (4096, 16, np.complex64),
    (256, 64, np.float32),
    (64, 128, np.float32),
]


def make(batch, n, dtype=np.float32, host=False):
    """Inputs in GPU memory (made by a GPU op), as torch's .cuda() tensors;
    host=True keeps MLX's host copy of the numpy array."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, n, n))
    a *= (4.0 / np.abs(a).sum(axis=-2).max(axis=-1))[:, None, None]
    x = mx.array(a.astype(dtype))
    if not host:
        x = mx.multiply(x, 1, stream=mx.gpu)
    mx.eval(x)
    return x


def overheads():
    """Per-call end-to-end time of trivial GPU work: where the floor is."""

    def t(fn, reps=300):
        for _ in range(20):
            mx.eval(fn())
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            mx.eval(fn())
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    x2 = make(1, 2)
    x16 = make(1, 16)
    h16 = make(1, 16, host=True)
    hb = make(4096, 16, host=True)
    db = make(4096, 16)
    rows = [
        ("mx.abs 16x16", lambda: mx.abs(x16, stream=mx.gpu)),
        ("mx.abs 16x16 host-made input", lambda: mx.abs(h16, stream=mx.gpu)),
        ("matrix_exp 4096x16x16", lambda: mle.matrix_exp(db, stream=mx.gpu)),
        ("matrix_exp 4096x16x16 host-made", lambda: mle.matrix_exp(hb, stream=mx.gpu)),
        (
            "mx.contiguous(mx.abs) 16x16",
            lambda: mx.contiguous(mx.abs(x16, stream=mx.gpu), stream=mx.gpu),
        ),
        ("matrix_exp 1x2x2", lambda: mle.matrix_exp(x2, stream=mx.gpu)),
        ("matrix_exp 1x16x16", lambda: mle.matrix_exp(x16, stream=mx.gpu)),
    ]
    f = mx.compile(lambda a: mle.matrix_exp(a, stream=mx.gpu))
    rows.append(("compiled matrix_exp 1x2x2", lambda: f(x2)))
    try:
        k = mx.fast.cuda_kernel(
            name="trivial",
            input_names=["inp"],
            output_names=["out"],
            source="unsigned i = threadIdx.x; if (i < inp_shape[0]) out[i] = inp[i];",
        )
        v = mx.ones((16,))
        mx.eval(v)
        rows.append(
            (
                "mx.fast.cuda_kernel trivial",
                lambda: k(
                    inputs=[v],
                    grid=(32, 1, 1),
                    threadgroup=(32, 1, 1),
                    output_shapes=[(16,)],
                    output_dtypes=[mx.float32],
                )[0],
            )
        )
    except Exception as exc:  # noqa: BLE001
        print("cuda_kernel:", exc)
    for name, fn in rows:
        print(f"overhead {name:32s} {t(fn):.3f} ms")

    # Kernel time without the per-eval cost: k dependent calls in one eval
    # (each next input is x + 0 * previous output: same values, a dependency).
    for tag, xb in [
        ("4096x8", make(4096, 8)),
        ("4096x16", db),
        ("1024x32", make(1024, 32)),
        ("4096x16c", make(4096, 16, np.complex64)),
    ]:
        res = []
        for k in (1, 2, 5):

            def chain(k=k, xb=xb):
                y = mle.matrix_exp(xb, stream=mx.gpu)
                for _ in range(k - 1):
                    y = mle.matrix_exp(xb + 0 * y, stream=mx.gpu)
                return y

            res.append(t(chain, reps=100))
        print(
            f"chain {tag}: 1 call {res[0]:.3f} ms, 2 calls {res[1]:.3f}, "
            f"5 calls {res[2]:.3f} -> per extra call {(res[2] - res[0]) / 4:.3f} ms"
        )


def main():
    if "--shape" not in sys.argv:
        overheads()
    # --shape BxN[c]: only run that case 8 times (for ncu --launch-skip).
    only = sys.argv[sys.argv.index("--shape") + 1] if "--shape" in sys.argv else None
    for batch, n, dt in SMALL_CASES:
        tag = f"{batch}x{n}" + ("c" if dt == np.complex64 else "")
        if only is not None:
            if tag != only:
                continue
            x = make(batch, n, dt)
            for _ in range(8):
                mx.eval(mle.matrix_exp(x, stream=mx.gpu))
            continue
        x = make(batch, n, dt)
        mx.eval(x)
        for _ in range(5):
            mx.eval(mle.matrix_exp(x, stream=mx.gpu))
        one = []
        for _ in range(50):
            t0 = time.perf_counter()
            mx.eval(mle.matrix_exp(x, stream=mx.gpu))
            one.append((time.perf_counter() - t0) * 1e3)
        xs = [x * (1 + 1e-3 * i) for i in range(20)]
        mx.eval(xs)
        many = []
        for _ in range(10):
            t0 = time.perf_counter()
            mx.eval([mle.matrix_exp(xi, stream=mx.gpu) for xi in xs])
            many.append((time.perf_counter() - t0) * 1e3 / len(xs))
        print(
            f"{np.dtype(dt).name} {batch}x{n}x{n}: one call {statistics.median(one):.3f} ms,"
            f" amortised over 20 in one eval {statistics.median(many):.3f} ms"
        )


if __name__ == "__main__":
    main()
