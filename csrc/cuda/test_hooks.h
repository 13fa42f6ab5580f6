// Environment variables that force a path of the CUDA backend, so that the
// tests can cover every path on one GPU. Read at each evaluation (a test
// may set them for one case); unset, each takes its default.
//
//   MLX_LINALG_EXT_CUDA_SMALL_MAX=k  largest n for the fused kernels
//       (default 128: n <= 64 one block a matrix, n = 65..128 the float
//       forward on a cluster of two on sm_90). k < 128 sends larger n to the
//       GEMM path (0: every n); values above 128 act as 128.
//   MLX_LINALG_EXT_CUDA_TINY_MAX=k   largest n for the tiny-matrix kernel
//       (default 8, many matrices a block; values above 8 act as 8). 0:
//       every n <= 8 to the fused kernel. SMALL_MAX below k lowers it too.
//   MLX_LINALG_EXT_CUDA_TC_MIN=k     smallest n whose GEMM-path products run
//       on tensor cores in 3xTF32 (default 512; below it FP32 FMAs, whose
//       error grows with n where 3xTF32's barely does). A huge k: FP32 FMAs
//       only.
//   MLX_LINALG_EXT_CUDA_SM90_MIN=k   smallest n c (c = 2 for complex64) of a
//       single matrix on the Hopper wgmma path (default 2048; smaller ones
//       have too few output tiles to fill the GPU). A huge k: never (the
//       mma.sync tiles of the GEMM path instead).
#pragma once

namespace mlx_linalg_ext::cuda {

struct TestHooks {
  int small_max = 128;
  int tiny_max = 8;
  int tc_min = 512;
  int sm90_min = 2048;
};

// The defaults, overridden by the variables that are set.
TestHooks test_hooks();

} // namespace mlx_linalg_ext::cuda
