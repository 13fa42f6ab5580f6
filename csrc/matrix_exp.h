// The ops of mlx_linalg_ext: the matrix exponential and its Frechet derivative.
#pragma once

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

} // namespace mlx_linalg_ext
