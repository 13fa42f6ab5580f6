// Test builds with MLX_LINALG_EXT_METAL_EMULATOR: the CPU stream evaluates
// float32 and complex64 through the Metal kernels (metal/) on the CPU
// emulator (metal/emulator), with the launch plan eval_gpu encodes.
#pragma once

#include "mlx/array.h"

namespace mlx_linalg_ext::metal_emulator {

// exp(A) into x and, when e is given, L(A, E) into l; the arrays are
// row-contiguous (batch..., n, n) float32 or complex64 with data allocated.
void expm_batch(
    const mlx::core::array& a,
    const mlx::core::array* e,
    mlx::core::array& x,
    mlx::core::array* l);

} // namespace mlx_linalg_ext::metal_emulator
