// Host side of sm90_path.cu: single large matrices on Hopper wgmma GEMMs.
#pragma once

#include <cstddef>

#include "cuda/gemm_path.h"

namespace mlx_linalg_ext::cuda {

// Squarings run as predicated wgmma launches; the rest go to the GEMM
// path's persistent squaring kernel. 4 cover 1-norms up to 16 theta_18
// (about 48) at the cost of a few idle launches for smaller norms.
constexpr int kSm90Squarings = 4;

// Whether a batch of `batch` matrices with nc floats per row takes this
// path: one matrix, nc >= min_nc, nc % 4 == 0 (16-byte TMA rows), an sm_90
// GPU and sm_90a code in this build.
bool sm90_path_applies(int nc, int batch, int min_nc);

// Bytes of split operands the path needs after the GEMM path's workspace
// (gemm_begin's extra_bytes).
template <typename T>
size_t sm90_split_bytes(int n, bool frechet);

// The products, the approximant and the first kSm90Squarings squarings of
// the one matrix of `run`. False (nothing launched) where TMA or CUTLASS
// cannot take the operands: then the GEMM path runs instead.
template <typename T>
bool launch_sm90_steps(Launcher& launcher, const GemmRun& run, T* x, T* l);

} // namespace mlx_linalg_ext::cuda
