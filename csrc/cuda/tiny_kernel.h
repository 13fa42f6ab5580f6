// Host side of tiny_kernel.cu: batches of n <= 8 matrices, many a block.
#pragma once

#include "cuda/kernel_utils.cuh"

namespace mlx_linalg_ext::cuda {

// The largest n of the tiny kernel.
constexpr int kTinyMaxN = 8;

// exp (and the derivative in the direction e, when e is not null, into l)
// of the batch x n x n matrices a into x, n <= kTinyMaxN.
template <typename T>
void launch_tiny(
    Launcher& launcher,
    const T* a,
    const T* e,
    T* x,
    T* l,
    int n,
    int batch);

} // namespace mlx_linalg_ext::cuda
