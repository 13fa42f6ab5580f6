// The ops of mlx_linalg_ext: the matrix exponential and its Frechet derivative.
#pragma once

#include <cstddef>
#include <utility>

#include "mlx/array.h"
#include "mlx/utils.h"

namespace mlx_linalg_ext {

using mlx::core::array;
using mlx::core::StreamOrDevice;

// exp(a) for a of shape (..., n, n), per matrix of the batch.
array matrix_exp(const array& a, StreamOrDevice s = {});

// (exp(a), L(a, e)): the exponential and its Frechet derivative in the
// direction e, L(a, e) = d/dt exp(a + t e) at t = 0.
std::pair<array, array>
expm_frechet(const array& a, const array& e, StreamOrDevice s = {});

// Bytes of GPU memory held by this library's own buffers: outputs still
// referenced, workspaces of running evaluations, and dropped outputs waiting
// to be freed (at the next GPU evaluation on their stream). MLX's memory
// counters leave them out (csrc/cuda/device_buffers.cu says why). 0 without
// GPU kernels.
size_t gpu_active_memory();

} // namespace mlx_linalg_ext
