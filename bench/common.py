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


def decision(a: np.ndarray) -> tuple[int, int]:
    """(degree index or -1 for no answer, squarings) the package takes for
    the one matrix a: the 1-norm choice from A and A - mu I (the smaller),
    refined at the last degree from the 1-norms of B^2, B^3 (unscaled) and
    then of B^2, B^3, B^6 scaled (B the matrix it scales), computed here in
    float64 (csrc/expm_numerics.h)."""
    from mlx_linalg_ext._ext import decide, refine_squarings, refine_squarings_sixth

    n = a.shape[-1]
    w = wide(a).reshape(n, n)
    b = w - np.trace(w) / n * np.eye(n)
    double = np.asarray(a).dtype == np.float64
    shift, degree, s, _ = decide(float(one_norm(w)), float(one_norm(b)), double)
    b = b if shift else w
    if degree == 5 and s > 0:
        b2, b3 = b @ b, b @ b @ b
        s = refine_squarings(float(one_norm(b2)), float(one_norm(b3)), s, double)
        b2, b3 = b2 * 4.0**-s, b3 * 8.0**-s
        n2, n3, n6 = (float(one_norm(m)) for m in (b2, b3, b3 @ b3))
        s = refine_squarings_sixth(n2, n3, n6, s, double)
    return degree, s


def products_total(a: np.ndarray) -> int:
    """Matrix products the package spends on the whole batch a."""
    n = a.shape[-1]
    total = 0
    for m in np.asarray(a).reshape(-1, n, n):
        degree, s = decision(m)
        if degree >= 0:
            total += [0, 1, 2, 3, 4, 5][degree] + s
    return total


def products_needed(a: np.ndarray) -> int:
    """Matrix products the package spends on the batch a (its largest
    matrix count): the degree's products plus the squarings (decision())."""
    n = a.shape[-1]
    counts = [0]
    for m in np.asarray(a).reshape(-1, n, n):
        degree, s = decision(m)
        if degree >= 0:
            counts.append([0, 1, 2, 3, 4, 5][degree] + s)
    return max(counts)
