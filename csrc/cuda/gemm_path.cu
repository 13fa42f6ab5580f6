// The GEMM path, for matrices past the fused kernels (and single large ones
// on sm_90 with sm90_path.cu). A parameter kernel writes (shift, mu,
// degree, s) per matrix to the workspace; every combine and GEMM launch of
// the product program reads them and exits for matrices that do not need
// its step (5 predicated products, a fixed number of launches; after the
// second, s is refined from ||B^2||, ||B^3|| in the parameters, after the
// third from ||B^6||); all
// squarings run in one persistent kernel that loops on the device up to
// the largest s of the batch, with a grid-wide barrier between squarings.
// So the launch count does not depend on s and nothing is read back.
// Products keep FP32 accuracy: FP32 FMAs (SIMT tiles) below
// TestHooks::tc_min, 3xTF32 tensor-core tiles (tf32x3_tile.cuh) above.
#include "cuda/kernel_utils.cuh"

#include <algorithm>
#include <type_traits>

#include "cuda/gemm_path.h"
#include "cuda/tf32x3_tile.cuh"

namespace mlx_linalg_ext::cuda {

namespace {

// mu = tr(A)/n by a fixed-order reduction over 256 threads in double, so
// that every block that forms it gets the same float (any mu is exact for
// exp(A) = e^mu exp(A - mu I)).
template <typename T>
__device__ T block_mean_diagonal(const T* m, int n, int tid, double2* red) {
  double2 sum = make_double2(0.0, 0.0);
  for (int i = tid; i < n; i += 256) {
    sum = add2(sum, widen(m[size_t(i) * n + i]));
  }
  red[tid] = sum;
  __syncthreads();
  for (int h = 128; h > 0; h /= 2) {
    if (tid < h) {
      red[tid] = add2(red[tid], red[tid + h]);
    }
    __syncthreads();
  }
  double2 total = red[0];
  __syncthreads();
  return narrow<T>(make_double2(total.x / n, total.y / n));
}

// Column sums of |A| and |A - mu I| in double: block (32 columns x 8 row
// groups); into sets 0 and 1 of colsum (batch x kColsumSets n).
template <typename T>
__global__ void
colsum_kernel(int b0, const T* __restrict__ a, double* colsum, int n) {
  __shared__ double part[2][8][33];
  __shared__ double2 red[256];
  int b = b0 + blockIdx.y;
  int j = blockIdx.x * 32 + threadIdx.x;
  const T* m = a + size_t(b) * n * n;
  T mu = block_mean_diagonal(m, n, threadIdx.y * 32 + threadIdx.x, red);
  double sum = 0.0, shifted = 0.0;
  if (j < n) {
    for (int i = threadIdx.y; i < n; i += 8) {
      T v = m[size_t(i) * n + j];
      sum += double(abs_of(v));
      shifted += double(abs_of(i == j ? v - mu : v));
    }
  }
  part[0][threadIdx.y][threadIdx.x] = sum;
  part[1][threadIdx.y][threadIdx.x] = shifted;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    for (int r = 1; r < 8; ++r) {
      sum += part[0][r][threadIdx.x];
      shifted += part[1][r][threadIdx.x];
    }
    colsum[size_t(b) * kColsumSets * n + j] = sum;
    colsum[size_t(b) * kColsumSets * n + n + j] = shifted;
  }
}

// The largest of each set cs[k n, (k + 1) n), k < kSets, of column sums
// (NaN wins), reduced over the block: valid in thread 0. blockDim.x is a
// power of two up to 256.
template <int kSets>
struct ColumnMaxima {
  double of[kSets];
};
template <int kSets>
__device__ ColumnMaxima<kSets> block_column_maxima(const double* cs, int n) {
  __shared__ double part[kSets][256];
  ColumnMaxima<kSets> m;
#pragma unroll
  for (int k = 0; k < kSets; ++k) {
    m.of[k] = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      m.of[k] = nan_max(m.of[k], cs[k * n + j]);
    }
    part[k][threadIdx.x] = m.of[k];
  }
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) {
#pragma unroll
      for (int k = 0; k < kSets; ++k) {
        part[k][threadIdx.x] =
            nan_max(part[k][threadIdx.x], part[k][threadIdx.x + h]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int k = 0; k < kSets; ++k) {
    m.of[k] = part[k][0];
  }
  return m;
}

// Norms -> Params per matrix (256 threads); block 0 also clears the grid
// barrier.
template <typename T>
__global__ void decide_kernel(const T* a, const double* colsum, Work w) {
  __shared__ double2 red[256];
  int b = blockIdx.x;
  T mu = block_mean_diagonal(a + size_t(b) * w.n * w.n, w.n, threadIdx.x, red);
  const ColumnMaxima<2> norms =
      block_column_maxima<2>(colsum + size_t(b) * kColsumSets * w.n, w.n);
  if (threadIdx.x == 0) {
    Params p = {};
    put_mu(mu, p.mu_re, p.mu_im);
    w.params[b] = decide_params(norms.of[0], norms.of[1], p);
    if (b == 0) {
      w.barrier[0] = 0;
      w.barrier[1] = 0;
    }
  }
}

// Slot 1 (and its derivative) = A - mu I (and E), unscaled: only the last
// degree has squarings, and scale_powers_kernel scales B, B^2, B^3 (and
// their derivatives) once refine_kernel has refined s after its first two
// products, and B .. B^6 again after the third.
template <typename T>
__global__ void shift_kernel(int b0, const T* a, const T* e, Work w) {
  size_t nn = size_t(w.n) * w.n;
  int b = b0 + blockIdx.y;
  Params p = w.params[b];
  if (p.degree < 0) {
    return;
  }
  T mu = get_mu<T>(p.mu_re, p.mu_im);
  T* x = wbuf<T>(w, b, 0);
  T* dx = wbuf<T>(w, b, kBuffers);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < nn;
       i += size_t(gridDim.x) * blockDim.x) {
    T v = a[nn * b + i];
    if (p.shift && i % (w.n + 1) == 0) {
      v = v - mu;
    }
    x[i] = v;
    if (w.frechet) {
      dx[i] = e[nn * b + i];
    }
  }
}

// Overscaling, column sums in double (block: 32 columns x 8 row groups) of
// |B^2|, |B^3| after products 0 and 1 (of the unscaled B; sixth false), or
// of |B^6| after product 2 (of the scaled B^3; sixth true). Set k of colsum
// (batch x kColsumSets n) holds those of slot 2 + k: sets 0 and 1 (the
// norms of A) are consumed by then, and B^2, B^3 stay for the second rule.
template <typename T>
__global__ void power_colsum_kernel(int b0, double* colsum, Work w, int sixth) {
  __shared__ double part[2][8][33];
  const int n = w.n;
  const int b = b0 + blockIdx.y;
  if (!refines(w.params[b])) {
    return;
  }
  const int j = blockIdx.x * 32 + threadIdx.x;
  const int first = sixth ? 2 : 0; // the first set (slot 2 + first)
  const int count = sixth ? 1 : 2;
  const T* p0 = wbuf<T>(w, b, 1 + first);
  const T* p1 = wbuf<T>(w, b, 2);
  double sum0 = 0.0, sum1 = 0.0;
  if (j < n) {
    for (int i = threadIdx.y; i < n; i += 8) {
      sum0 += double(abs_of(p0[size_t(i) * n + j]));
      if (!sixth) {
        sum1 += double(abs_of(p1[size_t(i) * n + j]));
      }
    }
  }
  part[0][threadIdx.y][threadIdx.x] = sum0;
  part[1][threadIdx.y][threadIdx.x] = sum1;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    for (int r = 1; r < 8; ++r) {
      sum0 += part[0][r][threadIdx.x];
      sum1 += part[1][r][threadIdx.x];
    }
    double* cs = colsum + size_t(b) * kColsumSets * n + first * n;
    cs[j] = sum0;
    if (count == 2) {
      cs[n + j] = sum1;
    }
  }
}

// The refined s per matrix from power_colsum_kernel's sums (256 threads):
// expm::refine_squarings from ||B^2||, ||B^3||, or (sixth)
// expm::refine_squarings_sixth from those at that s and ||B^6||, which
// also records the squarings it took away (Params::lowered) for
// scale_powers_kernel. Every later launch (approximant, squarings) reads s.
template <bool kSixth>
__global__ void refine_kernel(const double* colsum, Work w) {
  const int b = blockIdx.x;
  if (!refines(w.params[b])) {
    return;
  }
  const auto norms = block_column_maxima<kSixth ? 3 : 2>(
      colsum + size_t(b) * kColsumSets * w.n, w.n);
  if (threadIdx.x == 0) {
    Params& p = w.params[b];
    if constexpr (kSixth) {
      const int s = p.squarings;
      const int r = expm::refine_squarings_sixth(
          ldexp(norms.of[0], -2 * s),
          ldexp(norms.of[1], -3 * s),
          norms.of[2],
          s,
          expm::kSingle);
      p.lowered = s - r;
      p.squarings = r;
    } else {
      p.squarings = expm::refine_squarings(
          norms.of[0], norms.of[1], p.squarings, expm::kSingle);
    }
  }
}

// Slots 1..3 (B, B^2, B^3, and their derivatives E, dP2, dP3) times 2^-s,
// 4^-s, 8^-s with the refined s: exactly the program on B 2^-s and E 2^-s.
// sixth: slots 1..4 (.., B^6, dP6) times 2^d, 4^d, 8^d, 64^d with d the
// squarings refine_squarings_sixth took away.
template <typename T>
__global__ void scale_powers_kernel(int b0, Work w, int sixth) {
  size_t nn = size_t(w.n) * w.n;
  int b = b0 + blockIdx.y;
  Params p = w.params[b];
  const int e = sixth ? p.lowered : -p.squarings;
  if (p.degree != expm::kLastDegree || e == 0) {
    return;
  }
  const int count = sixth ? 4 : 3;
  Pow2 f[4];
  for (int k = 0; k < count; ++k) {
    f[k] = pow2_factors(power_of_slot(k) * e);
  }
  for (int dual = 0; dual < (w.frechet ? 2 : 1); ++dual) {
    for (int k = 0; k < count; ++k) {
      T* m = wbuf<T>(w, b, dual * kBuffers + k);
      for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < nn;
           i += size_t(gridDim.x) * blockDim.x) {
        m[i] = times(f[k], m[i]);
      }
    }
  }
}

// The operands of product k (k >= 0), written where they are no lone slot;
// k = -1: the approximant (into L / dL, or into the outputs when s = 0, and
// NaN for a matrix with NaN/Inf).
template <typename T>
__global__ void combine_kernel(int b0, int k, T* x_out, T* l_out, Work w) {
  int n = w.n;
  size_t nn = size_t(n) * n;
  int b = b0 + blockIdx.y;
  Params p = w.params[b];
  size_t i0 = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  size_t stride = size_t(gridDim.x) * blockDim.x;
  auto slot = [&](int j) { return wbuf<T>(w, b, j - 1); };
  auto dslot = [&](int j) { return wbuf<T>(w, b, kBuffers + j - 1); };
  if (k < 0) {
    if (p.degree < 0) {
      for (size_t i = i0; i < nn; i += stride) {
        x_out[nn * b + i] = nan_of<T>();
        if (w.frechet) {
          l_out[nn * b + i] = nan_of<T>();
        }
      }
      return;
    }
    int count = expm::num_slots(p.degree);
    const double* c = expm::kFinal[p.degree];
    T* x = p.squarings == 0 ? x_out + nn * b : wbuf<T>(w, b, 6);
    T* dx = p.squarings == 0 ? l_out + nn * b : wbuf<T>(w, b, kBuffers + 6);
    // With the shift, times e^(mu 2^-s) before the squarings (expm::decide).
    float f = float(ldexp(1.0, -p.squarings));
    Factor factor = exp_factor(get_mu<T>(p.mu_re, p.mu_im) * f);
    for (size_t i = i0; i < nn; i += stride) {
      bool diag = i % (n + 1) == 0;
      T v = combine_elem<T>(
          c, count, true, diag, [&](int j) { return slot(j)[i]; });
      x[i] = p.shift ? apply(factor, v) : v;
      if (w.frechet) {
        T dv = combine_elem<T>(
            c, count, false, diag, [&](int j) { return dslot(j)[i]; });
        dx[i] = p.shift ? apply(factor, dv) : dv;
      }
    }
    return;
  }
  if (!product_runs(p, k)) {
    return;
  }
  int step = expm::kFirstStep[p.degree] + k;
  int count = 2 + k;
  for (int side = 0; side < 2; ++side) {
    const double* c =
        side == 0 ? expm::kStepLeft[step] : expm::kStepRight[step];
    for (int dual = 0; dual < (w.frechet ? 2 : 1); ++dual) {
      bool identity = dual == 0;
      if (expm::lone_slot(c, count, identity) >= 1) {
        continue;
      }
      T* dst = wbuf<T>(w, b, dual * kBuffers + 6 + side);
      for (size_t i = i0; i < nn; i += stride) {
        bool diag = i % (n + 1) == 0;
        dst[i] = combine_elem<T>(c, count, identity, diag, [&](int j) {
          return wbuf<T>(w, b, dual * kBuffers + j - 1)[i];
        });
      }
    }
  }
}

// ---- tiled SIMT GEMM: C = A1 B1 (+ A2 B2), n x n row-major, FP32 FMA ----
//
// 256 threads (16 x 16) per output tile. Big tiles (float, when the batch
// has enough of them to fill the GPU): 128 x 128, each thread 8 x 8 outputs
// from 16-byte shared loads (64 FMAs per 4 loads). Otherwise 64 x 64 tiles,
// 4 x 4 outputs per thread. Full FP32 products (no TF32).

constexpr int kGemmThreads = 256;

template <typename T, bool kBig>
struct GemmShape {
  static constexpr int kTile = 64; // k steps of 16
};
template <>
struct GemmShape<float, true> {
  static constexpr int kTile = 128; // k steps of 8
};

template <typename T, bool kBig>
struct GemmSmem {
  T a[16][64 + 1];
  T b[16][64];
};
template <>
struct GemmSmem<float, true> {
  // +4: the transposed stores of A hit different banks; rows stay 16-byte
  // aligned for the vector loads.
  alignas(16) float a[8][128 + 4];
  alignas(16) float b[8][128];
};

// 64 x 64 tiles: 4 x 4 outputs per thread at rows ty + 16 i, columns
// tx + 16 j.
template <typename T>
__device__ inline void gemm_accumulate(
    const T* __restrict__ A,
    const T* __restrict__ B,
    int n,
    int row0,
    int col0,
    GemmSmem<T, false>& sm,
    T (&acc)[4][4]) {
  constexpr int kTile = 64, kTileK = 16;
  int tid = threadIdx.x;
  int tx = tid % 16, ty = tid / 16;
  for (int k0 = 0; k0 < n; k0 += kTileK) {
#pragma unroll
    for (int q = 0; q < kTile * kTileK / kGemmThreads; ++q) {
      int e = tid + q * kGemmThreads;
      int r = e / kTileK, c = e % kTileK;
      int gr = row0 + r, gc = k0 + c;
      sm.a[c][r] =
          (gr < n && gc < n) ? A[size_t(gr) * n + gc] : real_to<T>(0.0f);
      r = e / kTile;
      c = e % kTile;
      gr = k0 + r;
      gc = col0 + c;
      sm.b[r][c] =
          (gr < n && gc < n) ? B[size_t(gr) * n + gc] : real_to<T>(0.0f);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTileK; ++k) {
      T av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = sm.a[k][ty + 16 * i];
        bv[i] = sm.b[k][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          mac(acc[i][j], av[i], bv[j]);
        }
      }
    }
    __syncthreads();
  }
}

// 128 x 128 float tiles: 8 x 8 outputs per thread at rows {0, 64} + 4 ty + i,
// columns {0, 64} + 4 tx + j (i, j < 4).
__device__ inline void gemm_accumulate(
    const float* __restrict__ A,
    const float* __restrict__ B,
    int n,
    int row0,
    int col0,
    GemmSmem<float, true>& sm,
    float (&acc)[8][8]) {
  int tid = threadIdx.x;
  int tx = tid % 16, ty = tid / 16;
  for (int k0 = 0; k0 < n; k0 += 8) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      int e = tid + q * kGemmThreads;
      int r = e / 8, c = e % 8; // A: 128 rows x 8
      int gr = row0 + r, gc = k0 + c;
      sm.a[c][r] = (gr < n && gc < n) ? A[size_t(gr) * n + gc] : 0.0f;
      r = e / 128; // B: 8 rows x 128
      c = e % 128;
      gr = k0 + r;
      gc = col0 + c;
      sm.b[r][c] = (gr < n && gc < n) ? B[size_t(gr) * n + gc] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      float av[8], bv[8];
      float4 t;
      t = *reinterpret_cast<const float4*>(&sm.a[k][4 * ty]);
      av[0] = t.x, av[1] = t.y, av[2] = t.z, av[3] = t.w;
      t = *reinterpret_cast<const float4*>(&sm.a[k][64 + 4 * ty]);
      av[4] = t.x, av[5] = t.y, av[6] = t.z, av[7] = t.w;
      t = *reinterpret_cast<const float4*>(&sm.b[k][4 * tx]);
      bv[0] = t.x, bv[1] = t.y, bv[2] = t.z, bv[3] = t.w;
      t = *reinterpret_cast<const float4*>(&sm.b[k][64 + 4 * tx]);
      bv[4] = t.x, bv[5] = t.y, bv[6] = t.z, bv[7] = t.w;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
      }
    }
    __syncthreads();
  }
}

// Tile policies of the product and squaring kernels: SimtTile (FP32 FMA
// over the gemm_accumulate loops above), or the 3xTF32 tensor-core tiles of
// tf32x3_tile.cuh (same interface; Element is float or
// cutlass::complex<float>, whose layout is c64's).
template <typename T, bool kBig>
struct SimtTile {
  using Element = T;
  using SharedStorage = GemmSmem<T, kBig>;
  static constexpr int kRows = GemmShape<T, kBig>::kTile;
  static constexpr int kCols = kRows;
  static constexpr int kThreads = kGemmThreads;
  // C[tile] = A1 B1 (+ A2 B2 when A2 is not null).
  __device__ static void run(
      const T* A1,
      const T* B1,
      const T* A2,
      const T* B2,
      T* C,
      int n,
      int row0,
      int col0,
      SharedStorage& sm) {
    constexpr int M = GemmShape<T, kBig>::kTile / 16;
    T acc[M][M];
#pragma unroll
    for (int i = 0; i < M; ++i) {
#pragma unroll
      for (int j = 0; j < M; ++j) {
        acc[i][j] = real_to<T>(0.0f);
      }
    }
    gemm_accumulate(A1, B1, n, row0, col0, sm, acc);
    if (A2) {
      gemm_accumulate(A2, B2, n, row0, col0, sm, acc);
    }
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < M; ++i) {
#pragma unroll
      for (int j = 0; j < M; ++j) {
        int r, c;
        if constexpr (M == 8) {
          r = row0 + (i / 4) * 64 + 4 * ty + i % 4;
          c = col0 + (j / 4) * 64 + 4 * tx + j % 4;
        } else {
          r = row0 + ty + 16 * i;
          c = col0 + tx + 16 * j;
        }
        if (r < n && c < n) {
          C[size_t(r) * n + c] = acc[i][j];
        }
      }
    }
  }
};

template <typename Tile>
__device__ inline typename Tile::SharedStorage& tile_smem() {
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  return *reinterpret_cast<typename Tile::SharedStorage*>(gemm_smem);
}

template <typename Tile, typename T>
__device__ inline void run_tile(
    const T* A1,
    const T* B1,
    const T* A2,
    const T* B2,
    T* C,
    int n,
    int row0,
    int col0) {
  using E = typename Tile::Element;
  static_assert(sizeof(E) == sizeof(T) && alignof(E) <= alignof(T));
  Tile::run(
      reinterpret_cast<const E*>(A1),
      reinterpret_cast<const E*>(B1),
      reinterpret_cast<const E*>(A2),
      reinterpret_cast<const E*>(B2),
      reinterpret_cast<E*>(C),
      n,
      row0,
      col0,
      tile_smem<Tile>());
}

// Product k of the program: grid (column tiles, row tiles, batch x (1 or
// 2)); z odd is the derivative dP = dL R + L dR. Matrices whose degree has no
// product k exit.
template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads)
    product_kernel(int b0, int k, Work w) {
  int dual = w.frechet ? blockIdx.z % 2 : 0;
  int b = b0 + (w.frechet ? blockIdx.z / 2 : blockIdx.z);
  Params p = w.params[b];
  if (!product_runs(p, k)) {
    return;
  }
  int step = expm::kFirstStep[p.degree] + k;
  int count = 2 + k;
  auto operand = [&](const double* c, int side, int d) -> const T* {
    int lone = expm::lone_slot(c, count, d == 0);
    return wbuf<T>(w, b, d * kBuffers + (lone >= 1 ? lone - 1 : 6 + side));
  };
  const T* l = operand(expm::kStepLeft[step], 0, 0);
  const T* r = operand(expm::kStepRight[step], 1, 0);
  int row0 = blockIdx.y * Tile::kRows, col0 = blockIdx.x * Tile::kCols;
  if (dual == 0) {
    run_tile<Tile, T>(
        l, r, nullptr, nullptr, wbuf<T>(w, b, 2 + k - 1), w.n, row0, col0);
  } else {
    const T* dl = operand(expm::kStepLeft[step], 0, 1);
    const T* dr = operand(expm::kStepRight[step], 1, 1);
    run_tile<Tile>(
        dl, r, l, dr, wbuf<T>(w, b, kBuffers + 2 + k - 1), w.n, row0, col0);
  }
}

// Grid-wide barrier for a grid whose blocks are all resident (the launch
// below never asks for more blocks than the occupancy allows).
__device__ inline void grid_barrier(unsigned int* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned int* vgen = bar + 1;
    unsigned int gen = *vgen;
    __threadfence();
    if (atomicAdd(bar, 1u) == gridDim.x - 1) {
      atomicExch(bar, 0u);
      __threadfence();
      atomicAdd(bar + 1, 1u);
    } else {
      while (*vgen == gen) {
        __nanosleep(64);
      }
    }
    __threadfence();
  }
  __syncthreads();
}

// All squarings of the batch: iteration i squares every matrix with s > i,
// reading L / R alternately; the last squaring of a matrix writes the output.
// Squarings before `first` have run elsewhere (the sm90 launches).
template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads)
    square_kernel(int first, T* x_out, T* l_out, Work w) {
  __shared__ int smax_shared;
  if (threadIdx.x == 0) {
    smax_shared = 0;
  }
  __syncthreads();
  int local = 0;
  for (int b = threadIdx.x; b < w.batch; b += blockDim.x) {
    local = max(local, w.params[b].squarings);
  }
  atomicMax(&smax_shared, local);
  __syncthreads();
  const int smax = smax_shared;
  const int tiles_m = (w.n + Tile::kRows - 1) / Tile::kRows;
  const int tiles_n = (w.n + Tile::kCols - 1) / Tile::kCols;
  const int per_matrix = tiles_m * tiles_n * (w.frechet ? 2 : 1);
  const long total = long(per_matrix) * w.batch;
  const size_t nn = size_t(w.n) * w.n;
  for (int i = first; i < smax; ++i) {
    for (long t = blockIdx.x; t < total; t += gridDim.x) {
      int b = int(t / per_matrix);
      int r = int(t % per_matrix);
      int s = w.params[b].squarings;
      if (i >= s) {
        continue;
      }
      int dual = w.frechet ? r % 2 : 0;
      int tile = w.frechet ? r / 2 : r;
      int row0 = (tile / tiles_n) * Tile::kRows;
      int col0 = (tile % tiles_n) * Tile::kCols;
      bool last = i == s - 1;
      const T* x = wbuf<T>(w, b, 6 + (i % 2));
      if (dual == 0) {
        T* y = last ? x_out + nn * b : wbuf<T>(w, b, 6 + (i + 1) % 2);
        run_tile<Tile, T>(x, x, nullptr, nullptr, y, w.n, row0, col0);
      } else {
        const T* dx = wbuf<T>(w, b, kBuffers + 6 + (i % 2));
        T* dy =
            last ? l_out + nn * b : wbuf<T>(w, b, kBuffers + 6 + (i + 1) % 2);
        run_tile<Tile>(x, dx, dx, x, dy, w.n, row0, col0);
      }
    }
    if (i + 1 < smax) {
      grid_barrier(w.barrier);
    }
  }
}

} // namespace

namespace {

// Launches over the batch go in chunks: grid.y / grid.z stop at 65535.
template <typename Body>
void for_chunks(int batch, Body body) {
  constexpr int kChunk = 32767;
  for (int b0 = 0; b0 < batch; b0 += kChunk) {
    body(b0, std::min(kChunk, batch - b0));
  }
}

// Output tiles of an n x n matrix with tile policy Tile.
struct TileCounts {
  int m, n; // along the rows, along the columns
};
template <typename Tile>
TileCounts tile_counts(int n) {
  return {
      (n + Tile::kRows - 1) / Tile::kRows, (n + Tile::kCols - 1) / Tile::kCols};
}

// Calls f(std::type_identity<Tile>{}) with the tile type of `tiles` for T.
template <typename T, typename F>
void with_tile(GemmTiles tiles, F f) {
  if constexpr (std::is_same_v<T, float>) {
    switch (tiles) {
      case GemmTiles::kSimt:
        return f(std::type_identity<SimtTile<T, false>>{});
      case GemmTiles::kSimtBig:
        return f(std::type_identity<SimtTile<T, true>>{});
      case GemmTiles::kTf32x3:
        return f(std::type_identity<tc::Tile<tc::FloatGemm<4>>>{});
      case GemmTiles::kTf32x3Unaligned:
        return f(std::type_identity<tc::Tile<tc::FloatGemm<1>>>{});
    }
  } else {
    switch (tiles) {
      case GemmTiles::kSimt:
        return f(std::type_identity<SimtTile<T, false>>{});
      case GemmTiles::kTf32x3:
        return f(std::type_identity<tc::Tile<tc::ComplexGemm>>{});
      default:
        break;
    }
  }
  throw std::logic_error("[matrix_exp] No such GEMM tile for this type.");
}

} // namespace

template <typename T>
GemmRun gemm_begin(
    Launcher& launcher,
    const T* a,
    const T* e,
    int n,
    int batch,
    bool frechet,
    size_t extra_bytes) {
  const size_t nn = size_t(n) * n;
  const int sms = device_attr(cudaDevAttrMultiProcessorCount);
  // Workspace: the buffers, then (degree, s) per matrix, the column sums, the
  // barrier and the caller's extra bytes.
  size_t buf_bytes = nn * sizeof(T) * kBuffers * (frechet ? 2 : 1) * batch;
  size_t params_off = buf_bytes;
  size_t colsum_off = params_off + (sizeof(Params) * batch + 255) / 256 * 256;
  size_t barrier_off = colsum_off + sizeof(double) * kColsumSets * n * batch;
  size_t extra_off = (barrier_off + 256 + 255) / 256 * 256;
  char* base = launcher.workspace(extra_off + extra_bytes);
  Work w;
  w.buf = base;
  w.params = reinterpret_cast<Params*>(base + params_off);
  double* colsum = reinterpret_cast<double*>(base + colsum_off);
  w.barrier = reinterpret_cast<unsigned int*>(base + barrier_off);
  w.n = n;
  w.batch = batch;
  w.frechet = frechet;

  CUfunction colsum_f = cu_function(colsum_kernel<T>);
  for_chunks(batch, [&](int b0, int nb) {
    launcher.add(
        colsum_f, dim3((n + 31) / 32, nb), dim3(32, 8), 0, b0, a, colsum, n);
  });
  launcher.add(
      cu_function(decide_kernel<T>), dim3(batch), dim3(256), 0, a, colsum, w);

  // Elementwise launches: enough blocks to fill the GPU across the batch.
  int ew_blocks = int(std::clamp<size_t>(
      (nn + 255) / 256, 1, std::max<size_t>(1, size_t(sms) * 8 / batch + 1)));
  CUfunction shift_f = cu_function(shift_kernel<T>);
  for_chunks(batch, [&](int b0, int nb) {
    launcher.add(shift_f, dim3(ew_blocks, nb), dim3(256), 0, b0, a, e, w);
  });
  return {w, base, base + extra_off, colsum, ew_blocks, sms};
}

template <typename T>
void launch_refinement(Launcher& launcher, const GemmRun& run, bool sixth) {
  const Work& w = run.work;
  CUfunction colsum_f = cu_function(power_colsum_kernel<T>);
  for_chunks(w.batch, [&](int b0, int nb) {
    launcher.add(
        colsum_f,
        dim3((w.n + 31) / 32, nb),
        dim3(32, 8),
        0,
        b0,
        run.colsum,
        w,
        int(sixth));
  });
  launcher.add(
      sixth ? cu_function(refine_kernel<true>)
            : cu_function(refine_kernel<false>),
      dim3(w.batch),
      dim3(256),
      0,
      run.colsum,
      w);
  CUfunction scale_f = cu_function(scale_powers_kernel<T>);
  for_chunks(w.batch, [&](int b0, int nb) {
    launcher.add(
        scale_f, dim3(run.ew_blocks, nb), dim3(256), 0, b0, w, int(sixth));
  });
}

template <typename T>
void launch_products(
    Launcher& launcher,
    const GemmRun& run,
    GemmTiles tiles,
    T* x,
    T* l) {
  with_tile<T>(tiles, [&](auto tile_tag) {
    using Tile = typename decltype(tile_tag)::type;
    constexpr uint32_t smem = sizeof(typename Tile::SharedStorage);
    const Work& w = run.work;
    const TileCounts tiles = tile_counts<Tile>(w.n);
    CUfunction comb = cu_function(combine_kernel<T>);
    CUfunction prod = cu_function(product_kernel<T, Tile>, smem);
    // Product k of every matrix whose degree has one: at most five.
    for (int k = 0; k < expm::kMaxSlots - 2; ++k) {
      for_chunks(w.batch, [&](int b0, int nb) {
        launcher.add(
            comb, dim3(run.ew_blocks, nb), dim3(256), 0, b0, k, x, l, w);
      });
      for_chunks(w.batch, [&](int b0, int nb) {
        launcher.add(
            prod,
            dim3(tiles.n, tiles.m, nb * (w.frechet ? 2 : 1)),
            dim3(Tile::kThreads),
            smem,
            b0,
            k,
            w);
      });
      if (k == 1 || k == 2) {
        launch_refinement<T>(launcher, run, /* sixth= */ k == 2);
      }
    }
  });
}

template <typename T>
void launch_approximant(Launcher& launcher, const GemmRun& run, T* x, T* l) {
  CUfunction comb = cu_function(combine_kernel<T>);
  for_chunks(run.work.batch, [&](int b0, int nb) {
    launcher.add(
        comb, dim3(run.ew_blocks, nb), dim3(256), 0, b0, -1, x, l, run.work);
  });
}

template <typename T>
void launch_squarings(
    Launcher& launcher,
    const GemmRun& run,
    GemmTiles tiles,
    int first,
    T* x,
    T* l) {
  with_tile<T>(tiles, [&](auto tile_tag) {
    using Tile = typename decltype(tile_tag)::type;
    constexpr uint32_t smem = sizeof(typename Tile::SharedStorage);
    const Work& w = run.work;
    const TileCounts tiles = tile_counts<Tile>(w.n);
    CUfunction sq = cu_function(square_kernel<T, Tile>, smem);
    // No more blocks than can be resident at once (its grid barrier needs
    // them all).
    static int per_sm = [] {
      int v = 0;
      check_cuda(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(
              &v, square_kernel<T, Tile>, Tile::kThreads, smem),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      return std::max(v, 1);
    }();
    long tasks = long(tiles.m) * tiles.n * (w.frechet ? 2 : 1) * w.batch;
    int grid =
        int(std::max<long>(1, std::min<long>(tasks, long(run.sms) * per_sm)));
    launcher.add(sq, dim3(grid), dim3(Tile::kThreads), smem, first, x, l, w);
  });
}

#define MLX_LINALG_EXT_GEMM_PATH(T)                                       \
  template GemmRun gemm_begin<T>(                                         \
      Launcher&, const T*, const T*, int, int, bool, size_t);             \
  template void launch_refinement<T>(Launcher&, const GemmRun&, bool);    \
  template void launch_products<T>(                                       \
      Launcher&, const GemmRun&, GemmTiles, T*, T*);                      \
  template void launch_approximant<T>(Launcher&, const GemmRun&, T*, T*); \
  template void launch_squarings<T>(                                      \
      Launcher&, const GemmRun&, GemmTiles, int, T*, T*);
MLX_LINALG_EXT_GEMM_PATH(float)
MLX_LINALG_EXT_GEMM_PATH(c64)
#undef MLX_LINALG_EXT_GEMM_PATH

} // namespace mlx_linalg_ext::cuda
