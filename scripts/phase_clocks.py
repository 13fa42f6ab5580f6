"""Cycles per phase of the fused kernel's block 0, for a build with
-DCMAKE_CUDA_FLAGS=-DMLX_LINALG_EXT_PHASE_CLOCKS (the kernel prints them with
printf; this runs the case three times, the last run is the warm one).

Usage: python3 scripts/phase_clocks.py BATCH N [c64]"""

import sys

import mlx.core as mx
import mlx_linalg_ext as mle
import numpy as np

batch, n = int(sys.argv[1]), int(sys.argv[2])
dtype = np.complex64 if sys.argv[3:] == ["c64"] else np.float32
rng = np.random.default_rng(0)
a = rng.standard_normal((batch, n, n))
if dtype == np.complex64:
    a = a + 1j * rng.standard_normal((batch, n, n))
a *= (4.0 / np.abs(a).sum(axis=-2).max(axis=-1))[:, None, None]
x = mx.multiply(mx.array(a.astype(dtype)), 1, stream=mx.gpu)
mx.eval(x)
for _ in range(3):
    mx.eval(mle.matrix_exp(x, stream=mx.gpu))
    mx.synchronize()
