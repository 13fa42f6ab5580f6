"""``python -m mlx_linalg_ext`` after a plain install: without numpy and
SciPy it checks against closed forms and identities and says how to get the
SciPy comparison; with SciPy it compares with SciPy as well."""

import os
import subprocess
import sys
import textwrap

import pytest

BLOCKER = textwrap.dedent(
    """
    import sys

    class _Blocker:
        # Makes numpy and scipy unimportable, as after `pip install .` alone.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("numpy", "scipy"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Blocker())
    """
)


def _run(args, blocked_dir=None):
    env = dict(os.environ)
    if blocked_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(blocked_dir)] + [p for p in [env.get("PYTHONPATH")] if p]
        )
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def no_numpy_scipy(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    return tmp_path


def test_blocker_blocks(no_numpy_scipy):
    for module in ("numpy", "scipy.linalg"):
        proc = _run(["-c", f"import {module}"], no_numpy_scipy)
        assert proc.returncode != 0
        assert "ModuleNotFoundError" in proc.stderr


def test_main_without_numpy_and_scipy(no_numpy_scipy):
    proc = _run(["-m", "mlx_linalg_ext"], no_numpy_scipy)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "closed forms and identities" in out
    for check in (
        "exp(diag(d)) = diag(e^d)",
        "[[0,-t],[t,0]] -> cos/sin",
        "nilpotent 5x5 -> finite series",
        "exp(A) exp(-A) = I",
        "det exp(A) = e^tr(A)",
        "L(A, E) vs central difference",
    ):
        assert check in out
    for dtype in ("float32", "float64", "complex64"):
        assert dtype in out
    assert "FAIL" not in out
    assert "scipy.linalg.expm" not in out
    assert 'pip install "mlx-linalg-ext[test]"' in out
    assert "timing, median ms" in out
    assert out.rstrip().endswith("self-check: passed")


def test_main_with_scipy():
    pytest.importorskip("scipy")
    proc = _run(["-m", "mlx_linalg_ext", "--no-timing"])
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "closed forms and identities" in out
    assert "scipy.linalg.expm / expm_frechet" in out
    assert "expm, 8x8, |A|_1 = 40" in out
    assert "FAIL" not in out
    assert "SciPy is not installed" not in out
    assert "timing, median ms" not in out
    assert out.rstrip().endswith("self-check: passed")
