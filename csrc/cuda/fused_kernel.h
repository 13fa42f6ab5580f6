// Host side of fused_kernel.cu: one block per matrix for n <= 64.
#pragma once

#include <cstddef>

#include "cuda/kernel_utils.cuh"

namespace mlx_linalg_ext::cuda {

// Dynamic shared memory of the fused kernel for n x n T (with the
// derivative when `frechet`), or 0 where it has no kernel for that size.
template <typename T>
size_t fused_smem_bytes(int n, bool frechet);

// exp (and the derivative in the direction e, when e is not null, into l)
// of the batch x n x n matrices a into x; smem from fused_smem_bytes.
template <typename T>
void launch_fused(
    Launcher& launcher,
    const T* a,
    const T* e,
    T* x,
    T* l,
    int n,
    int batch,
    size_t smem);

} // namespace mlx_linalg_ext::cuda
