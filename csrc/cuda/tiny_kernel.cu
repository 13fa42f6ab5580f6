// The tiny-matrix kernel: n <= 8, many matrices a block, for large batches
// of small matrices (rotations, rigid motions), where the fused kernel's
// block per matrix leaves most threads idle and meets a barrier every few
// flops. Each matrix runs on one thread or on n threads of one warp
// (tiny_kernel.cuh); its result does not depend on its neighbours.
//
// A block's matrices are one contiguous run of global memory: copied in and
// out of shared memory by consecutive threads (coalesced), where each
// matrix has its region (tiny_pitch elements apart). One kernel per order
// and type: a kernel's registers, and with them the blocks an SM holds,
// are those of its largest path.
#include "cuda/kernel_utils.cuh"

#include "cuda/tiny_kernel.cuh"
#include "cuda/tiny_kernel.h"

#include <type_traits>

namespace mlx_linalg_ext::cuda {

namespace {

constexpr int kTinyWarps = 4; // warps a block

// The lanes of one warp that hold a matrix, R rows each (G = N / R lanes,
// consecutive, from lead).
struct TinyWarpGroup {
  unsigned mask;
  int lead;
  int row0;
  int lanes;
  __device__ __forceinline__ void sync() const {
    __syncwarp(mask);
  }
  // The largest v of the group, NaN kept: the same reads in the same order
  // on every lane, so the same value.
  __device__ __forceinline__ float max(float v) const {
    if (lanes == 1) {
      return v;
    }
    float m = __shfl_sync(mask, v, lead);
    for (int k = 1; k < lanes; ++k) {
      m = nan_maxf(m, __shfl_sync(mask, v, lead + k));
    }
    return m;
  }
};

// G threads a matrix, W warps a block.
template <typename T, bool kFrechet, int N, int G, int W>
struct TinyShape {
  static_assert(N % G == 0 && G <= 32);
  static constexpr int kGroup = G;
  static constexpr int kPerWarp = 32 / kGroup; // matrices a warp
  static constexpr int kPerBlock = kPerWarp * W;
  static constexpr int kPitch = tiny_pitch<T>(N);
  static constexpr int kElems = kPerBlock * kPitch; // a region set
};

template <typename T, bool kFrechet, int N, int G, int W>
__global__ void __launch_bounds__(32 * W) expm_tiny_kernel(
    const T* __restrict__ a,
    const T* __restrict__ e,
    T* __restrict__ x,
    T* __restrict__ l,
    int batch) {
  using S = TinyShape<T, kFrechet, N, G, W>;
  constexpr int kNN = N * N;
  constexpr int kThreads = 32 * W;
  __shared__ __align__(16) T smem[(kFrechet ? 2 : 1) * S::kElems];
  T* buf = smem;
  T* dbuf = smem + (kFrechet ? S::kElems : 0);
  const int first = int(blockIdx.x) * S::kPerBlock;
  const int count = min(S::kPerBlock, batch - first);
  const size_t base = size_t(first) * kNN;

  for (int g = threadIdx.x; g < count * kNN; g += kThreads) {
    const int at = g / kNN * S::kPitch + g % kNN;
    buf[at] = a[base + g];
    if constexpr (kFrechet) {
      dbuf[at] = e[base + g];
    }
  }
  __syncthreads();
  const int lane = int(threadIdx.x) % 32;
  const int m = int(threadIdx.x) / 32 * S::kPerWarp + lane / G;
  if (lane < S::kPerWarp * G && m < count) {
    const int lead = lane / G * G; // the group's first lane
    const unsigned mask = unsigned((1ull << G) - 1) << lead;
    const TinyWarpGroup group{mask, lead, (lane - lead) * (N / G), G};
    TinyEval<T, N, N / G, kFrechet, TinyWarpGroup> eval(
        group, buf + m * S::kPitch, dbuf + m * S::kPitch);
    eval.run();
  }
  __syncthreads();
  for (int g = threadIdx.x; g < count * kNN; g += kThreads) {
    const int at = g / kNN * S::kPitch + g % kNN;
    x[base + g] = buf[at];
    if constexpr (kFrechet) {
      l[base + g] = dbuf[at];
    }
  }
}

template <typename T, bool kFrechet, int N, int G, int W>
void add_tiny(
    Launcher& launcher,
    const T* a,
    const T* e,
    T* x,
    T* l,
    int batch) {
  using S = TinyShape<T, kFrechet, N, G, W>;
  const int blocks = (batch + S::kPerBlock - 1) / S::kPerBlock;
  launcher.add(
      cu_function(expm_tiny_kernel<T, kFrechet, N, G, W>),
      dim3(blocks),
      dim3(32 * W),
      0,
      a,
      e,
      x,
      l,
      batch);
}

template <typename T, bool kFrechet>
void launch(
    Launcher& launcher,
    const T* a,
    const T* e,
    T* x,
    T* l,
    int n,
    int batch) {
  auto go = [&](auto order) {
    constexpr int N = decltype(order)::value;
    constexpr int G = tiny_threads_per_matrix<T, kFrechet>(N);
    add_tiny<T, kFrechet, N, G, kTinyWarps>(launcher, a, e, x, l, batch);
  };
  switch (n) {
    case 1:
      return go(std::integral_constant<int, 1>{});
    case 2:
      return go(std::integral_constant<int, 2>{});
    case 3:
      return go(std::integral_constant<int, 3>{});
    case 4:
      return go(std::integral_constant<int, 4>{});
    case 5:
      return go(std::integral_constant<int, 5>{});
    case 6:
      return go(std::integral_constant<int, 6>{});
    case 7:
      return go(std::integral_constant<int, 7>{});
    case 8:
      return go(std::integral_constant<int, 8>{});
  }
  throw std::logic_error("[matrix_exp] No tiny kernel for this size.");
}

} // namespace

template <typename T>
void launch_tiny(
    Launcher& launcher,
    const T* a,
    const T* e,
    T* x,
    T* l,
    int n,
    int batch) {
  if (e) {
    launch<T, true>(launcher, a, e, x, l, n, batch);
  } else {
    launch<T, false>(launcher, a, e, x, l, n, batch);
  }
}

template void launch_tiny<
    float>(Launcher&, const float*, const float*, float*, float*, int, int);
template void
launch_tiny<c64>(Launcher&, const c64*, const c64*, c64*, c64*, int, int);

} // namespace mlx_linalg_ext::cuda
