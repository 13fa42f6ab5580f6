"""Helpers shared by bench_cpu.py and bench_gpu.py: random inputs of a given
1-norm, float64 references' error measure, and the number of matrix products
the algorithm spends on an input (for the distance to the GEMM limit)."""

from __future__ import annotations

import numpy as np


def one_norm(a: np.ndarray) -> np.ndarray:
    """The 1-norm of each matrix of a batch."""
    return np.abs(a).sum(axis=-2).max(axis=-1)


def wide(a: np.ndarray) -> np.ndarray:
    """The same values in float64 / complex128."""
    return np.asarray(a).astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    """Normwise relative error of x against the float64 reference, over the
    whole batch."""
    return float(np.linalg.norm(wide(x) - ref) / np.linalg.norm(ref))


def random_matrices(rng, batch: int, n: int, dtype: str, norm: float) -> np.ndarray:
    """batch standard normal n x n matrices (complex normal for complex
    dtypes), each scaled to 1-norm `norm`, in `dtype`."""
    shape = (batch, n, n)
    a = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        a = a + 1j * rng.standard_normal(shape)
    a *= norm / one_norm(a)[..., None, None]
    return a.astype(dtype)


def products_needed(a: np.ndarray) -> int:
    """Matrix products the package spends on the batch a (its largest
    matrix count): the degree's products plus the squarings, as the package's
    own per-matrix decision takes them from the 1-norms of A and A - mu I."""
    from mlx_linalg_ext._ext import decide

    n = a.shape[-1]
    w = wide(a).reshape(-1, n, n)
    mu = np.trace(w, axis1=-2, axis2=-1) / n
    shifted = one_norm(w - mu[:, None, None] * np.eye(n))
    double = np.asarray(a).dtype == np.float64
    return max(
        (decide(float(v), float(vs), double)[3] for v, vs in zip(one_norm(w), shifted)),
        default=0,
    )
