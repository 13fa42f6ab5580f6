// The kernels of the metallib: one list for the Metal instantiations
// (matrix_exp.metal) and the CPU emulator's registry of the same names.
// X(function template, element type, type name): host name
// "<function>_<type name>", e.g. expm_small_float32.
#pragma once

#define EXPM_METAL_KERNELS_OF(X, T, name) \
  X(expm_small, T, name)                  \
  X(expm_frechet_small, T, name)          \
  X(expm_params, T, name)                 \
  X(expm_scale, T, name)                  \
  X(expm_frechet_scale, T, name)          \
  X(expm_combine, T, name)                \
  X(expm_product, T, name)                \
  X(expm_final, T, name)                  \
  X(expm_frechet_final, T, name)          \
  X(expm_square, T, name)                 \
  X(expm_frechet_square, T, name)

#define EXPM_METAL_KERNELS(X)              \
  EXPM_METAL_KERNELS_OF(X, float, float32) \
  EXPM_METAL_KERNELS_OF(X, complex64, complex64)
