"""CPU benchmark of ``mlx_linalg_ext.matrix_exp``.

Compares, in one process on one machine:
  * ours      ``mlx_linalg_ext.matrix_exp`` on ``mx.cpu`` (timed with ``mx.eval``)
  * scipy     ``scipy.linalg.expm``
  * torch     ``torch.linalg.matrix_exp`` on the CPU (if torch imports)
  * mlx-ops   the pure-MLX-ops version from the feature request
              (``bench/mlx_ops_baseline.py``) on ``mx.cpu``

and the cost of the derivatives (``mx.vjp`` of ``matrix_exp`` and ``expm_frechet``)
relative to the forward. Reports medians, speed ratios, relative errors against
SciPy in float64, and PASS/MISS for the project's targets. Writes a JSON file and a
PNG plot. Run ``python bench/bench_cpu.py --help``; see bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import gc
import json
import os
import platform
import re
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import numpy as np
import scipy
import scipy.linalg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlx_ops_baseline
from common import random_matrices, rel_err, wide

try:
    import torch
except ImportError:  # torch is optional
    torch = None

HERE = Path(__file__).resolve().parent
NORM = 4.0  # 1-norm of every input matrix: degree 18 and one or two squarings
LIBS = ("ours", "scipy", "torch", "mlx-ops")
TARGET_SPEEDUP_VS_MLX_OPS = 30.0
TARGET_SPEEDUP_MIN_N = 256

SHORT = {"float32": "f32", "float64": "f64", "complex64": "c64"}
MX_DTYPE = {"float32": mx.float32, "float64": mx.float64, "complex64": mx.complex64}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def import_mlx_linalg_ext(tries: int = 6, wait_s: float = 20.0):
    """Import the extension, retrying while it is being reinstalled."""
    for attempt in range(tries):
        try:
            import mlx_linalg_ext

            return mlx_linalg_ext
        except (ImportError, OSError) as err:  # e.g. a half-written .so
            if attempt == tries - 1:
                raise
            log(f"import mlx_linalg_ext failed ({err}); retrying in {wait_s:.0f} s")
            time.sleep(wait_s)


mle = import_mlx_linalg_ext()


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    batch: int
    n: int
    dtype: str  # "float32", "float64" or "complex64"

    @property
    def name(self) -> str:
        return f"{self.batch}x{self.n}-{SHORT[self.dtype]}"


FULL_CASES = (
    Case(1, 64, "float32"),
    Case(1, 256, "float32"),
    Case(1, 1024, "float32"),
    Case(1, 256, "float64"),
    Case(1, 1024, "float64"),
    Case(1, 256, "complex64"),
    Case(1024, 16, "float32"),
    Case(256, 64, "float32"),
    # Lie-group batches: the lane-batched path for n <= 8.
    Case(100000, 3, "float32"),
    Case(100000, 4, "float32"),
    Case(20000, 8, "float32"),
    Case(100000, 3, "complex64"),
)
FULL_GRAD_CASES = (
    Case(1, 256, "float32"),
    Case(1, 1024, "float32"),
    Case(256, 64, "float32"),
    Case(1, 256, "complex64"),
)
# --tiny: the same structure (three single float32 sizes, float64, complex64, two
# batches) at sizes that run in seconds, so CI exercises every code path.
TINY_CASES = (
    Case(1, 8, "float32"),
    Case(1, 16, "float32"),
    Case(1, 32, "float32"),
    Case(1, 16, "float64"),
    Case(1, 32, "float64"),
    Case(1, 16, "complex64"),
    Case(16, 4, "float32"),
    Case(8, 8, "float32"),
)
TINY_GRAD_CASES = (
    Case(1, 16, "float32"),
    Case(1, 32, "float32"),
    Case(8, 8, "float32"),
    Case(1, 16, "complex64"),
)


def make_input(case: Case, seed: int, which: int = 0, norm: float = NORM):
    """Random normal matrices, each scaled to 1-norm ``norm``, in the case's dtype.

    The stream depends on (seed, case, which) only, so --cases does not change the
    inputs of the cases that remain.
    """
    dtype_id = list(SHORT).index(case.dtype)
    rng = np.random.default_rng([seed, case.batch, case.n, dtype_id, which])
    return random_matrices(rng, case.batch, case.n, case.dtype, norm)


# ----------------------------------------------------------------------- libraries
# Each setup function takes the numpy input, converts it (untimed) and returns a
# zero-argument callable that runs the computation to completion (mx.eval for MLX)
# and returns the library's result; as_numpy converts that after timing.


def to_mx(a: np.ndarray) -> mx.array:
    x = mx.array(a, dtype=MX_DTYPE[a.dtype.name])  # mx.array(float64) is float32!
    mx.eval(x)
    return x


def mx_evaluated(fn: Callable[[], mx.array]) -> Callable[[], mx.array]:
    def run():
        y = fn()
        mx.eval(y)
        return y

    return run


def setup_ours(a: np.ndarray):
    x = to_mx(a)
    return mx_evaluated(lambda: mle.matrix_exp(x, stream=mx.cpu))


def setup_mlx_ops(a: np.ndarray):
    x = to_mx(a)

    def run():
        with mx.stream(mx.cpu):
            y = mlx_ops_baseline.matrix_exp(x)
            mx.eval(y)
        return y

    return run


def scipy_expm_batched() -> bool:
    """SciPy >= 1.9 evaluates expm on (..., n, n) stacks; older ones need a loop."""
    try:
        return scipy.linalg.expm(np.zeros((2, 2, 2))).shape == (2, 2, 2)
    except ValueError:
        return False


SCIPY_BATCHED = scipy_expm_batched()


def setup_scipy(a: np.ndarray):
    if SCIPY_BATCHED:
        return lambda: scipy.linalg.expm(a)
    return lambda: np.stack([scipy.linalg.expm(m) for m in a])


def setup_torch(a: np.ndarray):
    t = torch.from_numpy(a)
    return lambda: torch.linalg.matrix_exp(t)


SETUP = {
    "ours": setup_ours,
    "scipy": setup_scipy,
    "torch": setup_torch,
    "mlx-ops": setup_mlx_ops,
}


def as_numpy(y) -> np.ndarray:
    if torch is not None and isinstance(y, torch.Tensor):
        return y.detach().numpy()
    return np.asarray(y)


# -------------------------------------------------------------------------- timing


@dataclass
class Timing:
    times_s: list[float]
    result: object  # the last call's output
    background_cores: float | None = None  # other processes' CPU use while timing
    attempts: int = 1
    noisy: bool = False  # other processes were busy in every attempt

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times_s)

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median_ms,
            "min_ms": 1e3 * min(self.times_s),
            "repeats": len(self.times_s),
            "times_ms": [round(1e3 * t, 4) for t in self.times_s],
            "background_cores": self.background_cores,
            "attempts": self.attempts,
            "noisy": self.noisy,
        }


@dataclass
class TimingPolicy:
    warmup: int = 1
    min_repeats: int = 5  # always at least this many timed calls
    budget_s: float = 1.0  # keep repeating fast calls until this much time is spent
    max_repeats: int = 200
    # Busy threads distort the numbers on a small machine: other processes, and
    # the BLAS/OpenMP pools of the library timed just before, which spin for a
    # while after each call. Before timing, sleep in windows of settle_s until the
    # machine uses < quiet_cores (at most max_wait_s); if other processes used
    # more while timing, measure again (at most `retries` more times).
    settle_s: float = 0.5
    quiet_cores: float = 0.25
    max_wait_s: float = 120.0
    retries: int = 2


class CpuMonitor:
    """CPU time used by other processes, from /proc/stat (Linux; else unknown)."""

    def __init__(self):
        self.available = Path("/proc/stat").exists()
        self.tick = 1.0 / os.sysconf("SC_CLK_TCK") if self.available else 0.0

    def sample(self) -> tuple[float, float, float]:
        """(machine busy CPU s, this process's CPU s, wall s)."""
        busy = 0.0
        if self.available:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            busy = (sum(v) - v[3] - v[4]) * self.tick  # all but idle and iowait
        return busy, time.process_time(), time.perf_counter()

    def other_cores(self, s0, s1) -> float | None:
        """Average number of cores used by other processes between two samples."""
        if not self.available or s1[2] <= s0[2]:
            return None
        return max(0.0, ((s1[0] - s0[0]) - (s1[1] - s0[1])) / (s1[2] - s0[2]))

    def busy_cores(self, s0, s1) -> float | None:
        """Average number of cores used by all processes between two samples."""
        if not self.available or s1[2] <= s0[2]:
            return None
        return (s1[0] - s0[0]) / (s1[2] - s0[2])

    def wait_for_quiet(self, threshold: float, max_wait_s: float, window_s: float):
        """Sleep until the machine is idle: no other process busy, and no thread of
        this one either (BLAS/OpenMP pools spin for a while after each call and
        would slow down the next library)."""
        if not self.available or window_s <= 0:
            return
        start = time.perf_counter()
        waited = False
        while True:
            s0 = self.sample()
            time.sleep(window_s)
            load = self.busy_cores(s0, self.sample())
            elapsed = time.perf_counter() - start
            if load is None or load < threshold:
                if waited:
                    log(f"  machine quiet after {elapsed:.0f} s")
                return
            if elapsed > max_wait_s:
                log(f"  machine still busy ({load:.2f} cores); timing anyway")
                return
            if not waited:
                log(f"  machine busy ({load:.2f} cores); waiting up to {max_wait_s} s")
                waited = True


MONITOR = CpuMonitor()


def measure(fn: Callable[[], object], policy: TimingPolicy) -> Timing:
    """Warm up, then time ``fn`` at least ``min_repeats`` times (more while within
    ``budget_s``, at most ``max_repeats``). Repeated if other processes were busy."""
    for attempt in range(1, policy.retries + 2):
        MONITOR.wait_for_quiet(policy.quiet_cores, policy.max_wait_s, policy.settle_s)
        timing = measure_once(fn, policy)
        timing.attempts = attempt
        load = timing.background_cores
        if load is None or load < policy.quiet_cores:
            break
        timing.noisy = True
        if attempt <= policy.retries:
            log(f"  {load:.2f} other cores busy while timing; measuring again")
    return timing


def measure_once(fn: Callable[[], object], policy: TimingPolicy) -> Timing:
    out = None
    for _ in range(policy.warmup):
        out = fn()
    gc.collect()
    times = []
    s0 = MONITOR.sample()
    while True:
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= policy.max_repeats:
            break
        if len(times) >= policy.min_repeats and time.perf_counter() - s0[2] >= (
            policy.budget_s
        ):
            break
    return Timing(times, out, MONITOR.other_cores(s0, MONITOR.sample()))


# ---------------------------------------------------------------------- benchmarks


def run_forward(cases, libs, policy, seed) -> list[dict]:
    rows = []
    for i, case in enumerate(cases, 1):
        a = make_input(case, seed)
        ref = scipy.linalg.expm(wide(a))
        row = {
            "case": case.name,
            "batch": case.batch,
            "n": case.n,
            "dtype": case.dtype,
            "results": {},
        }
        for lib in libs:
            log(f"[{i}/{len(cases)}] {case.name:<12} {lib:<8} ...")
            timing = measure(SETUP[lib](a), policy)
            err = rel_err(as_numpy(timing.result), ref)
            row["results"][lib] = timing.as_dict() | {"relerr": err}
            log(
                f"[{i}/{len(cases)}] {case.name:<12} {lib:<8} "
                f"{timing.median_ms:10.3f} ms  (x{len(timing.times_s)}, "
                f"relerr {err:.1e})"
            )
        add_targets(row)
        rows.append(row)
    return rows


def add_targets(row: dict) -> None:
    res = row["results"]
    ms = {lib: r["median_ms"] for lib, r in res.items()}
    row["speedup_vs_best"] = row["speedup_vs_mlx_ops"] = None
    row["target_fastest"] = row["target_30x"] = "n/a"
    if "ours" not in ms:
        return
    others = [ms[lib] for lib in ("scipy", "torch") if lib in ms]
    if others:
        row["speedup_vs_best"] = min(others) / ms["ours"]
        row["target_fastest"] = "PASS" if ms["ours"] <= min(others) else "MISS"
    if "mlx-ops" in ms:
        row["speedup_vs_mlx_ops"] = ms["mlx-ops"] / ms["ours"]
        if row["n"] >= TARGET_SPEEDUP_MIN_N:
            ok = row["speedup_vs_mlx_ops"] >= TARGET_SPEEDUP_VS_MLX_OPS
            row["target_30x"] = "PASS" if ok else "MISS"
        else:
            row["target_30x"] = "-"  # the target only applies at n >= 256


def frechet_ref(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """L(a, e) per batch element with SciPy in float64 / complex128."""
    return np.stack(
        [
            scipy.linalg.expm_frechet(x, y, compute_expm=False)
            for x, y in zip(wide(a), wide(e))
        ]
    )


def conj_t(a: np.ndarray) -> np.ndarray:
    return np.conj(np.swapaxes(a, -1, -2))


def setup_vjp(a: np.ndarray, g: np.ndarray):
    """mx.vjp of matrix_exp at a for cotangent g; evaluates exp(a) and the vjp."""
    x, gx = to_mx(a), to_mx(g)

    def expm_cpu(y):
        return mle.matrix_exp(y, stream=mx.cpu)

    def run():
        out, (ct,) = mx.vjp(expm_cpu, [x], [gx])
        mx.eval(out, ct)
        return ct

    return run


def setup_backward(a: np.ndarray, g: np.ndarray):
    """The backward pass alone: mx.vjp's cotangent, exp(a) left unevaluated
    (what a training step adds to its forward)."""
    x, gx = to_mx(a), to_mx(g)

    def expm_cpu(y):
        return mle.matrix_exp(y, stream=mx.cpu)

    def run():
        _, (ct,) = mx.vjp(expm_cpu, [x], [gx])
        mx.eval(ct)
        return ct

    return run


def setup_frechet(a: np.ndarray, e: np.ndarray):
    """expm_frechet(a, e); evaluates both outputs, returns L(a, e)."""
    x, ex = to_mx(a), to_mx(e)

    def run():
        out = mle.expm_frechet(x, ex, stream=mx.cpu)
        mx.eval(out)
        return out[1]

    return run


def setup_torch_vjp(a: np.ndarray, g: np.ndarray):
    """torch.autograd.grad of matrix_exp at a for cotangent g (forward included)."""
    ta = torch.from_numpy(a).requires_grad_(True)
    tg = torch.from_numpy(g)

    def run():
        y = torch.linalg.matrix_exp(ta)
        return torch.autograd.grad(y, ta, grad_outputs=tg)[0]

    return run


def run_derivatives(cases, libs, policy, seed) -> list[dict]:
    """Time vjp and expm_frechet against the forward; check them against SciPy.

    The vjp of exp at A for cotangent G is L(A^H, G) (MLX's and PyTorch's
    conjugating convention); expm_frechet(A, E) returns (exp(A), L(A, E)).
    """
    rows = []
    for i, case in enumerate(cases, 1):
        a = make_input(case, seed)
        g = make_input(case, seed, which=1)  # cotangent / direction, same scale as a
        ref_vjp = frechet_ref(conj_t(a), g)
        ref_jvp = frechet_ref(a, g)
        # name: (timed callable, reference for its result or None)
        funcs = {
            "forward": (setup_ours(a), None),
            "vjp": (setup_vjp(a, g), ref_vjp),
            "backward": (setup_backward(a, g), ref_vjp),
            "frechet": (setup_frechet(a, g), ref_jvp),
        }
        if "torch" in libs:
            funcs["torch-forward"] = (setup_torch(a), None)
            funcs["torch-vjp"] = (setup_torch_vjp(a, g), ref_vjp)
        if "scipy" in libs:
            funcs["scipy-frechet"] = (partial(frechet_ref, a, g), None)

        row = {"case": case.name, "batch": case.batch, "n": case.n}
        row["dtype"] = case.dtype
        row["results"] = {}
        for what, (fn, ref) in funcs.items():
            log(f"[grad {i}/{len(cases)}] {case.name:<12} {what:<13} ...")
            timing = measure(fn, policy)
            entry = timing.as_dict()
            if ref is not None:
                entry["relerr"] = rel_err(as_numpy(timing.result), ref)
            row["results"][what] = entry
            log(
                f"[grad {i}/{len(cases)}] {case.name:<12} {what:<13} "
                f"{timing.median_ms:10.3f} ms  (x{len(timing.times_s)})"
            )
        res = row["results"]
        fwd = res["forward"]["median_ms"]
        row["vjp_over_forward"] = res["vjp"]["median_ms"] / fwd
        row["backward_over_forward"] = res["backward"]["median_ms"] / fwd
        row["frechet_over_forward"] = res["frechet"]["median_ms"] / fwd
        if "torch" in libs:
            tf = res["torch-forward"]["median_ms"]
            row["torch_vjp_over_forward"] = res["torch-vjp"]["median_ms"] / tf
        rows.append(row)
    return rows


# ------------------------------------------------------------------------ printing


def fmt_ms(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['median_ms']:.3f}" + ("*" if r.get("noisy") else "")


def fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def fmt_err(r: dict | None) -> str:
    return "-" if r is None or "relerr" not in r else f"{r['relerr']:.1e}"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths))
    )
    print(line)
    print("-" * len(line))
    for r in rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths))
            )
        )


def print_forward(rows: list[dict], libs) -> None:
    print(
        "\nForward: median ms (speedup = other time / ours; > 1 means ours is faster)"
    )
    headers = [
        "case",
        *libs,
        "best(scipy,torch)/ours",
        "mlx-ops/ours",
        "fastest",
        f"{TARGET_SPEEDUP_VS_MLX_OPS:.0f}x vs mlx-ops",
    ]
    table = []
    for row in rows:
        res = row["results"]
        table.append(
            [
                row["case"],
                *(fmt_ms(res.get(lib)) for lib in libs),
                fmt_x(row["speedup_vs_best"]),
                fmt_x(row["speedup_vs_mlx_ops"]),
                row["target_fastest"],
                row["target_30x"],
            ]
        )
    print_table(headers, table)

    print(
        "\nRelative error ||X - ref||_F / ||ref||_F, ref = scipy.linalg.expm in "
        "float64/complex128 on the same input (for f64 cases SciPy is the ref)"
    )
    table = [
        [row["case"], *(fmt_err(row["results"].get(lib)) for lib in libs)]
        for row in rows
    ]
    print_table(["case", *libs], table)


def print_derivatives(rows: list[dict]) -> None:
    if not rows:
        return
    print(
        "\nDerivatives: median ms, ratio to the forward of the same library; "
        "relerr vs scipy.linalg.expm_frechet in float64"
    )
    headers = [
        "case",
        "fwd",
        "vjp+fwd",
        "vjp+fwd/fwd",
        "backward",
        "bwd/fwd",
        "frechet",
        "frechet/fwd",
        "vjp err",
        "frechet err",
        "torch fwd",
        "torch vjp",
        "torch vjp/fwd",
        "torch vjp err",
        "scipy frechet",
    ]
    table = []
    for row in rows:
        res = row["results"]
        table.append(
            [
                row["case"],
                fmt_ms(res["forward"]),
                fmt_ms(res["vjp"]),
                fmt_x(row["vjp_over_forward"]),
                fmt_ms(res["backward"]),
                fmt_x(row["backward_over_forward"]),
                fmt_ms(res["frechet"]),
                fmt_x(row["frechet_over_forward"]),
                fmt_err(res["vjp"]),
                fmt_err(res["frechet"]),
                fmt_ms(res.get("torch-forward")),
                fmt_ms(res.get("torch-vjp")),
                fmt_x(row.get("torch_vjp_over_forward")),
                fmt_err(res.get("torch-vjp")),
                fmt_ms(res.get("scipy-frechet")),
            ]
        )
    print_table(headers, table)


def print_summary(rows: list[dict]) -> None:
    fast = [r["target_fastest"] for r in rows]
    big = [r["target_30x"] for r in rows if r["target_30x"] in ("PASS", "MISS")]
    print(
        f"\nTargets (reported, not asserted): ours <= min(scipy, torch): "
        f"{fast.count('PASS')}/{len(fast) - fast.count('n/a')} PASS; "
        f">= {TARGET_SPEEDUP_VS_MLX_OPS:.0f}x faster than mlx-ops at n >= "
        f"{TARGET_SPEEDUP_MIN_N}: {big.count('PASS')}/{len(big)} PASS"
    )


# ------------------------------------------------------------------ JSON and plot


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "local"
    versions = {
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "mlx_linalg_ext": getattr(mle, "__version__", "?"),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__ if torch is not None else None,
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("OPENBLAS_", "OMP_", "MKL_"))
    }
    info = {
        "hostname": host,
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions,
        "env": env,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "scipy_expm_batched": SCIPY_BATCHED,
    }
    return info


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def plot(path: Path, rows: list[dict], libs, info: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(LIBS, ("C3", "C0", "C1", "C2")))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))

    single = sorted(
        (r for r in rows if r["batch"] == 1 and r["dtype"] == "float32"),
        key=lambda r: r["n"],
    )
    for lib in libs:
        pts = [
            (r["n"], r["results"][lib]["median_ms"])
            for r in single
            if lib in r["results"]
        ]
        if pts:
            xs, ys = zip(*pts)
            left.loglog(xs, ys, "o-", color=colors[lib], label=lib)
    if single:
        left.set_xticks([r["n"] for r in single], [str(r["n"]) for r in single])
        left.minorticks_off()
    left.set_xlabel("n (one n x n float32 matrix)")
    left.set_ylabel("median time (ms)")
    left.set_title("single matrix, float32")
    left.grid(True, which="both", alpha=0.3)
    left.legend()

    batched = [r for r in rows if r["batch"] > 1]
    width = 0.8 / max(1, len(libs))
    for k, lib in enumerate(libs):
        xs, ys = [], []
        for j, r in enumerate(batched):
            if lib in r["results"]:
                xs.append(j + (k - (len(libs) - 1) / 2) * width)
                ys.append(r["results"][lib]["median_ms"])
        bars = right.bar(xs, ys, width, color=colors[lib], label=lib)
        right.bar_label(bars, fmt="%.3g", fontsize=7)
    right.set_xticks(
        range(len(batched)),
        [f"{r['batch']} x {r['n']}x{r['n']}\n{r['dtype']}" for r in batched],
    )
    right.set_yscale("log")
    lowest = [
        r["results"][lib]["median_ms"]
        for r in batched
        for lib in libs
        if lib in r["results"]
    ]
    if lowest:
        right.set_ylim(bottom=min(lowest) / 3)  # keep the shortest bar visible
    right.set_ylabel("median time (ms)")
    right.set_title("batches")
    right.grid(True, axis="y", which="both", alpha=0.3)
    right.legend()

    fig.suptitle(
        f"matrix_exp on CPU: {info['cpu_model']}, {info['nproc']} cores, "
        f"mlx {info['versions']['mlx']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- contention
# --contended K: the same case timed alone and with K processes that spin on
# the CPU, for each OpenBLAS thread setting. The thread count is
# read once per process, so each setting runs in a child process.

CONTENDED_CASE = Case(1, 256, "float32")
TINY_CONTENDED_CASE = Case(1, 32, "float32")


def contended_settings(cores: int) -> list[tuple[str, dict, list[str]]]:
    """(label, environment changes, libs) of each child process."""
    return [
        ("threads chosen by size (default)", {}, ["ours", "scipy", "torch"]),
        (
            f"OPENBLAS_NUM_THREADS={cores}: every core for every product",
            {"OPENBLAS_NUM_THREADS": str(cores)},
            ["ours"],
        ),
        ("OPENBLAS_NUM_THREADS=1", {"OPENBLAS_NUM_THREADS": "1"}, ["ours"]),
    ]


def contended_child(case_name: str, libs: list[str], seconds: float) -> int:
    """Runs in the child: median ms of each lib on the case, as JSON on stdout.
    No waiting for a quiet machine: the point is the busy one."""
    case = next(c for c in (*FULL_CASES, *TINY_CASES) if c.name == case_name)
    a = make_input(case, seed=0)
    out = {}
    for lib in libs:
        if lib == "torch" and torch is None:
            continue
        fn = SETUP[lib](a)
        fn()
        fn()
        times = []
        t_end = time.perf_counter() + seconds
        while len(times) < 5 or (time.perf_counter() < t_end and len(times) < 200):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[lib] = {
            "median_ms": 1e3 * statistics.median(times),
            "min_ms": 1e3 * min(times),
            "calls": len(times),
        }
    print(json.dumps(out))
    return 0


def run_contended(busy: int, case: Case, seconds: float) -> list[dict]:
    import subprocess

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    rows = []
    for label, env_changes, libs in contended_settings(cores):
        env = {**os.environ, **env_changes}
        if not env_changes:
            env.pop("OPENBLAS_NUM_THREADS", None)
        row = {"setting": label, "env": env_changes}
        for load in (0, busy):
            spinners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(load)
            ]
            try:
                time.sleep(0.5 if load else 0.0)
                log(f"{label}: {load} busy processes")
                child = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--contended-child",
                        case.name,
                        "--libs",
                        ",".join(libs),
                        "--budget",
                        str(seconds),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
            finally:
                for proc in spinners:
                    proc.kill()
                    proc.wait()
            row["alone" if load == 0 else "busy"] = json.loads(
                child.stdout.strip().splitlines()[-1]
            )
        rows.append(row)
    return rows


def print_contended(rows: list[dict], busy: int, case: Case, cores: int) -> None:
    print(
        f"\n{case.name} under contention: median ms alone and with {busy} more "
        f"processes spinning on the {cores} cores this process may use"
    )
    table = []
    for row in rows:
        for lib in row["alone"]:
            idle = row["alone"][lib]["median_ms"]
            loaded = row["busy"].get(lib, {}).get("median_ms")
            table.append(
                [
                    row["setting"],
                    lib,
                    f"{idle:.3g}",
                    "-" if loaded is None else f"{loaded:.3g}",
                    "-" if loaded is None else f"{loaded / idle:.1f}x",
                ]
            )
    print_table(["setting", "lib", "alone", f"+{busy} busy", "ratio"], table)


def main_contended(args) -> int:
    case = TINY_CONTENDED_CASE if args.tiny else CONTENDED_CASE
    if args.cases:
        case = select((*FULL_CASES, *TINY_CASES), args.cases)[0]
    seconds = 0.3 if args.tiny else (args.budget or 3.0)
    info = machine_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    rows = run_contended(args.contended, case, seconds)
    print_contended(rows, args.contended, case, cores)
    date = datetime.datetime.now(datetime.timezone.utc)
    json_path = args.out_dir / f"cpu-contended-{info['hostname']}-{date:%Y%m%d}.json"
    write_json(
        json_path,
        {
            "date_utc": date.isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "tiny": args.tiny,
            "machine": info,
            "available_cores": cores,
            "case": case.name,
            "busy_processes": args.contended,
            "seconds_per_lib": seconds,
            "rows": rows,
        },
    )
    print(f"wrote {json_path}")
    return 0


# --------------------------------------------------------------------------- main


def select(cases, patterns: str | None):
    if not patterns:
        return list(cases)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    return [c for c in cases if any(fnmatch.fnmatch(c.name, p) for p in pats)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny sizes and 1-2 repeats (CI smoke run, < 60 s)",
    )
    p.add_argument(
        "--cases",
        help="comma-separated case names or fnmatch patterns, "
        "e.g. '1x256-*,256x64-f32' (names: see --list)",
    )
    p.add_argument(
        "--libs",
        default=",".join(LIBS),
        help=f"comma-separated subset of {','.join(LIBS)}",
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="minimum timed repeats per measurement (default 5; tiny 2)",
    )
    p.add_argument(
        "--budget",
        type=float,
        help="seconds per measurement to keep repeating fast calls "
        "(default 1.0; tiny 0)",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        help="seconds to wait for other processes to go quiet before "
        "each measurement (default 120; tiny 0.3)",
    )
    p.add_argument(
        "--quiet-cores",
        type=float,
        help="machine counts as busy above this many busy cores (default 0.25)",
    )
    p.add_argument("--no-grad", action="store_true", help="skip the derivative part")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=HERE / "results",
        help="where the JSON and cpu.png go (default bench/results)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument(
        "--contended",
        type=int,
        metavar="K",
        help="instead: time 1x256-f32 (or the first --cases match) idle and with K "
        "processes spinning on the CPU, per OpenBLAS thread setting",
    )
    p.add_argument("--contended-child", metavar="CASE", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.contended_child:
        return contended_child(
            args.contended_child, args.libs.split(","), args.budget or 1.0
        )
    if args.contended is not None:
        return main_contended(args)
    cases = select(TINY_CASES if args.tiny else FULL_CASES, args.cases)
    grad_cases = (
        []
        if args.no_grad
        else select(TINY_GRAD_CASES if args.tiny else FULL_GRAD_CASES, args.cases)
    )
    if args.list:
        print("forward:", " ".join(c.name for c in cases))
        print("derivatives:", " ".join(c.name for c in grad_cases))
        return 0

    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    unknown = set(libs) - set(LIBS)
    if unknown:
        raise SystemExit(f"unknown --libs {sorted(unknown)}; choose from {LIBS}")
    if "torch" in libs and torch is None:
        log("torch is not importable: skipping it")
        libs.remove("torch")
    if args.tiny:
        policy = TimingPolicy(
            warmup=1,
            min_repeats=2,
            budget_s=0.0,
            max_repeats=2,
            settle_s=0.15,
            max_wait_s=0.3,
            retries=0,
        )
    else:
        policy = TimingPolicy()
    if args.repeats is not None:
        policy.min_repeats = args.repeats
        policy.max_repeats = max(policy.max_repeats, args.repeats)
    if args.budget is not None:
        policy.budget_s = args.budget
    if args.max_wait is not None:
        policy.max_wait_s = args.max_wait
    if args.quiet_cores is not None:
        policy.quiet_cores = args.quiet_cores

    info = machine_info()
    log(f"{info['cpu_model']}, {info['nproc']} cores; versions {info['versions']}")
    log(f"libs {libs}; policy {policy}")

    t_start = time.perf_counter()
    rows = run_forward(cases, libs, policy, args.seed)
    grad_rows = []
    if "ours" in libs:
        grad_rows = run_derivatives(grad_cases, libs, policy, args.seed)
    elapsed = time.perf_counter() - t_start

    print(
        f"\nmatrix_exp CPU benchmark: {info['cpu_model']}, {info['nproc']} cores, "
        f"mlx {mx.__version__}, scipy {scipy.__version__}, "
        f"torch {info['versions']['torch']}, numpy {np.__version__}"
    )
    print(
        f"inputs: random normal, each matrix scaled to 1-norm {NORM}; "
        f"warm-up {policy.warmup}, >= {policy.min_repeats} repeats, medians"
    )
    print_forward(rows, libs)
    print_derivatives(grad_rows)
    print_summary(rows)
    print(
        f"* = other processes used >= {policy.quiet_cores} cores while timing, "
        f"in all {policy.retries + 1} attempts (see background_cores in the JSON)"
    )
    print(f"(total {elapsed:.0f} s)")

    date = datetime.datetime.now(datetime.timezone.utc)
    json_path = args.out_dir / f"cpu-{info['hostname']}-{date:%Y%m%d}.json"
    payload = {
        "date_utc": date.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "tiny": args.tiny,
        "machine": info,
        "policy": vars(policy),
        "input": f"random normal, each matrix scaled to 1-norm {NORM}, "
        f"seed {args.seed}",
        "targets": {
            "fastest": "ours median <= min(scipy, torch) median",
            "vs_mlx_ops": f">= {TARGET_SPEEDUP_VS_MLX_OPS}x faster than mlx-ops at "
            f"n >= {TARGET_SPEEDUP_MIN_N}",
        },
        "forward": rows,
        "derivatives": grad_rows,
        "mlx_ops_t8_coefficient_relerr": mlx_ops_baseline.degree8_coefficient_error(),
        "elapsed_s": elapsed,
    }
    write_json(json_path, payload)
    print(f"wrote {json_path}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib)")
        return 0
    png_path = args.out_dir / "cpu.png"
    plot(png_path, rows, libs, info)
    print(f"wrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
