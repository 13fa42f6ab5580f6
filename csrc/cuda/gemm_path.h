// Host side and workspace of gemm_path.cu: matrices past the fused kernels.
#pragma once

#include <cstddef>

#include "cuda/kernel_utils.cuh"

namespace mlx_linalg_ext::cuda {

// Workspace per matrix (n x n buffers): 0 = B = A - mu I (slot 1), 1..5 =
// P2..P6 (slots 2..6), 6 = L, 7 = R; with the derivative 8..15 the same for dA.
// The approximant and the squarings reuse L / R (dL / dR).
constexpr int kBuffers = 8;

// Sets of n column sums per matrix in GemmRun::colsum: |A| and |A - mu I|,
// then |B^2|, |B^3| and |B^6| (overscaling).
constexpr int kColsumSets = 3;

struct Work {
  void* buf; // batch x (8 or 16) x n x n elements
  Params* params; // batch
  unsigned int* barrier; // [count, generation]
  int n;
  int batch;
  int frechet;
};

template <typename T>
__device__ inline T* wbuf(const Work& w, int b, int i) {
  size_t nn = size_t(w.n) * w.n;
  size_t per = nn * kBuffers * (w.frechet ? 2 : 1);
  return static_cast<T*>(w.buf) + per * b + nn * i;
}

// The GEMM path of one evaluation: its workspace and launch shape.
struct GemmRun {
  Work work;
  char* base; // the workspace (the buffers first)
  char* extra; // the extra_bytes asked of gemm_begin
  double* colsum; // batch x kColsumSets n column sums
  int ew_blocks; // blocks per matrix of the elementwise launches
  int sms; // multiprocessors of the device
};

// Tiles of the product and squaring kernels: FP32 (complex64) FMAs in 64 x
// 64 tiles, float FMAs in 128 x 128 tiles, or 3xTF32 tensor-core tiles
// (float: kTf32x3 needs n % 4 == 0 and 16-byte aligned matrices).
enum class GemmTiles { kSimt, kSimtBig, kTf32x3, kTf32x3Unaligned };

// Allocates the workspace (with extra_bytes more, 256-byte aligned, for the
// caller) and launches the norms, expm::decide and the shift per matrix.
// B stays unscaled until launch_refinement.
template <typename T>
GemmRun gemm_begin(
    Launcher& launcher,
    const T* a,
    const T* e,
    int n,
    int batch,
    bool frechet,
    size_t extra_bytes);

// After the first two products (B^2, B^3 of the unscaled B): s refined from
// their 1-norms (expm::refine_squarings) in the per-matrix parameters, then
// B, B^2, B^3 and their derivatives scaled by 2^-s, 4^-s, 8^-s. With
// `sixth`, after the third (B^6 of the scaled B^3): s' <= s from ||B^6||
// (expm::refine_squarings_sixth), then B, B^2, B^3, B^6 and their
// derivatives scaled by 2^d, 4^d, 8^d, 64^d, d = s - s'. Predicated on the
// device; every matrix with squarings left takes it.
template <typename T>
void launch_refinement(Launcher& launcher, const GemmRun& run, bool sixth);

// The products of the program, each predicated on the matrix's degree, with
// launch_refinement after the second and the third.
template <typename T>
void launch_products(
    Launcher& launcher,
    const GemmRun& run,
    GemmTiles tiles,
    T* x,
    T* l);

// The approximant (into x / l for matrices without squarings).
template <typename T>
void launch_approximant(Launcher& launcher, const GemmRun& run, T* x, T* l);

// Squarings first, first + 1, ... of every matrix in one persistent kernel;
// the last squaring of a matrix writes x / l.
template <typename T>
void launch_squarings(
    Launcher& launcher,
    const GemmRun& run,
    GemmTiles tiles,
    int first,
    T* x,
    T* l);

} // namespace mlx_linalg_ext::cuda
