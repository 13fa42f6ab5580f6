// Sizes and memory layout shared by the Metal kernels (compiled as Metal) and
// the launch plan (compiled as C++ on the host): both sides must agree on
// them, so they live in one place.
#pragma once

namespace expm_metal {

enum : int {
  // Fused path: one threadgroup per matrix, everything in threadgroup memory.
  kSmallMaxN = 32, // n * n <= kSmallOwn * kSmallThreads
  kSmallThreads = 256,
  kSmallOwn = 4, // outputs per thread, held in registers while a product runs
  kSmallBuffers = 7, // n x n buffers of one pass (primal, or derivative)
  kSmallScratchBytes = 320, // column sums of the 1-norms

  // Tiny path: one thread per matrix, many matrices per threadgroup, each
  // with its own kSmallBuffers buffers per pass in threadgroup memory.
  kTinyMaxN = 8,
  kTinyMaxMatrices = 128, // threads per threadgroup at most
  kTinyThreadgroupBytes = 32768, // the budget (every Apple GPU's limit)
  kSimdWidth = 32,

  // Predicated path: per-matrix parameters, then n x n buffers in Work.
  kTile = 32, // output tile of the threadgroup GEMM (kTile x kTile)
  kTileK = 32, // depth of one staged slice of the operands
  kGemmThreads = 256, // 16 x 16 threads, 2 x 2 outputs each
  kElemThreads = 256, // threads of the elementwise kernels
  kElemPerGroup = 1024, // elements one elementwise threadgroup covers
  kParamWords = 11, // floats of parameters per matrix
  kParamsThreadgroupBytes = 2 * kElemThreads * 4, // partial sums
  kParamAlign = 256, // the matrices start at a multiple of this in Work
  // Buffers per matrix and pass: slots A, P2..P6 (0..5), operands L, R
  // (6, 7; they double as the squaring ping-pong). The derivative pass has
  // the same eight after them.
  kLargeBuffers = 8,
  kLargeLeft = 6,
  kLargeRight = 7,

  // float32 products of the predicated path on simdgroup_matrix<float, 8, 8>
  // (complex64 keeps the kTile product: there is no complex simdgroup
  // matrix). A threadgroup of 2 x 2 SIMD groups computes a kSimdTile square
  // tile; each SIMD group a kSimdBlock square block, (kSimdBlock / 8)^2
  // accumulators.
  kSimdTile = 64,
  kSimdTileK = 16, // depth of one staged slice of the operands
  kSimdBlock = 32,
  kSimdGroups = 4,
  kSimdThreads = 32 * kSimdGroups,
  // Row strides of the staged slices, 4 floats past their width (as MLX's
  // GEMM pads), so that the 8 rows a fragment load reads start on
  // different banks.
  kSimdLdLeft = kSimdTileK + 4, // kSimdTile rows of the left operand
  kSimdLdRight = kSimdTile + 4, // kSimdTileK rows of the right operand
};

// The per-matrix parameters, stored as floats (the integers are exact).
enum : int {
  kParamDegree = 0, // degree index, or expm::kNoAnswer
  kParamSquarings = 1, // refined in place by expm_refine's two passes
  kParamShift = 2, // 1 when the trace shift is used
  kParamMuRe = 3, // mu
  kParamMuIm = 4,
  kParamFactorRe = 5, // e^(mu 2^-s), with the refined s
  kParamFactorIm = 6,
  // 1 when expm_refine refines the squarings (expm::refines_squarings):
  // slot A holds the unscaled matrix until expm_rescale, and the derivatives
  // of the first three products wait for its second pass.
  kParamRefine = 7,
  // From expm_refine's first pass, for its second and expm_rescale's: the
  // first rule's s, and ||B^2|| 4^-s, ||B^3|| 8^-s.
  kParamFirstSquarings = 8,
  kParamNorm2 = 9,
  kParamNorm3 = 10,
};

inline long params_bytes(long batch) {
  long bytes = batch * kParamWords * 4;
  return (bytes + kParamAlign - 1) / kParamAlign * kParamAlign;
}

inline int large_buffers(bool frechet) {
  return frechet ? 2 * kLargeBuffers : kLargeBuffers;
}

// Matrices (= threads) per threadgroup of the tiny kernel: as many as fit in
// kTinyThreadgroupBytes at a stride of matrices + 1 (tiny_stride), rounded
// down to whole SIMD groups where at least one fits.
constexpr int tiny_matrices(int n, int elem_bytes, bool frechet) {
  int per_matrix = (frechet ? 2 : 1) * kSmallBuffers * n * n * elem_bytes;
  int fit = kTinyThreadgroupBytes / per_matrix - 1;
  if (fit > kTinyMaxMatrices) {
    fit = kTinyMaxMatrices;
  }
  return fit >= kSimdWidth ? fit / kSimdWidth * kSimdWidth : fit;
}

// Elements between consecutive elements of one matrix in the tiny kernel's
// threadgroup memory: one per matrix of the threadgroup, plus one so that
// the staging copies (consecutive elements of one matrix) fall in different
// banks.
constexpr int tiny_stride(int n, int elem_bytes, bool frechet) {
  return tiny_matrices(n, elem_bytes, frechet) + 1;
}

inline long tiny_threadgroup_bytes(int n, int elem_bytes, bool frechet) {
  long buffers = frechet ? 2 * kSmallBuffers : kSmallBuffers;
  long bytes =
      buffers * long(n) * n * elem_bytes * tiny_stride(n, elem_bytes, frechet);
  return (bytes + 15) / 16 * 16;
}

// Threadgroup bytes of the float32 product kernels: the two staged slices.
inline long simd_product_threadgroup_bytes() {
  long floats = long(kSimdTile) * kSimdLdLeft + long(kSimdTileK) * kSimdLdRight;
  return (floats * 4 + 15) / 16 * 16;
}

// Threadgroup bytes of the fused kernel: the scratch, then the buffers.
inline long small_threadgroup_bytes(int n, int elem_bytes, bool frechet) {
  long buffers = frechet ? 2 * kSmallBuffers : kSmallBuffers;
  long bytes = kSmallScratchBytes + buffers * long(n) * n * elem_bytes;
  return (bytes + 15) / 16 * 16; // Metal wants a multiple of 16
}

} // namespace expm_metal
