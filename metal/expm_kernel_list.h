// The kernels of the metallib: one list for the Metal instantiations
// (matrix_exp.metal) and the CPU emulator's registry of the same names.
// X(function template, element type, type name): host name
// "<function>_<type name>", e.g. expm_small_float32.
#pragma once

#define EXPM_METAL_KERNELS_OF(X, T, name) \
  X(expm_small, T, name)                  \
  X(expm_frechet_small, T, name)          \
  EXPM_METAL_TINY_KERNELS_OF(X, T, name)  \
  X(expm_params, T, name)                 \
  X(expm_scale, T, name)                  \
  X(expm_frechet_scale, T, name)          \
  X(expm_combine, T, name)                \
  X(expm_product, T, name)                \
  X(expm_refine, T, name)                 \
  X(expm_rescale, T, name)                \
  X(expm_frechet_rescale, T, name)        \
  X(expm_final, T, name)                  \
  X(expm_frechet_final, T, name)          \
  X(expm_square, T, name)                 \
  X(expm_frechet_square, T, name)

// The tiny kernels, one per order n = 1 .. kTinyMaxN (expm_tiny.h).
#define EXPM_METAL_TINY_KERNELS_OF(X, T, name) \
  X(expm_tiny_1, T, name)                      \
  X(expm_tiny_2, T, name)                      \
  X(expm_tiny_3, T, name)                      \
  X(expm_tiny_4, T, name)                      \
  X(expm_tiny_5, T, name)                      \
  X(expm_tiny_6, T, name)                      \
  X(expm_tiny_7, T, name)                      \
  X(expm_tiny_8, T, name)                      \
  X(expm_frechet_tiny_1, T, name)              \
  X(expm_frechet_tiny_2, T, name)              \
  X(expm_frechet_tiny_3, T, name)              \
  X(expm_frechet_tiny_4, T, name)              \
  X(expm_frechet_tiny_5, T, name)              \
  X(expm_frechet_tiny_6, T, name)              \
  X(expm_frechet_tiny_7, T, name)              \
  X(expm_frechet_tiny_8, T, name)

#define EXPM_METAL_KERNELS(X)              \
  EXPM_METAL_KERNELS_OF(X, float, float32) \
  EXPM_METAL_KERNELS_OF(X, complex64, complex64)
