"""Perturbation audit: does the test suite notice a slightly wrong answer?

Runs the suite (or the pytest arguments given) with the package's ops
wrapped, once per mode:

- forward: float32/complex64 results of matrix_exp and expm_frechet
  (exp(A) and L(A, E)) multiplied by (1 + 1e-6), about 17 u;
- derivatives: the vjp and jvp of both ops multiplied by (1 + 1e-5);
- amplify: float32 results of matrix_exp and expm_frechet's exp(A) with their
  error made 10x larger, X + 9 (X - X64), X64 from this package's float64
  CPU path on the same input (a 10x regression at any norm).

Each matrix is put in a band by the policy's decision (degree 1..18 without
squaring, then 1-3, 4-8 and 9+ squarings, from the 1-norms of A and of
A - tr(A)/n I). Every test first runs unperturbed and records the bands of the
matrices it passes to the ops; then it runs once per band it touched with only
that band's matrices perturbed. The report counts, per mode and band, the
tests that touched it and those that failed. Exit status 1 if in some mode a
band has no failing test (bands touched by no test count as such).

    python scripts/perturbation_audit.py                 # whole suite
    python scripts/perturbation_audit.py --modes forward tests/test_forward.py

It is also the pytest plugin it loads (-p perturbation_audit), so it needs
nothing outside this file; the package itself has no perturbation knob.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BANDS = ["deg1", "deg2", "deg4", "deg8", "deg12", "deg18", "s1-3", "s4-8", "s9+"]
NO_ANSWER = len(BANDS)  # NaN/Inf or past 1/u: the result is NaN, nothing to see
MODES = {"forward": 1e-6, "derivatives": 1e-5, "amplify": 9.0}


# --------------------------------------------------------------- the plugin


class _State:
    mode = None
    band = None  # the band perturbed now; None: record, perturb nothing
    touched: set = set()  # noqa: RUF012


def _bands(a):
    """The band of each matrix of a (an mx.array (..., n, n)), as an
    mx.array of the batch shape, by the same rule as expm::decide."""
    import mlx.core as mx

    sys.path.insert(0, str(ROOT / "tests"))
    from expm_testutils import THETA32

    n = a.shape[-1]
    if a.dtype != mx.complex64:
        a = a.astype(mx.float32)
    norm = mx.max(mx.sum(mx.abs(a), axis=-2), axis=-1)
    mu = mx.sum(mx.diagonal(a, axis1=-2, axis2=-1), axis=-1) / n
    # A real identity: MLX's GPU scatter (behind mx.eye) has no complex64.
    shifted = a - mu[..., None, None] * mx.eye(n, dtype=mx.float32)
    snorm = mx.max(mx.sum(mx.abs(shifted), axis=-2), axis=-1)
    nu = mx.where(snorm < norm, snorm, norm)
    deg = sum((nu > t).astype(mx.int32) for t in THETA32[:-1])
    s = mx.maximum(mx.ceil(mx.log2(mx.maximum(nu, 1e-30) / THETA32[-1])), 0)
    s = mx.where(deg == 5, s, 0)
    band = mx.where(s == 0, deg, mx.where(s <= 3, 6, mx.where(s <= 8, 7, 8)))
    bad = ~(nu <= 2.0**24)  # NaN, Inf or past 1/u
    return mx.where(bad, NO_ANSWER, band)


def _record(band):
    import numpy as np

    try:  # not possible inside compile or vmap tracing: skip there
        _State.touched.update(int(b) for b in np.array(band).ravel())
    except (RuntimeError, ValueError):
        return


def _audited(a, forward):
    """Whether the mode perturbs the op's result for input a: float32 or
    complex64 results (float32 only for amplify), in the forward modes for
    the primal call, in the derivatives mode for the vjp and jvp."""
    import mlx.core as mx

    if forward != (_State.mode != "derivatives"):
        return False
    if _State.mode == "amplify" and a.dtype == mx.complex64:
        return False
    return a.dtype not in (mx.float64, mx.float16, mx.bfloat16)


def _perturb(x, band, eps, ref=None):
    """x with the matrices of the band under audit perturbed: x (1 + eps), or
    x + eps (x - ref) when a reference is given."""
    import mlx.core as mx

    if _State.band is None or x.dtype not in (mx.float32, mx.complex64):
        return x
    mask = mx.expand_dims(band == _State.band, (-2, -1))
    if ref is None:
        y = x * (1 + eps)
    else:
        y = (x.astype(mx.float64) * (1 + eps) - eps * ref).astype(x.dtype)
    return mx.where(mask, y, x)


def _ref64(op, *args):
    """The float64 CPU result of the unwrapped op on the same float32 input."""
    import mlx.core as mx

    with mx.stream(mx.cpu):
        wide = [x.astype(mx.float64, stream=mx.cpu) for x in args]
        out = op(*wide, stream=mx.cpu)
    return out


def _wrap(mle):
    import mlx.core as mx

    orig_exp, orig_frechet = mle.matrix_exp, mle.expm_frechet
    mode, eps = _State.mode, MODES[_State.mode]
    fwd = mode in ("forward", "amplify")

    def matrix_exp(a, /, *, stream=None):
        def plain(x):
            return orig_exp(x, stream=stream)

        @mx.custom_function
        def f(x):
            out = plain(x)
            if not fwd or out.dtype not in (mx.float32, mx.complex64):
                return out
            band = _bands(x)
            if mode == "amplify":
                if out.dtype != mx.float32:
                    return out
                return _perturb(out, band, eps, _ref64(orig_exp, x))
            return _perturb(out, band, eps)

        # One argument: MLX passes the arrays themselves, not tuples.
        @f.vjp
        def f_vjp(x, cotangent, output):
            (g,) = mx.vjp(plain, [x], [cotangent])[1]
            if _audited(x, False):
                _record(_bands(x))
            return g if fwd else _perturb(g, _bands(x), eps)

        @f.jvp
        def f_jvp(x, t):
            (d,) = mx.jvp(plain, [x], [t])[1]
            if _audited(x, False):
                _record(_bands(x))
            return d if fwd else _perturb(d, _bands(x), eps)

        @f.vmap
        def f_vmap(x, ax):
            return f(mx.moveaxis(x, ax, 0)), 0

        ok = isinstance(a, mx.array) and a.ndim >= 2 and a.size > 0
        if not (ok and a.shape[-1] == a.shape[-2]):
            return plain(a)
        if _audited(a, True):
            _record(_bands(a))
        return f(a)

    def expm_frechet(a, e, /, *, stream=None):
        def plain(x, y):
            return orig_frechet(x, y, stream=stream)

        def band_of(x, y):
            shape = mx.broadcast_shapes(x.shape[:-2], y.shape[:-2])
            return mx.broadcast_to(_bands(x), shape)

        @mx.custom_function
        def f(x, y):
            out = plain(x, y)
            if not fwd or out[0].dtype not in (mx.float32, mx.complex64):
                return out
            band = band_of(x, y)
            if mode == "amplify":
                if out[0].dtype != mx.float32:
                    return out
                ref = _ref64(orig_exp, mx.broadcast_to(x, out[0].shape))
                return (_perturb(out[0], band, eps, ref), out[1])
            return tuple(_perturb(o, band, eps) for o in out)

        @f.vjp
        def f_vjp(primals, cotangents, outputs):
            grads = mx.vjp(plain, list(primals), list(cotangents))[1]
            if _audited(primals[0], False):
                _record(_bands(primals[0]))
            if fwd:
                return tuple(grads)
            band = band_of(*primals)
            out = []
            for i, (p, g) in enumerate(zip(primals, grads)):
                # The gradient of a broadcast argument sums over the batch:
                # the bands of A where it is A, else none.
                if g.shape[:-2] == band.shape:
                    g = _perturb(g, band, eps)
                elif i == 0:
                    g = _perturb(g, _bands(p), eps)
                out.append(g)
            return tuple(out)

        @f.jvp
        def f_jvp(primals, tangents):
            # A primal not differentiated has the tangent None.
            tangents = [
                mx.zeros_like(p) if t is None else t for p, t in zip(primals, tangents)
            ]
            outs = mx.jvp(plain, list(primals), tangents)[1]
            if _audited(primals[0], False):
                _record(_bands(primals[0]))
            if fwd:
                return tuple(outs)
            band = band_of(*primals)
            return tuple(_perturb(o, band, eps) for o in outs)

        @f.vmap
        def f_vmap(inputs, axes):
            x, y = inputs
            ax, ay = axes
            x = mx.moveaxis(x, ax, 0) if ax is not None else x
            y = mx.moveaxis(y, ay, 0) if ay is not None else y
            # A matrix without the mapped axis broadcasts over it.
            if ax is None:
                x = mx.broadcast_to(x[None], (y.shape[0], *x.shape))
            if ay is None:
                y = mx.broadcast_to(y[None], (x.shape[0], *y.shape))
            return f(x, y), (0, 0)

        ok = isinstance(a, mx.array) and isinstance(e, mx.array)
        ok = ok and a.ndim >= 2 and e.ndim >= 2 and a.size > 0 and e.size > 0
        ok = ok and a.shape[-1] == a.shape[-2] == e.shape[-1] == e.shape[-2]
        try:
            ok = ok and mx.broadcast_shapes(a.shape[:-2], e.shape[:-2]) is not None
        except ValueError:
            ok = False
        if not ok:  # the op's own errors and empty results
            return plain(a, e)
        if _audited(a, True):
            _record(_bands(a))
        return f(a, e)

    mle.matrix_exp, mle.expm_frechet = matrix_exp, expm_frechet


_RESULTS = {}


def pytest_configure(config):
    import mlx_linalg_ext as mle

    _State.mode = os.environ["MLE_AUDIT_MODE"]
    _wrap(mle)


def _fresh_rng(item):
    conftest = sys.modules.get("conftest")
    if "rng" in getattr(item, "funcargs", {}) and hasattr(conftest, "rng_seed"):
        import numpy as np

        item.funcargs["rng"] = np.random.default_rng(conftest.rng_seed(item))


def pytest_collection_modifyitems(config, items):
    import pytest

    quiet = (pytest.skip.Exception, pytest.xfail.Exception)

    def audited(item, runtest):
        def run():
            _State.band, _State.touched = None, set()
            _fresh_rng(item)
            try:
                runtest()
            except quiet:  # skipped or xfailed: nothing to audit
                _RESULTS[item.nodeid] = {}
                raise
            except BaseException:
                _RESULTS[item.nodeid] = {"unperturbed": "fails"}
                raise
            touched = sorted(_State.touched - {NO_ANSWER})
            outcome = {}
            for band in touched:
                _State.band = band
                _fresh_rng(item)
                try:
                    runtest()
                    outcome[BANDS[band]] = "passes"
                except quiet:
                    outcome[BANDS[band]] = "passes"
                except KeyboardInterrupt:
                    raise
                except BaseException:  # noqa: BLE001 (any failure counts)
                    outcome[BANDS[band]] = "fails"
                finally:
                    _State.band = None
            _RESULTS[item.nodeid] = outcome

        return run

    for item in items:
        item.runtest = audited(item, item.runtest)


def pytest_sessionfinish(session):
    out = os.environ.get("MLE_AUDIT_OUT")
    if out:
        Path(out).write_text(json.dumps(_RESULTS, indent=1))


# --------------------------------------------------------------- the driver


def _run_mode(mode, pytest_args):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        env = dict(os.environ, MLE_AUDIT_MODE=mode, MLE_AUDIT_OUT=str(out))
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]
        )
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "perturbation_audit"]
        cmd += ["-p", "no:cacheprovider", *pytest_args]
        print(f"== {mode}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=False, cwd=ROOT, env=env)
        if not out.exists():
            sys.exit(f"{mode}: pytest wrote no results")
        return json.loads(out.read_text())


def _report(mode, results):
    touched = {b: 0 for b in BANDS}
    failed = {b: 0 for b in BANDS}
    broken = [k for k, v in results.items() if v.get("unperturbed") == "fails"]
    for outcome in results.values():
        for band, what in outcome.items():
            if band in touched:
                touched[band] += 1
                failed[band] += what == "fails"
    what = "error x10" if mode == "amplify" else f"x(1 + {MODES[mode]:g})"
    print(f"\n{mode} ({what}): tests failing per band")
    print(f"  {'band':6s} {'touched':>8s} {'failing':>8s}")
    for b in BANDS:
        print(f"  {b:6s} {touched[b]:8d} {failed[b]:8d}")
    if broken:
        print(f"  {len(broken)} test(s) fail with the wrapper alone (not counted):")
        for k in broken:
            print(f"    {k}")
    return [b for b in BANDS if failed[b] == 0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes", default="forward,derivatives,amplify", help="comma-separated"
    )
    parser.add_argument("--json", help="write the per-test outcomes here")
    args, pytest_args = parser.parse_known_args()
    pytest_args = pytest_args or ["tests"]
    summary, everything = {}, {}
    for mode in args.modes.split(","):
        everything[mode] = _run_mode(mode, pytest_args)
        summary[mode] = _report(mode, everything[mode])
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    bad = {m: b for m, b in summary.items() if b}
    for m, b in bad.items():
        print(f"{m}: no failing test in band(s) {', '.join(b)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
