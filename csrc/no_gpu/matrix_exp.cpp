// Builds without GPU kernels: the ops schedule themselves on the CPU stream
// (matrix_exp.cpp, resolve_stream), so eval_gpu is never reached.
#include <stdexcept>

#include "matrix_exp.h"
#include "primitives.h"

namespace mlx_linalg_ext {

void MatrixExp::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error("[matrix_exp] This build has no GPU kernels.");
}

void ExpmFrechet::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  throw std::runtime_error("[expm_frechet] This build has no GPU kernels.");
}

size_t gpu_active_memory() {
  return 0;
}

} // namespace mlx_linalg_ext
