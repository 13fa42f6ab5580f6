// Host side of pair_kernel.cu: the float forward for n = 65..128 on a
// cluster of two blocks per matrix.
#pragma once

#include "cuda/kernel_utils.cuh"

namespace mlx_linalg_ext::cuda {

// The sizes the pair kernel covers.
constexpr int kPairMinN = 65;
constexpr int kPairMaxN = 128;

// Whether it can run on the current device: sm_90 or newer, its sm_90 code
// in this build, and enough shared memory per block.
bool pair_kernel_runs_here();

// exp of the batch x n x n float matrices a into x.
void launch_pair(
    Launcher& launcher,
    const float* a,
    float* x,
    int n,
    int batch);

} // namespace mlx_linalg_ext::cuda
