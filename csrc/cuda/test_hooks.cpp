// Reads the environment variables of test_hooks.h.
#include "cuda/test_hooks.h"

#include <cstdlib>

namespace mlx_linalg_ext::cuda {

namespace {

void read_int(const char* name, int& value) {
  if (const char* s = std::getenv(name)) {
    value = std::atoi(s);
  }
}

} // namespace

TestHooks test_hooks() {
  TestHooks hooks;
  read_int("MLX_LINALG_EXT_CUDA_SMALL_MAX", hooks.small_max);
  read_int("MLX_LINALG_EXT_CUDA_TINY_MAX", hooks.tiny_max);
  read_int("MLX_LINALG_EXT_CUDA_TC_MIN", hooks.tc_min);
  read_int("MLX_LINALG_EXT_CUDA_SM90_MIN", hooks.sm90_min);
  return hooks;
}

} // namespace mlx_linalg_ext::cuda
