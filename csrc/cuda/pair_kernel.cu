// The float forward for n = 65..128 on sm_90: one cluster of two blocks
// (two SMs) per matrix, each block holding half the rows of every matrix
// of the product program in shared memory, running the norms, expm::decide,
// the products on FP64 tensor cores, the approximant and the squarings.
// matrix_exp.cu chooses it where the device is sm_90 or newer and this
// build holds its sm_90 code; otherwise those n take the GEMM path.
#include "cuda/kernel_utils.cuh"

#include "cuda/fused_common.cuh"
#include "cuda/pair_kernel.h"

namespace mlx_linalg_ext::cuda {

namespace {

// The float forward at padded N = 128 on a cluster of two blocks (two SMs) a
// matrix: block `rank` holds rows 64 rank .. 64 rank + 63 of each of the 6
// buffers in its shared memory (192 KiB) and computes those rows of every
// product on the FP64 tensor cores (SmallMma<128, 64>). The other half of
// the right operand is copied from the partner's shared memory (distributed
// shared memory) into a staging buffer first: remote loads inside the
// product loop would cost several times local ones (NOTES.md). The
// elementwise passes (combinations, approximant, scaling) touch the own rows
// only; the norms add the two halves' column sums and traces in the same
// order in both blocks, so both decide the same degree and s.
//
// Barriers: a cluster barrier (release/acquire) makes the partner's rows of
// an operand final before a block copies them; the block then arrives on
// the next barrier once it has copied them, and waits on it only before it
// stores a product (which may overwrite what the partner copies), so that
// wait overlaps the product.
constexpr int kPairN = kPairMaxN;
constexpr int kPairThreads = SmallShape<float, kPairN>::kThreads;
constexpr int kPairMat = SmallShape<float, kPairN>::kMat / 2; // a half buffer
// The buffers and the staging buffer (224 KiB of the 227 KiB a block may
// have on Hopper).
constexpr size_t kPairSmem = sizeof(float) * kPairMat * (kSmallBuffers + 1);

// The device code exists for sm_90 and newer only (clusters, FP64 MMA).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
constexpr int kPairRows = kPairN / 2; // rows a block holds

__device__ inline void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#endif
}
__device__ inline void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
__device__ inline void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}
// The address of p (in this block's shared memory) in block `rank` of the
// cluster.
template <typename T>
__device__ inline T* cluster_peer(T* p, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  T* q;
  asm volatile("mapa.u64 %0, %1, %2;\n" : "=l"(q) : "l"(p), "r"(rank));
  return q;
#else
  return p;
#endif
}

// Copies the partner's rows of the half buffer `src` into `stage`
// (16-byte vectors, all of a thread's loads in flight). No barrier.
__device__ inline void pair_stage(float* stage, const float* src) {
  constexpr int kVecs = kPairMat / 4 / kPairThreads;
  float4 v[kVecs];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    v[i] = reinterpret_cast<const float4*>(src)[i * kPairThreads + threadIdx.x];
  }
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    reinterpret_cast<float4*>(stage)[i * kPairThreads + threadIdx.x] = v[i];
  }
}

// buf rows of the block times all of r (own rows in r, the partner's staged
// in stage): the block's rows of the product, into registers. Copies, then
// arrives on the cluster barrier (the block's wait comes before its store).
template <class Mma>
__device__ inline void
pair_product(Mma& p, const float* l, const float* r, float* stage, int rank) {
  cluster_sync(); // the partner's rows of r are final
  pair_stage(stage, cluster_peer(r, rank ^ 1));
  cluster_arrive(); // done with the partner's memory
  __syncthreads();
  p.product_halves(l, rank == 0 ? r : stage, rank == 0 ? stage : r);
}

// Overscaling, the same in both blocks: p6 null, the refined s
// (expm::refine_squarings) from the 1-norms of B^2 and B^3 (half buffers
// p2, p3), whose values at that s go to power_norms; else s' of
// expm::refine_squarings_sixth from those and the 1-norm of B^6 (p6). Each
// block sums its rows of each column in double (thread: a column and 16
// rows of one matrix), the halves are added (rank 0) + (rank 1) in both.
// Uses the staging buffer and shared_s; ends with a cluster barrier (the
// partner is done with this block's memory). Not inlined: the kernel is at
// its 128 registers, and inlined this made it spill.
__device__ __noinline__ int pair_refine(
    const float* p2,
    const float* p3,
    const float* p6,
    int s,
    int n,
    float* stage,
    double (&warp_max)[2][kPairN / 32],
    double (&power_norms)[2],
    int& shared_s,
    int rank) {
  constexpr int kQuarter = kPairRows / 4;
  const int tid = threadIdx.x;
  const bool sixth = p6 != nullptr;
  const int count = sixth ? 1 : 2; // matrices whose norms are taken
  const float* m0 = sixth ? p6 : p2;
  double* part = reinterpret_cast<double*>(stage); // [2][4][N] column sums
  double* mine = part + 8 * kPairN; // [2][N]
  {
    const int c = tid % kPairN, q = tid / kPairN;
    double sum0 = 0.0, sum1 = 0.0;
#pragma unroll
    for (int i = 0; i < kQuarter; ++i) {
      const int at = small_at<float, kPairN>(q * kQuarter + i, c);
      sum0 += double(fabsf(m0[at]));
      if (!sixth) {
        sum1 += double(fabsf(p3[at]));
      }
    }
    part[q * kPairN + c] = sum0;
    part[(4 + q) * kPairN + c] = sum1;
  }
  __syncthreads();
  if (tid < count * kPairN) {
    const double* pm = part + (tid / kPairN) * 4 * kPairN + tid % kPairN;
    mine[tid] = ((pm[0] + pm[kPairN]) + pm[2 * kPairN]) + pm[3 * kPairN];
  }
  cluster_sync();
  if (tid < count * kPairN) {
    const double* theirs = cluster_peer(mine, rank ^ 1);
    const double total =
        rank == 0 ? mine[tid] + theirs[tid] : theirs[tid] + mine[tid];
    double norm = tid % kPairN < n ? total : 0.0;
#pragma unroll
    for (int m = 16; m > 0; m /= 2) {
      norm = nan_max(norm, __shfl_xor_sync(0xffffffffu, norm, m));
    }
    if (tid % 32 == 0) {
      warp_max[tid / kPairN][tid % kPairN / 32] = norm;
    }
  }
  __syncthreads();
  if (tid == 0) {
    double norm[2] = {0.0, 0.0}; // in registers: indices known at compile time
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      for (int w = 0; w < kPairN / 32 && k < count; ++w) {
        norm[k] = w == 0 ? warp_max[k][0] : nan_max(norm[k], warp_max[k][w]);
      }
    }
    if (sixth) {
      shared_s = expm::refine_squarings_sixth(
          power_norms[0], power_norms[1], norm[0], s, expm::kSingle);
    } else {
      const int r = expm::refine_squarings(norm[0], norm[1], s, expm::kSingle);
      shared_s = r;
      power_norms[0] = ldexp(norm[0], -2 * r);
      power_norms[1] = ldexp(norm[1], -3 * r);
    }
  }
  cluster_sync(); // the partner is done with this block's memory
  return shared_s;
}
#endif

__global__ void __launch_bounds__(kPairThreads, 1) expm_pair_kernel(
    const float* __restrict__ a,
    float* __restrict__ x_out,
    int n,
    const __grid_constant__ SmallPlan plan) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int LD = kPairN;
  constexpr int kMat = kPairMat;
  constexpr int kThreads = kPairThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ Params shared_params;
  __shared__ double warp_max[2][kPairN / 32];
  __shared__ double power_norms[2]; // ||B^2||, ||B^3|| at the refined s
  float* buf = reinterpret_cast<float*>(smem_raw);
  float* stage = buf + kSmallBuffers * kMat;
  const int rank = blockIdx.x & 1; // the rank in the cluster (2, 1, 1)
  const int row0 = rank * kPairRows;
  const size_t off = size_t(blockIdx.x / 2) * n * n;
  const int tid = threadIdx.x;
  using Mma = SmallMma<kPairN, kPairRows>;

  // The block's rows of A into buffer 0 (zeros outside the n x n block).
#pragma unroll 8
  for (int idx = tid; idx < kMat; idx += kThreads) {
    const int i = row0 + idx / LD, j = small_col<float, kPairN>(idx);
    buf[idx] = i < n && j < n ? a[off + i * n + j] : 0.0f;
  }
  __syncthreads();

  // Norms. Each block sums its rows of each column in double (thread: a
  // column and 16 rows) and its diagonal in float in order; the halves are
  // added in the order (rank 0) + (rank 1) in both blocks. The shifted
  // column sum replaces |a_cc| by |a_cc - mu| (mu = tr(A)/n).
  double* part = reinterpret_cast<double*>(stage); // [4][N] column sums
  double* mine = part + 4 * kPairN; // [N] column sums, then the trace
  {
    const int c = tid % kPairN, q = tid / kPairN;
    double sum = 0.0;
#pragma unroll
    for (int i = 0; i < kPairRows / 4; ++i) {
      sum += double(
          fabsf(buf[small_at<float, kPairN>(q * (kPairRows / 4) + i, c)]));
    }
    part[q * kPairN + c] = sum;
  }
  __syncthreads();
  if (tid < kPairN) {
    mine[tid] = ((part[tid] + part[kPairN + tid]) + part[2 * kPairN + tid]) +
        part[3 * kPairN + tid];
  } else if (tid == kPairN) {
    double tr = 0.0;
    for (int i = 0; i < kPairRows; ++i) {
      tr += double(buf[small_at<float, kPairN>(i, row0 + i)]);
    }
    mine[kPairN] = tr;
  }
  cluster_sync();
  {
    const double* theirs = cluster_peer(mine, rank ^ 1);
    const double* top = rank == 0 ? mine : theirs;
    const double* bottom = rank == 0 ? theirs : mine;
    const float mu = float((top[kPairN] + bottom[kPairN]) / n);
    if (tid < kPairN) {
      const int c = tid;
      const float* diag =
          c / kPairRows == rank ? buf : cluster_peer(buf, rank ^ 1);
      const float acc = diag[small_at<float, kPairN>(c % kPairRows, c)];
      const double total = top[c] + bottom[c];
      const double shifted =
          total - double(fabsf(acc)) + double(fabsf(acc - mu));
      double norm = c < n ? total : 0.0, sh = c < n ? shifted : 0.0;
#pragma unroll
      for (int m = 16; m > 0; m /= 2) {
        norm = nan_max(norm, __shfl_xor_sync(0xffffffffu, norm, m));
        sh = nan_max(sh, __shfl_xor_sync(0xffffffffu, sh, m));
      }
      if (tid % 32 == 0) {
        warp_max[0][tid / 32] = norm;
        warp_max[1][tid / 32] = sh;
      }
    }
    __syncthreads();
    if (tid == 0) {
      double norm = warp_max[0][0], sh = warp_max[1][0];
      for (int w = 1; w < kPairN / 32; ++w) {
        norm = nan_max(norm, warp_max[0][w]);
        sh = nan_max(sh, warp_max[1][w]);
      }
      Params p{};
      put_mu(mu, p.mu_re, p.mu_im);
      shared_params = decide_params(norm, sh, p);
    }
  }
  cluster_sync(); // the partner is done with this block's memory
  const Params params = shared_params;
  const int d = params.degree;
  int s = params.squarings; // refined after B^2, B^3, B^6 where refines()
  const bool shift = params.shift;
  const float mu = params.mu_re;
  if (d < 0) {
    for (int idx = tid; idx < kMat; idx += kThreads) {
      const int i = row0 + idx / LD, j = idx % LD;
      if (i < n && j < n) {
        x_out[off + i * n + j] = nan_of<float>();
      }
    }
    return;
  }
  // B = A - mu I (the shift only on the n x n diagonal), unscaled: only
  // the last degree has squarings, and it scales B, B^2, B^3 once s is
  // refined after its first two products, and B .. B^6 again after the
  // third.
  const bool refine = refines(params);
  if (shift) {
    for (int idx = tid; idx < kMat; idx += kThreads) {
      if (small_diagonal<float, kPairN>(idx, row0) && row0 + idx / LD < n) {
        buf[idx] = buf[idx] - mu;
      }
    }
  }
  __syncthreads();

  const signed char* slot = plan.slot[d];
  for (int k = 0; k < expm::kNumProducts[d]; ++k) {
    const int step = expm::kFirstStep[d] + k;
    if (small_form_operands<float, kPairN, false, kPairRows>(
            plan, d, step, buf, nullptr, row0)) {
      __syncthreads();
    }
    Mma p;
    pair_product(
        p,
        buf + plan.operand[step][0] * kMat,
        buf + plan.operand[step][1] * kMat,
        stage,
        rank);
    cluster_wait(); // the partner has copied this block's rows
    if (plan.overwrites[step]) {
      __syncthreads();
    }
    p.store(buf + slot[2 + k] * kMat);
    __syncthreads();
    if (refine && (k == 1 || (k == 2 && s > 0))) {
      const int r = pair_refine(
          buf + slot[2] * kMat,
          buf + slot[3] * kMat,
          k == 2 ? buf + slot[4] * kMat : nullptr,
          s,
          n,
          stage,
          warp_max,
          power_norms,
          shared_params.squarings,
          rank);
      // After B^2, B^3: B, B^2, B^3 by 2^-r, ...; after B^6 (r <= s): B ..
      // B^6 by 2^(s - r), ... where B^6 takes squarings away.
      if (k == 1 || r < s) {
        small_scale_powers<float, kPairN, false, kPairRows>(
            plan, k == 1 ? -r : s - r, k == 1 ? 3 : 4, buf, nullptr);
        __syncthreads();
      }
      s = r;
    }
  }

  // The approximant, then s squarings in place.
  const float f = float(ldexp(1.0, -s)); // exact power of two
  const int fin = small_approximant<float, kPairN, false, kPairRows>(
      plan, d, shift, mu * f, buf, nullptr, row0);
  __syncthreads();
  float* x = buf + fin;
  for (int i = 0; i < s; ++i) {
    Mma y;
    pair_product(y, x, x, stage, rank);
    cluster_wait();
    __syncthreads();
    y.store(x);
    __syncthreads();
  }
  for (int idx = tid; idx < kMat; idx += kThreads) {
    const int i = row0 + idx / LD, j = small_col<float, kPairN>(idx);
    if (i < n && j < n) {
      x_out[off + i * n + j] = x[idx];
    }
  }
#else
  __trap(); // pair_kernel_runs_here() keeps it to sm_90 and newer
#endif
}

} // namespace

bool pair_kernel_runs_here() {
  // Its code must be sm_90 code (a build for older GPUs alone traps there).
  static const bool pair_code = [] {
    cudaFuncAttributes attr{};
    if (cudaFuncGetAttributes(&attr, expm_pair_kernel) != cudaSuccess) {
      cudaGetLastError(); // not sticky; MLX checks the last error later
      return false;
    }
    return attr.ptxVersion >= 90;
  }();
  return pair_code && device_attr(cudaDevAttrComputeCapabilityMajor) >= 9 &&
      size_t(device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin)) >=
      kPairSmem + 1024;
}

void launch_pair(
    Launcher& launcher,
    const float* a,
    float* x,
    int n,
    int batch) {
  cu_function(expm_pair_kernel, kPairSmem); // its shared-memory limit
  launcher.add_cluster(
      reinterpret_cast<const void*>(expm_pair_kernel),
      dim3(2 * batch),
      dim3(kPairThreads),
      dim3(2, 1, 1),
      uint32_t(kPairSmem),
      a,
      x,
      n,
      small_plan());
}

} // namespace mlx_linalg_ext::cuda
