// Hopper (sm_90a) TF32 GEMM on warpgroup MMA: D = A B^T with A (M x K) and
// B (N x K) row-major, i.e. both operands K-contiguous, as TF32 wgmma needs.
// sm90_path.cu feeds it operands that it has split into TF32 parts
// ("3xTF32" by concatenation along K: a b ~ small(a) big(b) + big(a) small(b)
// + big(a) big(b), every part exact in TF32, accumulated in FP32), so the
// product keeps FP32 accuracy while running at the TF32 tensor-core rate of
// wgmma (mma.sync, tf32x3_tile.cuh, reaches about half of it on Hopper).
//
// The kernel is CUTLASS's TMA warp-specialized cooperative GEMM (collective
// builders, headers from the mlx-cuda wheel) with the FP8 mainloop's
// accumulator promotion. sm90_path.cu calls its operator() from its own
// kernel, which first exits on the device when the matrix does not need
// that product or squaring.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/kernel_hardware_info.h>

namespace mlx_linalg_ext::sm90 {

using LayoutA = cutlass::layout::RowMajor; // M x K, K contiguous
using LayoutB = cutlass::layout::ColumnMajor; // K x N with K contiguous
using LayoutD = cutlass::layout::RowMajor;
constexpr int kAlign = 4; // 16-byte TMA rows: K and N multiples of 4

// MMAs (k-steps of 8) between promotions of the wgmma accumulator (below):
// every k-tile, the most accurate at no cost in speed (NOTES.md).
constexpr int kPromotion = 4;

template <
    class KernelSchedule,
    class EpilogueSchedule,
    class Tile,
    class Cluster>
struct Gemm {
  using TileShape = Tile;
  using ClusterShape = Cluster;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90,
      cutlass::arch::OpClassTensorOp,
      TileShape,
      ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto,
      float,
      float,
      void, // no source matrix C
      LayoutD,
      kAlign,
      float,
      LayoutD,
      kAlign,
      EpilogueSchedule>::CollectiveOp;

  using BuiltMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90,
      cutlass::arch::OpClassTensorOp,
      float,
      LayoutA,
      kAlign,
      float,
      LayoutB,
      kAlign,
      float,
      TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  // The builder's mainloop, but with the accumulator promotion of CUTLASS's
  // FP8 mainloop: wgmma accumulates into a temporary that is added to the
  // FP32 accumulator (an ordinary, round-to-nearest FADD) every kPromotion
  // MMAs. Accumulating a whole K = 3n in wgmma loses accuracy linearly in n
  // (its accumulator does not round to nearest).
  using Mainloop = cutlass::gemm::collective::CollectiveMma<
      cutlass::gemm::MainloopSm90TmaGmmaWarpSpecializedFP8<
          BuiltMainloop::DispatchPolicy::Stages,
          ClusterShape,
          KernelSchedule>,
      TileShape,
      float,
      typename BuiltMainloop::StrideA,
      float,
      typename BuiltMainloop::StrideB,
      typename BuiltMainloop::TiledMma,
      typename BuiltMainloop::GmemTiledCopyA,
      typename BuiltMainloop::SmemLayoutAtomA,
      typename BuiltMainloop::SmemCopyAtomA,
      typename BuiltMainloop::TransformA,
      typename BuiltMainloop::GmemTiledCopyB,
      typename BuiltMainloop::SmemLayoutAtomB,
      typename BuiltMainloop::SmemCopyAtomB,
      typename BuiltMainloop::TransformB>;

  using Kernel = cutlass::gemm::kernel::
      GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Params = typename Kernel::Params;
  static constexpr int kThreads = Kernel::MaxThreadsPerBlock;
  static constexpr int kSmemBytes = Kernel::SharedStorageSize;
  static constexpr int kClusterM = cute::size<0>(ClusterShape{});

  // Parameters of D (M x N, row stride ldd) = A B^T for A (M x K, row
  // stride lda) and B (N x K, row stride ldb). Host side; the pointers are
  // device pointers (the TMA descriptors are encoded here). False when
  // CUTLASS cannot run it (alignment).
  static bool make_params(
      int m,
      int n,
      int k,
      const float* a,
      long lda,
      const float* b,
      long ldb,
      float* d,
      long ldd,
      int device,
      int sms,
      Params& out) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    StrideA sa = cute::make_stride(int64_t(lda), cute::Int<1>{}, int64_t(0));
    StrideB sb = cute::make_stride(int64_t(ldb), cute::Int<1>{}, int64_t(0));
    StrideD sd = cute::make_stride(int64_t(ldd), cute::Int<1>{}, int64_t(0));
    cutlass::KernelHardwareInfo hw;
    hw.device_id = device;
    hw.sm_count = sms;
    typename Kernel::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {a, sa, b, sb, uint32_t(kPromotion)},
        {{1.0f, 0.0f}, nullptr, sd, d, sd},
        hw};
    if (!Kernel::can_implement(args) || Kernel::get_workspace_size(args) != 0) {
      return false;
    }
    out = Kernel::to_underlying_arguments(args, nullptr);
    return true;
  }

  static dim3 grid_of(const Params& p) {
    return Kernel::get_grid_shape(p);
  }
};

// The GEMM of sm90_path.cu: 128 x 128 output tiles with k-steps of 32
// floats (128-byte TMA rows), both consumer warpgroups on one tile,
// persistent CTAs in clusters of 2 along M (TMA multicast of B), 6 stages:
// the fastest of the shapes compared in NOTES.md.
using Tf32Gemm = Gemm<
    cutlass::gemm::KernelTmaWarpSpecializedCooperative,
    cutlass::epilogue::TmaWarpSpecializedCooperative,
    cute::Shape<cute::_128, cute::_128, cute::_32>,
    cute::Shape<cute::_2, cute::_1, cute::_1>>;

} // namespace mlx_linalg_ext::sm90
