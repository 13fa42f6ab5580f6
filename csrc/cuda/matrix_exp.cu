// CUDA backend of MatrixExp and ExpmFrechet: which kernels evaluate a batch.
// Every path computes, per matrix and on the device, the 1-norms of A and
// A - mu I, takes expm::decide's shift, degree and s, runs the product
// program of that degree on (A - mu I) 2^-s (s refined from ||B^2||, ||B^3||
// after the first two degree-18 products, expm::refine_squarings, then from
// ||B^6|| after the third, expm::refine_squarings_sixth), multiplies the
// approximant by e^(mu 2^-s) and squares s times; the Frechet derivative runs
// alongside as the dual evaluation (dP = dL R + L dR, d(X^2) = X dX + dX X).
// Nothing is read back to the host.
//
// - tiny_kernel.cu: n <= 8, many matrices a block (one thread, or one row
//   a thread, per matrix);
// - fused_kernel.cu: n <= 64 (32 for complex64 with the derivative), one
//   block per matrix, one launch for the batch;
// - pair_kernel.cu: the float forward at n = 65..128 on sm_90, a cluster of
//   two blocks per matrix;
// - sm90_path.cu: one large matrix on sm_90, wgmma GEMMs;
// - gemm_path.cu: everything else, predicated GEMM launches and one
//   persistent squaring kernel.
// test_hooks.h forces a path for the tests.
#include "cuda/kernel_utils.cuh"

#include <algorithm>
#include <type_traits>

#include "cuda/fused_kernel.h"
#include "cuda/gemm_path.h"
#include "cuda/pair_kernel.h"
#include "cuda/sm90_path.h"
#include "cuda/test_hooks.h"
#include "cuda/tiny_kernel.h"
#include "mlx/backend/cuda/utils.h"
#include "primitives.h"

namespace mlx_linalg_ext {

namespace mx = mlx::core;

namespace {

using namespace cuda;

// The tiles of the GEMM path for n x n T.
template <typename T>
GemmTiles gemm_tiles(const GemmRun& run, const TestHooks& hooks, T* x, T* l) {
  const int n = run.work.n;
  if (n >= hooks.tc_min) {
    if constexpr (std::is_same_v<T, float>) {
      // 16-byte accesses need n % 4 == 0 and 16-byte aligned matrices.
      return n % 4 == 0 && aligned16(x) && aligned16(run.base) &&
              (!l || aligned16(l))
          ? GemmTiles::kTf32x3
          : GemmTiles::kTf32x3Unaligned;
    }
    return GemmTiles::kTf32x3;
  }
  // Float tiles of 128 from n = 256 when there are at least as many as SMs.
  if constexpr (std::is_same_v<T, float>) {
    long big_tiles = long((n + 127) / 128) * ((n + 127) / 128) * run.work.batch;
    if (n >= 256 && big_tiles >= run.sms) {
      return GemmTiles::kSimtBig;
    }
  }
  return GemmTiles::kSimt;
}

template <typename T>
void expm_gpu(
    const mx::Stream& stream,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& encoder = mx::cu::get_command_encoder(stream);
  const bool frechet = inputs.size() == 2;
  const mx::array& a = inputs[0];
  const int n = a.shape(-1);
  const size_t nn = size_t(n) * n;
  const size_t batch_sz = a.size() / nn;
  if (batch_sz > size_t(1) << 30) {
    throw std::invalid_argument("[matrix_exp] Batch too large for the GPU.");
  }
  const int batch = int(batch_sz);
  Launcher launcher(encoder, inputs, outputs);
  for (auto& out : outputs) {
    out.set_data(launcher.memory(out.nbytes(), Use::kResult));
  }
  const T* pa = gpu_ptr<T>(a);
  const T* pe = frechet ? gpu_ptr<T>(inputs[1]) : nullptr;
  T* px = gpu_ptr<T>(outputs[0]);
  T* pl = frechet ? gpu_ptr<T>(outputs[1]) : nullptr;
  const TestHooks hooks = test_hooks();

  // Tiny matrices: many a block; small ones: a block each. One kernel for
  // the batch either way.
  if (n <= std::min({hooks.tiny_max, hooks.small_max, kTinyMaxN})) {
    launch_tiny<T>(launcher, pa, pe, px, pl, n, batch);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (!frechet && n >= kPairMinN &&
        n <= std::min(hooks.small_max, kPairMaxN) && pair_kernel_runs_here()) {
      launch_pair(launcher, pa, px, n, batch);
      return;
    }
  }
  const size_t smem = fused_smem_bytes<T>(n, frechet);
  if (n <= hooks.small_max && smem > 0 &&
      smem <= size_t(device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin))) {
    launch_fused<T>(launcher, pa, pe, px, pl, n, batch, smem);
    return;
  }

  // Larger ones: the GEMM path, whose products and first squarings the
  // wgmma GEMMs take for a single large matrix on Hopper.
  constexpr int c = std::is_same_v<T, c64> ? 2 : 1;
  const bool on_sm90 = sm90_path_applies(n * c, batch, hooks.sm90_min);
  const GemmRun run = gemm_begin<T>(
      launcher,
      pa,
      pe,
      n,
      batch,
      frechet,
      on_sm90 ? sm90_split_bytes<T>(n, frechet) : 0);
  if (on_sm90 && launch_sm90_steps<T>(launcher, run, px, pl)) {
    launch_squarings<T>(
        launcher, run, GemmTiles::kTf32x3, kSm90Squarings, px, pl);
    return;
  }
  const GemmTiles tiles = gemm_tiles<T>(run, hooks, px, pl);
  launch_products<T>(launcher, run, tiles, px, pl);
  launch_approximant<T>(launcher, run, px, pl);
  launch_squarings<T>(launcher, run, tiles, 0, px, pl);
}

void eval_gpu_dispatch(
    const mx::Stream& stream,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  switch (inputs[0].dtype()) {
    case mx::float32:
      return expm_gpu<float>(stream, inputs, outputs);
    case mx::complex64:
      return expm_gpu<c64>(stream, inputs, outputs);
    default:
      throw std::invalid_argument(
          "[matrix_exp] The GPU supports float32 and complex64 only.");
  }
}

} // namespace

void MatrixExp::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  std::vector<mx::array> outputs = {out};
  eval_gpu_dispatch(stream(), inputs, outputs);
}

void ExpmFrechet::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  eval_gpu_dispatch(stream(), inputs, outputs);
}

} // namespace mlx_linalg_ext
