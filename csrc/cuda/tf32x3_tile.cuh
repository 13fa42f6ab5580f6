// One output tile of C = A1 B1 (+ A2 B2) for n x n row-major float or
// complex64 matrices on tensor cores in split-precision TF32 ("3xTF32":
// a = big + small with big, small TF32; a b ~ big*big + big*small +
// small*big, accumulated in FP32), which keeps FP32 accuracy (plain TF32 does
// not: ~1e-3 relative per product).
//
// The mainloop and the epilogue are CUTLASS's Ampere multistage ones
// (threadblock::DefaultMma with arch::OpMultiplyAddFastF32 /
// OpMultiplyAddComplexFastF32, mma.sync, cp.async); only the tile-to-block
// mapping is ours, so that the predicated product launches and the
// persistent squaring kernel of gemm_path.cu choose the matrix and the tile
// on the device. The headers ship in the mlx-cuda wheel (mlx/include).
#pragma once

#include <cutlass/complex.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/kernel/default_gemm.h>
#include <cutlass/gemm/kernel/default_gemm_complex.h>
#include <cutlass/gemm/threadblock/threadblock_swizzle.h>

namespace mlx_linalg_ext::tc {

using RowMajor = cutlass::layout::RowMajor;

// Block tile, warp tile (k-step) and pipeline stages of a float GEMM.
template <int kM, int kN, int kK, int kWarpM, int kWarpN, int kStages>
struct Config {
  using Block = cutlass::gemm::GemmShape<kM, kN, kK>;
  using Warp = cutlass::gemm::GemmShape<kWarpM, kWarpN, kK>;
  static constexpr int stages = kStages;
};
// 128 x 64 block tiles, 2 x 2 warps of 64 x 32, k-steps of 16, 3 stages
// (36 KiB of shared memory, 128 threads): as fast as the other shapes
// compared in NOTES.md or faster; warp tiles of 64 x 64 spill registers
// (3xTF32 holds big and small fragments).
using Config128x64 = Config<128, 64, 16, 64, 32, 3>;

// float. kAlign = 4 (16-byte cp.async) when n % 4 == 0 and every pointer is
// 16-byte aligned, else 1.
template <int kAlign, typename Cfg = Config128x64>
struct FloatGemm {
  using Element = float;
  using Output = cutlass::epilogue::thread::LinearCombination<
      float,
      kAlign,
      float,
      float,
      cutlass::epilogue::thread::ScaleType::Nothing>;
  using Kernel = typename cutlass::gemm::kernel::DefaultGemm<
      float,
      RowMajor,
      kAlign,
      float,
      RowMajor,
      kAlign,
      float,
      RowMajor,
      float,
      cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80,
      typename Cfg::Block,
      typename Cfg::Warp,
      cutlass::gemm::GemmShape<16, 8, 8>,
      Output,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>,
      Cfg::stages,
      false,
      cutlass::arch::OpMultiplyAddFastF32>::GemmKernel;
};

// complex64: 64 x 64 block tiles, 2 x 2 warps of 32 x 32, k-steps of 16,
// 3 stages; elements of 8 bytes, so alignment 1.
struct ComplexGemm {
  using Element = cutlass::complex<float>;
  using Output = cutlass::epilogue::thread::LinearCombination<
      Element,
      1,
      Element,
      Element,
      cutlass::epilogue::thread::ScaleType::Nothing>;
  using Kernel = typename cutlass::gemm::kernel::DefaultGemmComplex<
      Element,
      RowMajor,
      Element,
      RowMajor,
      Element,
      RowMajor,
      Element,
      cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80,
      cutlass::gemm::GemmShape<64, 64, 16>,
      cutlass::gemm::GemmShape<32, 32, 16>,
      cutlass::gemm::GemmShape<16, 8, 8>,
      Output,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>,
      3,
      cutlass::ComplexTransform::kNone,
      cutlass::ComplexTransform::kNone,
      cutlass::arch::OpMultiplyAddComplexFastF32,
      false>::GemmKernel;
};

// The tile policy gemm_path.cu's product and squaring kernels take.
template <typename Gemm>
struct Tile {
  using Kernel = typename Gemm::Kernel;
  using Element = typename Gemm::Element;
  using Mma = typename Kernel::Mma;
  using Epilogue = typename Kernel::Epilogue;
  using SharedStorage = typename Kernel::SharedStorage;
  static constexpr int kRows = Mma::Shape::kM;
  static constexpr int kCols = Mma::Shape::kN;
  static constexpr int kThreads = Kernel::kThreadCount;

  // acc += A B over the whole k range for the tile at (row0, col0).
  __device__ static void accumulate(
      const Element* A,
      const Element* B,
      int n,
      int row0,
      int col0,
      SharedStorage& smem,
      typename Mma::FragmentC& acc) {
    int tid = threadIdx.x;
    int warp = cutlass::canonical_warp_idx_sync();
    int lane = tid % 32;
    typename Mma::IteratorA::Params pa(RowMajor{n});
    typename Mma::IteratorB::Params pb(RowMajor{n});
    typename Mma::IteratorA it_a(
        pa, const_cast<Element*>(A), {n, n}, tid, {row0, 0});
    typename Mma::IteratorB it_b(
        pb, const_cast<Element*>(B), {n, n}, tid, {0, col0});
    Mma mma(smem.main_loop, tid, warp, lane);
    int k_iters = (n + Mma::Shape::kK - 1) / Mma::Shape::kK;
    mma(k_iters, acc, it_a, it_b, acc);
    // The next mainloop or the epilogue reuses the shared memory.
    __syncthreads();
  }

  // C[tile] = A1 B1 (+ A2 B2 when A2 is not null).
  __device__ static void run(
      const Element* A1,
      const Element* B1,
      const Element* A2,
      const Element* B2,
      Element* C,
      int n,
      int row0,
      int col0,
      SharedStorage& smem) {
    typename Mma::FragmentC acc;
    acc.clear();
    accumulate(A1, B1, n, row0, col0, smem, acc);
    if (A2) {
      accumulate(A2, B2, n, row0, col0, smem, acc);
    }
    int tid = threadIdx.x;
    typename Epilogue::OutputTileIterator::Params pc(RowMajor{n});
    typename Epilogue::OutputTileIterator it_c(
        pc, C, {n, n}, tid, {row0, col0});
    Epilogue epilogue(
        smem.epilogue, tid, cutlass::canonical_warp_idx_sync(), tid % 32);
    typename Gemm::Output output({});
    // ScaleType::Nothing: D = accumulators, the source is never read.
    epilogue(output, it_c, acc, it_c);
    __syncthreads();
  }
};

} // namespace mlx_linalg_ext::tc
