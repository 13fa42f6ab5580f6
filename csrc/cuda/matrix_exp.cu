// CUDA backend of MatrixExp and ExpmFrechet. Mirrors csrc/cpu/matrix_exp.cpp:
// per matrix, the 1-norms of A and of A - mu I (mu = tr(A)/n, accumulated in
// double) decide the trace shift, the Taylor degree and the number of
// squarings s (expm_numerics.h); the product program of that degree runs on
// (A - mu I) 2^-s, the approximant is multiplied by e^(mu 2^-s), then s
// squarings. The Frechet derivative runs alongside as the dual evaluation
// (dP = dL R + L dR, d(X^2) = X dX + dX X). A matrix with a NaN or Inf
// becomes all NaN. Nothing is read back to the host: shift, degree and s are
// decided and used on the device.
//
// Two paths:
// - n <= 64 (32 for complex64 with the derivative): one fused kernel for the
//   whole batch, one block per matrix that holds everything in shared memory
//   and runs norms, degree, product program and its own squaring loop (one
//   launch for any batch); the float forward at n = 65..128 on Hopper in
//   one kernel with a cluster of two blocks (two SMs) per matrix
//   (expm_pair_kernel);
// - larger n: a parameter kernel writes (shift, mu, degree, s) per matrix to
//   a device buffer; the combine and GEMM launches of the product program
//   read it and exit for matrices that do not need their step (5 predicated
//   products, a fixed number of launches); all squarings run in ONE
//   persistent kernel that loops on the device up to the largest s of the
//   batch with a grid-wide barrier between squarings (its grid never exceeds
//   what is co-resident on the GPU). So the launch count does not depend on
//   s, whose bound is expm::kMaxSquaringsSingle.
// Products keep FP32 accuracy, never plain TF32: in the fused kernel float
// from n = 9 on FP64 tensor cores (sm_90: float operands, double
// accumulation, SmallMma), else FP32 FMA (SIMT); on the GEMM path FP32 FMA
// below n = 512 (tc_min), above tensor cores in split-precision 3xTF32
// (tf32x3_tile.cuh, CUTLASS mainloops).
//
// Launches go through MLX's command encoder as CUfunction handles
// (libmlx.so carries its own static CUDA runtime, which does not know this
// library's kernels), those with thread-block clusters (the wgmma GEMMs,
// expm_pair_kernel) as one-node child graphs (add_cluster in expm_gpu says
// why); every node reads the inputs and writes the outputs and the workspace,
// so MLX orders the nodes of one evaluation.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "mlx/allocator.h"
#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/utils.h"

#define EXPM_TABLE static __constant__ const
#define EXPM_FN __device__ inline
#include "cuda/device_buffers.h"
#include "cuda/small_plan.h"
#include "cuda/tf32_sm90.cuh"
#include "cuda/tf32x3_tile.cuh"
#include "expm_numerics.h"
#include "primitives.h"

namespace mlx_linalg_ext {

namespace mx = mlx::core;

namespace {

// ------------------------------ element types ------------------------------

// complex64 with the layout of mx::complex64_t (and cuFloatComplex).
struct alignas(8) c64 {
  float x, y;
};

__device__ inline c64 operator-(c64 a, c64 b) {
  return {a.x - b.x, a.y - b.y};
}
__device__ inline c64& operator+=(c64& a, c64 b) {
  a.x += b.x;
  a.y += b.y;
  return a;
}
__device__ inline c64 operator*(float f, c64 a) {
  return {f * a.x, f * a.y};
}
__device__ inline c64 operator*(c64 a, float f) {
  return {a.x * f, a.y * f};
}

// acc += a * b, with fused multiply-adds.
__device__ inline void mac(float& acc, float a, float b) {
  acc = fmaf(a, b, acc);
}
__device__ inline void mac(c64& acc, c64 a, c64 b) {
  acc.x = fmaf(a.x, b.x, acc.x);
  acc.x = fmaf(-a.y, b.y, acc.x);
  acc.y = fmaf(a.x, b.y, acc.y);
  acc.y = fmaf(a.y, b.x, acc.y);
}
__device__ inline void mac(c64& acc, float a, c64 b) {
  acc.x = fmaf(a, b.x, acc.x);
  acc.y = fmaf(a, b.y, acc.y);
}

__device__ inline float abs_of(float v) {
  return fabsf(v);
}
__device__ inline float abs_of(c64 v) {
  return hypotf(v.x, v.y); // as std::abs(std::complex<float>) on the CPU
}

template <typename T>
__device__ inline T real_to(float v);
template <>
__device__ inline float real_to<float>(float v) {
  return v;
}
template <>
__device__ inline c64 real_to<c64>(float v) {
  return {v, 0.0f};
}

template <typename T>
__device__ inline T nan_of() {
  return real_to<T>(__int_as_float(0x7fc00000));
}

__device__ inline float div_real(float v, float d) {
  return v / d;
}
__device__ inline c64 div_real(c64 v, float d) {
  return {v.x / d, v.y / d}; // as std::complex<float> / float
}

// The trace shift mu of a matrix, kept as two floats in Params.
__device__ inline void put_mu(float mu, float& re, float& im) {
  re = mu;
  im = 0.0f;
}
__device__ inline void put_mu(c64 mu, float& re, float& im) {
  re = mu.x;
  im = mu.y;
}
template <typename T>
__device__ inline T get_mu(float re, float im);
template <>
__device__ inline float get_mu<float>(float re, float) {
  return re;
}
template <>
__device__ inline c64 get_mu<c64>(float re, float im) {
  return {re, im};
}

// e^(mu 2^-s) in double (complex double for complex64), and x * factor formed
// in double and rounded once, as rescale() on the CPU.
struct Factor {
  double re, im;
};
__device__ inline Factor exp_factor(float m) {
  return {exp(double(m)), 0.0};
}
__device__ inline Factor exp_factor(c64 m) {
  double e = exp(double(m.x)), sn, cs;
  sincos(double(m.y), &sn, &cs);
  return {e * cs, e * sn};
}
__device__ inline float apply(Factor f, float v) {
  return float(f.re * double(v));
}
__device__ inline c64 apply(Factor f, c64 v) {
  return {
      float(f.re * double(v.x) - f.im * double(v.y)),
      float(f.re * double(v.y) + f.im * double(v.x))};
}

// ------------------------------ shared numerics ----------------------------

// Per matrix: degree index, s, whether the trace shift mu = tr(A)/n is used
// (and mu), from the 1-norms of A and A - mu I; degree -1 marks a matrix with
// a NaN or Inf (its result is all NaN). As Evaluator::run on the CPU.
struct Params {
  int degree;
  int squarings;
  int shift;
  int pad;
  float mu_re, mu_im; // 0 unless shift
};

__device__ inline Params decide(double norm, double shifted_norm, Params p) {
  expm::Decision d = expm::decide(norm, shifted_norm, expm::kSingle);
  if (d.degree == expm::kNoAnswer) {
    return {-1, 0, 0, 0, 0.0f, 0.0f};
  }
  p.shift = d.shift;
  if (!p.shift) {
    p.mu_re = p.mu_im = 0.0f;
  }
  p.degree = d.degree;
  p.squarings = d.squarings;
  return p;
}

// Whether a matrix with these parameters runs product k of its degree (one
// with a NaN or Inf runs none).
__device__ inline bool product_runs(const Params& p, int k) {
  return p.degree >= 0 && k < expm::kNumProducts[p.degree];
}

// max that keeps a NaN (std::max would drop it), as one_norm on the CPU.
__device__ inline double nan_max(double a, double b) {
  return (b > a || isnan(b)) ? b : a;
}

// One element of sum_{j >= 1} c[j] slot_j (+ c[0] on the diagonal when
// `identity`), accumulated in the order of combine_into on the CPU.
template <typename T, typename SlotFn>
__device__ inline T combine_elem(
    const double* c,
    int count,
    bool identity,
    bool diagonal,
    SlotFn slot) {
  T acc = real_to<T>(0.0f);
  for (int j = 1; j < count; ++j) {
    if (c[j] != 0) {
      acc += float(c[j]) * slot(j);
    }
  }
  if (identity && diagonal && c[0] != 0) {
    acc += real_to<T>(float(c[0]));
  }
  return acc;
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(
        std::string("[matrix_exp] ") + what + ": " + cudaGetErrorString(err));
  }
}

int current_device() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

// The driver handle of a kernel of this extension (libmlx has its own static
// CUDA runtime, which does not know this library's kernels), with at least
// `smem` bytes of dynamic shared memory allowed. Cached per device: the
// lookups cost microseconds on every call otherwise.
template <typename Kernel>
CUfunction cu_function(Kernel kernel, size_t smem = 0) {
  struct Entry {
    CUfunction f;
    size_t smem;
  };
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, Entry> cache;
  const void* key = reinterpret_cast<const void*>(kernel);
  std::lock_guard<std::mutex> lock(mutex);
  auto [it, fresh] = cache.try_emplace({current_device(), key}, Entry{});
  if (fresh) {
    cudaFunction_t f;
    check_cuda(cudaGetFuncBySymbol(&f, key), "cudaGetFuncBySymbol");
    it->second.f = reinterpret_cast<CUfunction>(f);
  }
  // Also at exactly 48 KiB: a kernel's static shared memory counts too.
  if (smem >= 48 * 1024 && smem > it->second.smem) {
    // Runtime API on this library's own kernel: the same CUfunction, and no
    // link to libcuda is needed (CI has no driver).
    check_cuda(
        cudaFuncSetAttribute(
            key, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
        "cudaFuncSetAttribute");
    it->second.smem = smem;
  }
  return it->second.f;
}

int device_attr(cudaDeviceAttr attr) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, int> cache;
  int dev = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  auto [it, fresh] = cache.try_emplace({dev, int(attr)}, 0);
  if (fresh) {
    check_cuda(
        cudaDeviceGetAttribute(&it->second, attr, dev),
        "cudaDeviceGetAttribute");
  }
  return it->second;
}

// ============================ small matrices ================================
//
// One block per matrix; every matrix of the product program lives in shared
// memory, in kSmallBuffers buffers (and as many again for the derivative)
// that the plan of small_plan.h shares out among slots and operands. The
// kernel is compiled for a padded size N (4, 8, 16, 32, 64; 64 where its
// buffers fit the shared memory: not complex64 with the derivative; 128 for
// the float forward in expm_pair_kernel, whose blocks hold half the rows):
// an n x n matrix (n <= N) sits in the top-left corner of an N x N one whose
// other entries are zero, i.e. exp of the block diagonal [[A, 0], [0, 0]],
// whose top-left block is exp(A) exactly (every product, combination and
// squaring keeps the block structure; the added terms are exact zeros). The
// norms and the trace shift use the n x n block only. With N fixed every
// loop unrolls and every index is a constant.
//
// A product thread computes a kRows x 4 block in registers (SmallShape,
// SmallBlock): rows i, i + N / kRows, ..., so that the L rows a quarter-warp
// reads lie in different banks. It reads 16-byte vectors of L and R, and
// stores after the whole block has read its operands; the block has one
// thread per such block (at least a warp), so none idles in the products.
// Rows are unpadded for float (LD = N); complex64 rows are padded to N + 4
// elements, where the rows of one quarter-warp would share banks. Float
// products from N = 16 run on the FP64 tensor cores instead (SmallMma).
// Fewer buffers and threads than one per element let more matrices share
// an SM: on an H100 4096 matrices of 16 x 16, 1024 of 32 x 32 and 256 of
// 64 x 64 (float) run in a single wave.

constexpr int kSmallBuffers = cuda::kPlanBuffers;

inline int small_size(int n) {
  return n <= 4 ? 4
      : n <= 8  ? 8
      : n <= 16 ? 16
      : n <= 32 ? 32
      : n <= 64 ? 64
                : 128;
}

// Row stride of the fused kernel's matrices (see above).
template <typename T>
constexpr int small_ld(int N) {
  return std::is_same_v<T, float> ? N : N + 4;
}

template <typename T>
constexpr size_t small_bytes(int N, bool frechet) {
  return size_t(N) * small_ld<T>(N) * sizeof(T) * kSmallBuffers *
      (frechet ? 2 : 1);
}

template <typename T>
size_t small_smem_bytes(int n, bool frechet) {
  return small_bytes<T>(small_size(n), frechet);
}

// Work split of the fused kernel for size N: a product thread computes a
// kRows x 4 block; kRows = 4 where that leaves a warp of blocks (it reads
// shared memory least per FMA: with 2 x 4 blocks the products were bound by
// shared-memory wavefronts), else fewer rows.
template <typename T, int N>
struct SmallShape {
  static constexpr int kLd = small_ld<T>(N);
  static constexpr int kMat = N * kLd;
  static constexpr int kStrips = N / 4; // 4-wide strips of a row
  static constexpr int kRows = N * kStrips >= 4 * 32 ? 4
      : N * kStrips >= 2 * 32                        ? 2
                                                     : 1;
  static constexpr int kItems = (N / kRows) * kStrips;
  // At N = 128 (expm_pair_kernel: FP64 tensor-core products only, 64 rows a
  // block) 512 threads.
  static constexpr int kThreads = N > 64 ? 512 : kItems < 32 ? 32 : kItems;
};

// Blocks per SM that the shared memory allows on Hopper (228 KiB per SM,
// 1 KiB reserved per block), capped by threads and blocks per SM: the
// register budget __launch_bounds__ asks the compiler to keep to.
template <typename T, bool kFrechet, int N>
constexpr int small_min_blocks() {
  constexpr int by_smem = 233472 / int(small_bytes<T>(N, kFrechet) + 1024);
  constexpr int by_threads = 2048 / SmallShape<T, N>::kThreads;
  constexpr int b = by_smem < by_threads ? by_smem : by_threads;
  return b < 1 ? 1 : b > 32 ? 32 : b;
}

// 4 consecutive elements from 16-byte aligned shared memory.
__device__ inline void load4(const float* p, float (&v)[4]) {
  float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x;
  v[1] = q.y;
  v[2] = q.z;
  v[3] = q.w;
}
__device__ inline void load4(const c64* p, c64 (&v)[4]) {
  float4 q0 = reinterpret_cast<const float4*>(p)[0];
  float4 q1 = reinterpret_cast<const float4*>(p)[1];
  v[0] = {q0.x, q0.y};
  v[1] = {q0.z, q0.w};
  v[2] = {q1.x, q1.y};
  v[3] = {q1.z, q1.w};
}
__device__ inline void store4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ inline void store4(c64* p, const c64 (&v)[4]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0].x, v[0].y, v[1].x, v[1].y);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[2].x, v[2].y, v[3].x, v[3].y);
}

// V consecutive elements at p (V = 1, 2 or 4; p aligned to V elements) in
// one access of at most 16 bytes.
template <int V>
__device__ inline void load_vec(const float* p, float (&v)[V]) {
  if constexpr (V == 4) {
    load4(p, v);
  } else if constexpr (V == 2) {
    float2 q = *reinterpret_cast<const float2*>(p);
    v[0] = q.x;
    v[1] = q.y;
  } else {
    v[0] = *p;
  }
}
template <int V>
__device__ inline void load_vec(const c64* p, c64 (&v)[V]) {
  if constexpr (V == 2) {
    float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = {q.x, q.y};
    v[1] = {q.z, q.w};
  } else {
    static_assert(V == 1);
    v[0] = *p;
  }
}
template <int V>
__device__ inline void store_vec(float* p, const float (&v)[V]) {
  if constexpr (V == 4) {
    store4(p, v);
  } else if constexpr (V == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
    *p = v[0];
  }
}
template <int V>
__device__ inline void store_vec(c64* p, const c64 (&v)[V]) {
  if constexpr (V == 2) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0].x, v[0].y, v[1].x, v[1].y);
  } else {
    static_assert(V == 1);
    *p = v[0];
  }
}

// This thread's block of an N x N product: rows i + p kRowStep (p < kRows),
// columns j .. j + 3 (row stride kLd); threads past the items hold none. Per 4
// steps of k it reads a 16-byte vector of each of its rows of L and of 4
// rows of R, for 16 kRows FMAs.
template <typename T, int N>
struct SmallBlock {
  using S = SmallShape<T, N>;
  static constexpr int kRowStep = N / S::kRows; // between the block's rows
  T v[S::kRows][4];

  __device__ static bool active() {
    return S::kItems == S::kThreads || int(threadIdx.x) < S::kItems;
  }
  // Offset of the block's first element; its rows are kRowStep apart.
  __device__ static int first() {
    int it = threadIdx.x;
    return (it / S::kStrips) * S::kLd + (it % S::kStrips) * 4;
  }

  // v = L R (+ L2 R2 when kTwo). Reads shared memory only; no barrier.
  template <bool kTwo>
  __device__ void product(const T* l, const T* r, const T* l2, const T* r2) {
#pragma unroll
    for (int p = 0; p < S::kRows; ++p) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        v[p][q] = real_to<T>(0.0f);
      }
    }
    if (!active()) {
      return;
    }
    const int row = first() - first() % S::kLd; // i * LD
    const int col = first() % S::kLd; // j
#pragma unroll
    for (int pass = 0; pass < (kTwo ? 2 : 1); ++pass) {
      const T* lm = (pass == 0 ? l : l2) + row;
      const T* rm = (pass == 0 ? r : r2) + col;
#pragma unroll 4
      for (int k0 = 0; k0 < N; k0 += 4) {
        T lv[S::kRows][4];
#pragma unroll
        for (int p = 0; p < S::kRows; ++p) {
          load4(lm + p * kRowStep * S::kLd + k0, lv[p]);
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          T rv[4];
          load4(rm + (k0 + kk) * S::kLd, rv);
#pragma unroll
          for (int p = 0; p < S::kRows; ++p) {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              mac(v[p][q], lv[p][kk], rv[q]);
            }
          }
        }
      }
    }
  }

  __device__ void store(T* c) const {
    if (!active()) {
      return;
    }
#pragma unroll
    for (int p = 0; p < S::kRows; ++p) {
      store4(c + first() + p * kRowStep * S::kLd, v[p]);
    }
  }
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kSmallFp64Mma = false;
#else
constexpr bool kSmallFp64Mma = true;
#endif

// Column swizzle of the fused kernel's buffers: element (i, j) lies at
// i kLd + (j ^ small_swizzle(i)). Unpadded float rows of a multiple of 32
// floats put the rows of a tensor-core fragment in the same banks (ncu,
// 64x128x128: 5.1-way conflicts, 64% of the shared-load wavefronts). Bit 4
// of the swizzle (row parity) separates the rows g, g + 1 of one
// quarter-warp's 16-byte L loads; bit 3 (bits 2 and 3 of the row) with it
// gives the 4 R rows 4t + .. of one half-warp's 8-byte loads 4 different
// 8-float groups (see SmallMma). It keeps 4-float vectors whole. Kernel
// time with / without it (ncu, one H100): 64x128x128 62.3 / 66.7 us,
// 256x64x64 31.7 / 33.8, 1024x32x32 23.6 / 23.3 (so N >= 64 only: at N =
// 32 the address arithmetic costs more than the conflicts). Elementwise
// passes are unaffected (every buffer has the same layout); what needs
// (i, j) maps through small_at / small_col.
template <typename T, int N>
constexpr bool small_swizzled() {
  return std::is_same_v<T, float> && N >= 64 && kSmallFp64Mma;
}
template <typename T, int N>
__device__ inline int small_swizzle(int row) {
  if constexpr (small_swizzled<T, N>()) {
    return 16 * (row & 1) + 8 * (((row >> 2) ^ (row >> 3)) & 1);
  } else {
    return 0;
  }
}
// Offset of element (i, j) of a buffer.
template <typename T, int N>
__device__ inline int small_at(int i, int j) {
  return i * small_ld<T>(N) + (j ^ small_swizzle<T, N>(i));
}
// Column of the element at offset idx (its row is idx / kLd).
template <typename T, int N>
__device__ inline int small_col(int idx) {
  constexpr int kLd = small_ld<T>(N);
  return (idx % kLd) ^ small_swizzle<T, N>(idx / kLd);
}
// Whether the element at offset idx is on the diagonal, the buffer's first
// row being row0 of the matrix.
template <typename T, int N>
__device__ inline bool small_diagonal(int idx, int row0 = 0) {
  if (!small_swizzled<T, N>() && row0 == 0) {
    return idx % (small_ld<T>(N) + 1) == 0;
  }
  return idx / small_ld<T>(N) + row0 == small_col<T, N>(idx);
}

// Float products of the fused kernel on Hopper's FP64 tensor cores
// (mma.m16n8k8.f64): fragments of L and R are converted to double (exactly),
// accumulated in double, and each element is rounded once. Every operand
// element is read from shared memory once per warp, where SmallBlock reads
// 6 values per 8 FMAs at N = 16: there its products were bound by
// shared-memory wavefronts (ncu, 4096 x 16 x 16: 935 per matrix, ~2/3 in
// the products; on an H100 the kernel took 18.6 us with this, 24.9 before).
// Work split: warp w computes the 16-row band w % (N / 16) for kGroups
// groups of 16 columns. Lane (g, t) = (lane / 4, lane % 4) holds rows g and
// g + 8 of the band. Two free choices keep the shared accesses 16 or 8 bytes
// wide and bank-friendly:
// - columns: in a group of 16, n-tile q holds the columns 2c + q, so a
//   lane's B values of both tiles are adjacent (R[k][2g], R[k][2g + 1]) and
//   its outputs of a row are 4 adjacent columns (4t .. 4t + 3);
// - k: in a group of 16, k-step u, half h of lane t use k = 4t + ((2u + h)
//   ^ (t & 1)), so its L values are one 16-byte vector per row, and the R
//   rows of one load alternate in parity across t (two wavefronts, the
//   minimum for 256 bytes) at N = 16; from N = 64 small_swizzle spreads
//   both over the banks.
// kHeld: the rows of each matrix the block holds.
template <int N, int kHeld = N>
struct SmallMma {
  static constexpr int kLd = SmallShape<float, N>::kLd; // unpadded: N
  static constexpr int kBands = kHeld / 16;
  static constexpr int kWarps = SmallShape<float, N>::kThreads / 32;
  static constexpr int kGroups = N / 16 / (kWarps / kBands); // per warp
  static_assert(kWarps % kBands == 0 && kGroups >= 1);
  // [column group][n-tile][fragment: (g, 2c), (g, 2c + 1), (g + 8, ..)]
  double acc[kGroups][2][4];

  // d = a b + d for one m16n8k8 tile.
  __device__ static void
  mma(double (&d)[4], const double (&a)[4], double b0, double b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f64.f64.f64.f64 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+d"(d[0]), "+d"(d[1]), "+d"(d[2]), "+d"(d[3])
        : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(b0), "d"(b1));
#else
    __trap(); // SmallProduct picks SmallBlock below sm_90
#endif
  }

  // First row of the warp's band and first column of its groups.
  __device__ static int row0() {
    return (int(threadIdx.x) / 32 % kBands) * 16;
  }
  __device__ static int col0() {
    return (int(threadIdx.x) / 32 / kBands) * kGroups * 16;
  }

  __device__ void zero() {
#pragma unroll
    for (int cg = 0; cg < kGroups; ++cg) {
#pragma unroll
      for (int q = 0; q < 2; ++q) {
#pragma unroll
        for (int f = 0; f < 4; ++f) {
          acc[cg][q][f] = 0.0;
        }
      }
    }
  }

  // acc += L[band, k0 .. k0 + 15] R[k0 .. k0 + 15, groups]; row k0 + i of
  // R at r + i kLd (k0 is a multiple of 16, so the swizzle of R's rows
  // depends on i only).
  __device__ void k_step(const float* l, const float* r, int k0) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int odd = t & 1;
    const int row = row0() + g;
    float lv[2][4]; // L[g][k0 + 4t ..], L[g + 8][k0 + 4t ..]
    load4(l + small_at<float, N>(row, k0 + 4 * t), lv[0]);
    load4(l + small_at<float, N>(row + 8, k0 + 4 * t), lv[1]);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      double a[4]; // (g, h = 0), (g + 8, 0), (g, 1), (g + 8, 1)
      int kr[2]; // the R rows of h = 0, 1
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int j = 2 * u + h; // the pair (j, j ^ 1) swaps for odd t
        a[2 * h] = double(odd ? lv[0][j ^ 1] : lv[0][j]);
        a[2 * h + 1] = double(odd ? lv[1][j ^ 1] : lv[1][j]);
        kr[h] = 4 * t + (j ^ odd);
      }
#pragma unroll
      for (int cg = 0; cg < kGroups; ++cg) {
        const int col = col0() + 16 * cg + 2 * g;
        const float2 r0 = *reinterpret_cast<const float2*>(
            r + small_at<float, N>(kr[0], col));
        const float2 r1 = *reinterpret_cast<const float2*>(
            r + small_at<float, N>(kr[1], col));
        mma(acc[cg][0], a, double(r0.x), double(r1.x));
        mma(acc[cg][1], a, double(r0.y), double(r1.y));
      }
    }
  }

  // acc = L R (+ L2 R2 when kTwo). Reads shared memory only; no barrier.
  template <bool kTwo>
  __device__ void
  product(const float* l, const float* r, const float* l2, const float* r2) {
    zero();
#pragma unroll
    for (int pass = 0; pass < (kTwo ? 2 : 1); ++pass) {
#pragma unroll
      for (int k0 = 0; k0 < N; k0 += 16) {
        k_step(pass == 0 ? l : l2, (pass == 0 ? r : r2) + k0 * kLd, k0);
      }
    }
  }

  // acc = L R where R's rows 0 .. N/2 - 1 are at r_top and the others at
  // r_bottom (a cluster's halves). Reads shared memory only; no barrier.
  __device__ void
  product_halves(const float* l, const float* r_top, const float* r_bottom) {
    zero();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int k0 = 0; k0 < N / 2; k0 += 16) {
        k_step(l, (half == 0 ? r_top : r_bottom) + k0 * kLd, half * N / 2 + k0);
      }
    }
  }

  __device__ void store(float* c) const {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
    for (int cg = 0; cg < kGroups; ++cg) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float v[4] = {
            float(acc[cg][0][2 * half]),
            float(acc[cg][1][2 * half]),
            float(acc[cg][0][2 * half + 1]),
            float(acc[cg][1][2 * half + 1])};
        store4(
            c +
                small_at<float, N>(
                    row0() + g + 8 * half, col0() + 16 * cg + 4 * t),
            v);
      }
    }
  }
};

// The product blocks of the fused kernel: FP64 tensor cores for float from
// N = 16 on sm_90 and newer (kSmallFp64Mma), FP32 (or complex64) FMAs
// otherwise.
template <typename T, int N>
using SmallProduct = std::conditional_t<
    std::is_same_v<T, float> && N >= 16 && kSmallFp64Mma,
    SmallMma<N>,
    SmallBlock<T, N>>;

using cuda::SmallPlan;

// A linear combination of slots of the fused kernel, elementwise over the
// padded matrices: sum_{j >= 1} c[j] slot_j (+ c[0] I when `identity`), in
// the order of combine_into on the CPU. Coefficients and slot offsets go to
// registers once, outside the element loop. A block holds rows row0 ..
// row0 + kHeld - 1 of each matrix (all of them, or its part in a cluster).
template <typename T, int N, int kHeld = N>
struct SmallCombo {
  static constexpr int kLd = SmallShape<T, N>::kLd;
  static constexpr int kMat = kHeld * kLd; // elements of a buffer
  float c[expm::kMaxSlots];
  int src[expm::kMaxSlots]; // element offset of slot j in the buffers
  int row0;

  __device__ SmallCombo(
      const float* coef,
      int count,
      const signed char* slot_buffer,
      int first_row = 0)
      : row0(first_row) {
#pragma unroll
    for (int j = 0; j < expm::kMaxSlots; ++j) {
      c[j] = j < count ? coef[j] : 0.0f;
      src[j] = j >= 1 && j < count ? slot_buffer[j] * kMat : 0;
    }
  }

  // Whether element idx of a buffer is on the diagonal.
  __device__ bool diagonal(int idx) const {
    return small_diagonal<T, N>(idx, kHeld == N ? 0 : row0);
  }

  // The passes take kVec consecutive elements a thread at a time, in one
  // access of up to 16 bytes (a buffer holds a multiple of 4 elements, and 4
  // consecutive ones share a row). One element at a time they were latency
  // bound: a thread's loads of the next element waited behind its stores of
  // the last (the compiler cannot tell the slots from the operands), ~1.8K
  // cycles for one pass at N = 16. Fewer where a block has fewer elements
  // than 4 a thread (N = 4, 8) and in the pair kernel (no room in its 128
  // registers); 16 bytes, not 32, for complex64 (conflict-free accesses).
  static constexpr int kVec = [] {
    constexpr int per_thread = kMat / SmallShape<T, N>::kThreads;
    constexpr int widest = N > 64 ? 2 : 16 / int(sizeof(T));
    return per_thread >= widest ? widest : per_thread >= 2 ? 2 : 1;
  }();
  static_assert(kMat % kVec == 0);
  using Slots = T[expm::kMaxSlots][kVec];

  // The slots' elements idx .. idx + kVec - 1 (v[0] unused), to share
  // between combinations of the same slots. Every slot is read, whatever its
  // coefficient: loads behind branches would wait for each other, and a zero
  // coefficient adds an exact zero (the slots are finite: a matrix with a
  // NaN or Inf never gets here).
  __device__ void load(const T* buf, int idx, Slots& v) const {
#pragma unroll
    for (int j = 1; j < expm::kMaxSlots; ++j) {
      load_vec<kVec>(buf + src[j] + idx, v[j]);
    }
  }
  // The combination at element idx + e of the loaded slots.
  __device__ T of(const Slots& v, int e, int idx, bool identity) const {
    T acc = real_to<T>(0.0f);
#pragma unroll
    for (int j = 1; j < expm::kMaxSlots; ++j) {
      mac(acc, c[j], v[j][e]);
    }
    if (identity && c[0] != 0.0f && diagonal(idx + e)) {
      acc += real_to<T>(c[0]);
    }
    return acc;
  }
};

// Forms the operands of product step `step` (degree d) that are
// combinations, into their buffers (primal in buf, dual in dbuf), in one
// elementwise pass: every element of every source is read before that
// element of any operand is written, so an operand may overwrite a slot read
// here for the last time. Returns whether it wrote anything (then the block
// must synchronise before the product). No barrier. The block holds rows
// row0 .. row0 + kHeld - 1 of each matrix (see SmallCombo).
template <typename T, int N, bool kFrechet, int kHeld = N>
__device__ inline bool small_form_operands(
    const SmallPlan& plan,
    int d,
    int step,
    T* buf,
    T* dbuf,
    int row0 = 0) {
  using Combo = SmallCombo<T, N, kHeld>;
  constexpr int kThreads = SmallShape<T, N>::kThreads;
  const int count = 2 + step - expm::kFirstStep[d];
  const bool form_l = plan.lone[step][0] < 0;
  const bool form_r =
      plan.lone[step][1] < 0 && plan.operand[step][1] != plan.operand[step][0];
  if (!form_l && !form_r) {
    return false;
  }
  const Combo cl(plan.step[step][0], count, plan.slot[d], row0);
  const Combo cr(plan.step[step][1], count, plan.slot[d], row0);
  const int ol = plan.operand[step][0] * Combo::kMat;
  const int or_ = plan.operand[step][1] * Combo::kMat;
  constexpr int V = Combo::kVec;
  // The operands of one evaluation (primal: with the identity terms; dual:
  // without) at elements idx .. idx + V - 1.
  auto form = [&](T* b, int idx, bool identity) {
    // Both operands combine the same slots (their offsets agree).
    typename Combo::Slots v;
    cl.load(b, idx, v);
    T l[V], r[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      l[e] = cl.of(v, e, idx, identity);
      r[e] = cr.of(v, e, idx, identity);
    }
    if (form_l) {
      store_vec<V>(b + ol + idx, l);
    }
    if (form_r) {
      store_vec<V>(b + or_ + idx, r);
    }
  };
#pragma unroll(N > 64 ? 2 : 1) // the pair kernel: 8 x 2 elements a thread
  for (int idx = V * threadIdx.x; idx < Combo::kMat; idx += V * kThreads) {
    form(buf, idx, true);
    if constexpr (kFrechet) {
      form(dbuf, idx, false);
    }
  }
  return true;
}

// The approximant of degree d in place of its last slot, times e^(mu 2^-s)
// with the shift (the squarings then stay in the range of the result;
// scaled_mu = mu 2^-s); returns its offset in the buffers. The block holds
// rows row0 .. row0 + kHeld - 1 (see SmallCombo). No barrier.
template <typename T, int N, bool kFrechet, int kHeld = N>
__device__ inline int small_approximant(
    const SmallPlan& plan,
    int d,
    bool shift,
    T scaled_mu,
    T* buf,
    T* dbuf,
    int row0 = 0) {
  using Combo = SmallCombo<T, N, kHeld>;
  const signed char* slot = plan.slot[d];
  const int count = expm::num_slots(d);
  const int fin = slot[count - 1] * Combo::kMat;
  const Factor factor = exp_factor(scaled_mu);
  const Combo cf(plan.fin[d], count, slot, row0);
  constexpr int V = Combo::kVec;
  // The approximant of one evaluation (primal: with the identity term;
  // dual: without) at elements idx .. idx + V - 1.
  auto combine = [&](T* b, int idx, bool identity) {
    typename Combo::Slots v;
    T x[V];
    cf.load(b, idx, v);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      x[e] = cf.of(v, e, idx, identity);
      x[e] = shift ? apply(factor, x[e]) : x[e];
    }
    store_vec<V>(b + fin + idx, x);
  };
#pragma unroll(N > 64 ? 2 : 1) // the pair kernel: 8 x 2 elements a thread
  for (int idx = V * threadIdx.x; idx < Combo::kMat;
       idx += V * SmallShape<T, N>::kThreads) {
    combine(buf, idx, true);
    if constexpr (kFrechet) {
      combine(dbuf, idx, false);
    }
  }
  return fin;
}

#ifdef MLX_LINALG_EXT_PHASE_CLOCKS
#define PHASE(label)                                      \
  if (blockIdx.x == 0 && threadIdx.x == 0 && nclk < 48) { \
    clk[nclk] = clock64();                                \
    lab[nclk++] = label;                                  \
  }
#else
#define PHASE(label)
#endif

template <typename T, bool kFrechet, int N>
__global__ void __launch_bounds__(
    SmallShape<T, N>::kThreads,
    small_min_blocks<T, kFrechet, N>())
    expm_small_kernel(
        const T* __restrict__ a,
        const T* __restrict__ e,
        T* __restrict__ x_out,
        T* __restrict__ l_out,
        int n,
        const __grid_constant__ SmallPlan plan) {
  using S = SmallShape<T, N>;
  constexpr int LD = S::kLd;
  constexpr int kMat = S::kMat;
  constexpr int kThreads = S::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nn = n * n;
  const size_t off = size_t(blockIdx.x) * nn;
  // Buffer b is buf + b kMat (primal) and dbuf + b kMat (dual); A and E
  // start in buffer 0, the identity is implicit.
  T* buf = reinterpret_cast<T*>(smem_raw);
  T* dbuf = buf + kSmallBuffers * kMat;
  Params& shared_params = *reinterpret_cast<Params*>(buf + kMat);
#ifdef MLX_LINALG_EXT_PHASE_CLOCKS
  long long clk[48];
  const char* lab[48];
  int nclk = 0;
#endif
  PHASE("start");

  // A (and E) into the top-left corner of zero N x N matrices; the loop
  // unrolls so that a thread's loads are in flight together (8 at a time
  // where there are more than 16: complex64 at N = 32 and 64).
  constexpr int kPasses = (kMat + kThreads - 1) / kThreads;
#pragma unroll(kPasses <= 16 ? kPasses : 8)
  for (int pass = 0; pass < kPasses; ++pass) {
    int idx = pass * kThreads + threadIdx.x;
    if (kMat % kThreads == 0 || idx < kMat) {
      int i = idx / LD, j = small_col<T, N>(idx);
      bool in = i < n && j < n;
      buf[idx] = in ? a[off + i * n + j] : real_to<T>(0.0f);
      if constexpr (kFrechet) {
        dbuf[idx] = in ? e[off + i * n + j] : real_to<T>(0.0f);
      }
    }
  }
  __syncthreads();
  PHASE("load");
  // The 1-norms of A and A - mu I over the n x n block in warp 0: mu =
  // tr(A)/n summed in T in order as on the CPU (every lane forms it), lane j
  // sums columns j, j + 32, ... in double in row order, shuffles take the
  // maxima (NaN kept), lane 0 decides. The loops run over the padded N x N
  // matrix without branches (so that the loads overlap): the padding adds
  // exact zeros.
  if (threadIdx.x < 32) {
    T tr = real_to<T>(0.0f);
#pragma unroll 16
    for (int i = 0; i < N; ++i) {
      tr += buf[small_at<T, N>(i, i)];
    }
    const T mu = div_real(tr, float(n));
    double norm = 0.0, shifted = 0.0;
#pragma unroll
    for (int j0 = 0; j0 < N; j0 += 32) {
      const int j = j0 + threadIdx.x;
      double sum = 0.0, sum_shifted = 0.0;
      // The one element of column j that the shift changes, taken once
      // (for complex64 abs_of is a hypot).
      const double diag_shifted =
          j < N ? double(abs_of(buf[small_at<T, N>(j, j)] - mu)) : 0.0;
#pragma unroll 16
      for (int i = 0; i < N; ++i) {
        T v = j < N ? buf[small_at<T, N>(i, j)] : real_to<T>(0.0f);
        const double av = double(abs_of(v));
        sum += av;
        sum_shifted += i == j ? diag_shifted : av;
      }
      if (j < n) {
        norm = nan_max(norm, sum);
        shifted = nan_max(shifted, sum_shifted);
      }
    }
#pragma unroll
    for (int m = 16; m > 0; m /= 2) {
      norm = nan_max(norm, __shfl_xor_sync(0xffffffffu, norm, m));
      shifted = nan_max(shifted, __shfl_xor_sync(0xffffffffu, shifted, m));
    }
    if (threadIdx.x == 0) {
      Params p{};
      put_mu(mu, p.mu_re, p.mu_im);
      shared_params = decide(norm, shifted, p);
    }
  }
  __syncthreads();
  PHASE("norms");
  const Params params = shared_params;
  const int d = params.degree;
  const int s = params.squarings;
  const bool shift = params.shift;
  const T mu = get_mu<T>(params.mu_re, params.mu_im);
  if (d < 0) {
    for (int idx = threadIdx.x; idx < nn; idx += kThreads) {
      x_out[off + idx] = nan_of<T>();
      if constexpr (kFrechet) {
        l_out[off + idx] = nan_of<T>();
      }
    }
    return;
  }
  const float f = float(ldexp(1.0, -s)); // exact power of two
  if (s > 0 || shift) {
    // (A - mu I) 2^-s and E 2^-s; the shift only on the n x n diagonal.
    for (int idx = threadIdx.x; idx < kMat; idx += kThreads) {
      T v = buf[idx];
      if (shift && small_diagonal<T, N>(idx) && idx / LD < n) {
        v = v - mu;
      }
      buf[idx] = v * f;
      if constexpr (kFrechet) {
        dbuf[idx] = dbuf[idx] * f;
      }
    }
  }
  // Every thread has read the parameters (in buffer 1) before buffer 1 is
  // written.
  __syncthreads();
  PHASE("scale");

  const signed char* slot = plan.slot[d];
  for (int k = 0; k < expm::kNumProducts[d]; ++k) {
    const int step = expm::kFirstStep[d] + k;
    if (small_form_operands<T, N, kFrechet>(plan, d, step, buf, dbuf)) {
      __syncthreads();
    }
    PHASE("form");
    const T* l = buf + plan.operand[step][0] * kMat;
    const T* r = buf + plan.operand[step][1] * kMat;
    SmallProduct<T, N> p;
    p.template product<false>(l, r, nullptr, nullptr);
    SmallProduct<T, N> dp;
    if constexpr (kFrechet) {
      const T* dl = dbuf + plan.operand[step][0] * kMat;
      const T* dr = dbuf + plan.operand[step][1] * kMat;
      dp.template product<true>(dl, r, l, dr); // dL R + L dR
    }
    if (plan.overwrites[step]) {
      __syncthreads();
    }
    p.store(buf + slot[2 + k] * kMat);
    if constexpr (kFrechet) {
      dp.store(dbuf + slot[2 + k] * kMat);
    }
    __syncthreads();
    PHASE("product");
  }

  // The approximant, then s squarings in place.
  const int fin =
      small_approximant<T, N, kFrechet>(plan, d, shift, mu * f, buf, dbuf);
  __syncthreads();
  PHASE("final");
  T* x = buf + fin;
  T* dx = dbuf + fin;
  for (int i = 0; i < s; ++i) {
    SmallProduct<T, N> y;
    y.template product<false>(x, x, nullptr, nullptr);
    SmallProduct<T, N> dy;
    if constexpr (kFrechet) {
      dy.template product<true>(x, dx, dx, x); // X dX + dX X
    }
    __syncthreads();
    y.store(x);
    if constexpr (kFrechet) {
      dy.store(dx);
    }
    __syncthreads();
    PHASE("square");
  }
  // The n x n corner out; with n = N the division by the row length is a
  // shift (by the runtime n it cost ~20 instructions an element).
  auto store_out = [&](auto cols) {
    for (int idx = threadIdx.x; idx < cols * cols; idx += kThreads) {
      int i = idx / cols, j = idx - i * cols;
      x_out[off + idx] = x[small_at<T, N>(i, j)];
      if constexpr (kFrechet) {
        l_out[off + idx] = dx[small_at<T, N>(i, j)];
      }
    }
  };
  if (n == N) {
    store_out(std::integral_constant<int, N>{});
  } else {
    store_out(n);
  }
  PHASE("store");
#ifdef MLX_LINALG_EXT_PHASE_CLOCKS
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    for (int i = 1; i < nclk; ++i) {
      printf(
          "phase N=%d d=%d s=%d %s %lld\n",
          N,
          d,
          s,
          lab[i],
          clk[i] - clk[i - 1]);
    }
  }
#endif
}

// ------------------ n = 65..128: a cluster of two blocks --------------------
//
// The float forward at padded N = 128 on a cluster of two blocks (two SMs) a
// matrix: block `rank` holds rows 64 rank .. 64 rank + 63 of each of the 6
// buffers in its shared memory (192 KiB) and computes those rows of every
// product on the FP64 tensor cores (SmallMma<128, 64>). The other half of
// the right operand is copied from the partner's shared memory (distributed
// shared memory) into a staging buffer first: read inside the product loop,
// remote loads cost ~5x local ones (an earlier experiment, NOTES.md). The
// elementwise passes (combinations, approximant, scaling) touch the own rows
// only; the norms add the two halves' column sums and traces in the same
// order in both blocks, so both decide the same degree and s.
//
// Barriers: a cluster barrier (release/acquire) makes the partner's rows of
// an operand final before a block copies them; the block then arrives on
// the next barrier once it has copied them, and waits on it only before it
// stores a product (which may overwrite what the partner copies), so that
// wait overlaps the product.
constexpr int kPairN = 128;
constexpr int kPairRows = kPairN / 2; // rows a block holds
constexpr int kPairThreads = SmallShape<float, kPairN>::kThreads;
constexpr int kPairMat = SmallShape<float, kPairN>::kMat / 2; // a half buffer
// The buffers and the staging buffer (224 KiB of the 227 KiB a block may
// have on Hopper).
constexpr size_t kPairSmem = sizeof(float) * kPairMat * (kSmallBuffers + 1);

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
  float* buf = reinterpret_cast<float*>(smem_raw);
  float* stage = buf + kSmallBuffers * kMat;
  const int rank = blockIdx.x & 1; // the rank in the cluster (2, 1, 1)
  const int row0 = rank * kPairRows;
  const size_t off = size_t(blockIdx.x / 2) * n * n;
  const int tid = threadIdx.x;
  using Mma = SmallMma<kPairN, kPairRows>;
#ifdef MLX_LINALG_EXT_PHASE_CLOCKS
  long long clk[48];
  const char* lab[48];
  int nclk = 0;
#endif
  PHASE("start");

  // The block's rows of A into buffer 0 (zeros outside the n x n block).
#pragma unroll 8
  for (int idx = tid; idx < kMat; idx += kThreads) {
    const int i = row0 + idx / LD, j = small_col<float, kPairN>(idx);
    buf[idx] = i < n && j < n ? a[off + i * n + j] : 0.0f;
  }
  __syncthreads();
  PHASE("load");

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
    float tr = 0.0f;
    for (int i = 0; i < kPairRows; ++i) {
      tr += buf[small_at<float, kPairN>(i, row0 + i)];
    }
    mine[kPairN] = double(tr);
  }
  cluster_sync();
  {
    const double* theirs = cluster_peer(mine, rank ^ 1);
    const double* top = rank == 0 ? mine : theirs;
    const double* bottom = rank == 0 ? theirs : mine;
    const float mu = (float(top[kPairN]) + float(bottom[kPairN])) / float(n);
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
      shared_params = decide(norm, sh, p);
    }
  }
  cluster_sync(); // the partner is done with this block's memory
  PHASE("norms");
  const Params params = shared_params;
  const int d = params.degree;
  const int s = params.squarings;
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
  const float f = float(ldexp(1.0, -s)); // exact power of two
  if (s > 0 || shift) {
    // (A - mu I) 2^-s; the shift only on the n x n diagonal.
    for (int idx = tid; idx < kMat; idx += kThreads) {
      float v = buf[idx];
      if (shift && small_diagonal<float, kPairN>(idx, row0) &&
          row0 + idx / LD < n) {
        v = v - mu;
      }
      buf[idx] = v * f;
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
    PHASE("form");
    Mma p;
    pair_product(
        p,
        buf + plan.operand[step][0] * kMat,
        buf + plan.operand[step][1] * kMat,
        stage,
        rank);
    PHASE("product");
    cluster_wait(); // the partner has copied this block's rows
    if (plan.overwrites[step]) {
      __syncthreads();
    }
    p.store(buf + slot[2 + k] * kMat);
    __syncthreads();
    PHASE("store");
  }

  // The approximant, then s squarings in place.
  const int fin = small_approximant<float, kPairN, false, kPairRows>(
      plan, d, shift, mu * f, buf, nullptr, row0);
  __syncthreads();
  PHASE("final");
  float* x = buf + fin;
  for (int i = 0; i < s; ++i) {
    Mma y;
    pair_product(y, x, x, stage, rank);
    cluster_wait();
    __syncthreads();
    y.store(x);
    __syncthreads();
    PHASE("square");
  }
  for (int idx = tid; idx < kMat; idx += kThreads) {
    const int i = row0 + idx / LD, j = small_col<float, kPairN>(idx);
    if (i < n && j < n) {
      x_out[off + i * n + j] = x[idx];
    }
  }
  PHASE("out");
#ifdef MLX_LINALG_EXT_PHASE_CLOCKS
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    for (int i = 1; i < nclk; ++i) {
      printf(
          "phase pair d=%d s=%d %s %lld\n", d, s, lab[i], clk[i] - clk[i - 1]);
    }
  }
#endif
#else
  __trap(); // expm_gpu launches it on sm_90 and newer only
#endif
}

// Whether the one-block fused kernel exists for padded size N: up to 64,
// all but complex64 with the derivative at N = 64 (twice 6 buffers of 64 x
// 68 complex64, 418 KB). (N = 128: expm_pair_kernel, the float forward.)
template <typename T, bool kFrechet>
constexpr bool has_small_kernel(int N) {
  return N <= 32 || (N == 64 && !(std::is_same_v<T, c64> && kFrechet));
}

template <typename T, bool kFrechet>
void launch_small(
    int n,
    int batch,
    size_t smem,
    const std::function<void(CUfunction, dim3, dim3, uint32_t)>& add) {
  auto go = [&](auto kernel, int threads) {
    add(cu_function(kernel, smem), dim3(batch), dim3(threads), uint32_t(smem));
  };
  switch (small_size(n)) {
    case 4:
      return go(expm_small_kernel<T, kFrechet, 4>, SmallShape<T, 4>::kThreads);
    case 8:
      return go(expm_small_kernel<T, kFrechet, 8>, SmallShape<T, 8>::kThreads);
    case 16:
      return go(
          expm_small_kernel<T, kFrechet, 16>, SmallShape<T, 16>::kThreads);
    case 32:
      return go(
          expm_small_kernel<T, kFrechet, 32>, SmallShape<T, 32>::kThreads);
    case 64: // expm_gpu checks small_smem_bytes against the device first
      if constexpr (has_small_kernel<T, kFrechet>(64)) {
        return go(
            expm_small_kernel<T, kFrechet, 64>, SmallShape<T, 64>::kThreads);
      }
      break;
  }
  throw std::logic_error("[matrix_exp] No fused kernel for this size.");
}

// ============================ larger matrices ===============================
//
// Workspace per matrix (n x n buffers): 0 = scaled A (slot 1), 1..5 = P2..P6
// (slots 2..6), 6 = L, 7 = R; with the derivative 8..15 the same for dA.
// The approximant and the squarings reuse L / R (dL / dR).

constexpr int kBuffers = 8;

struct Work {
  void* buf; // batch x (8 or 16) x n x n elements
  Params* params; // batch
  unsigned int* barrier; // [count, generation]
  int n;
  int batch;
  int frechet;
};

template <typename T>
__device__ inline T* wbuf(const Work& w, int b, int i) {
  size_t nn = size_t(w.n) * w.n;
  size_t per = nn * kBuffers * (w.frechet ? 2 : 1);
  return static_cast<T*>(w.buf) + per * b + nn * i;
}

// mu = tr(A)/n by a fixed-order reduction over 256 threads in double, so
// that every block that forms it gets the same float (the CPU sums in float
// in order; any mu is exact for exp(A) = e^mu exp(A - mu I)).
__device__ inline double2 add2(double2 a, double2 b) {
  return make_double2(a.x + b.x, a.y + b.y);
}
__device__ inline double2 widen(float v) {
  return make_double2(v, 0.0);
}
__device__ inline double2 widen(c64 v) {
  return make_double2(v.x, v.y);
}
template <typename T>
__device__ inline T narrow(double2 v);
template <>
__device__ inline float narrow<float>(double2 v) {
  return float(v.x);
}
template <>
__device__ inline c64 narrow<c64>(double2 v) {
  return {float(v.x), float(v.y)};
}

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
// groups); colsum holds both (batch x 2n).
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
    colsum[size_t(b) * 2 * n + j] = sum;
    colsum[size_t(b) * 2 * n + n + j] = shifted;
  }
}

// Norms -> Params per matrix (256 threads); block 0 also clears the grid
// barrier.
template <typename T>
__global__ void decide_kernel(const T* a, const double* colsum, Work w) {
  __shared__ double part[2][256];
  __shared__ double2 red[256];
  int b = blockIdx.x;
  T mu = block_mean_diagonal(a + size_t(b) * w.n * w.n, w.n, threadIdx.x, red);
  double norm = 0.0, shifted = 0.0;
  const double* cs = colsum + size_t(b) * 2 * w.n;
  for (int j = threadIdx.x; j < w.n; j += blockDim.x) {
    norm = nan_max(norm, cs[j]);
    shifted = nan_max(shifted, cs[w.n + j]);
  }
  part[0][threadIdx.x] = norm;
  part[1][threadIdx.x] = shifted;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) {
      part[0][threadIdx.x] =
          nan_max(part[0][threadIdx.x], part[0][threadIdx.x + h]);
      part[1][threadIdx.x] =
          nan_max(part[1][threadIdx.x], part[1][threadIdx.x + h]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    Params p = {};
    put_mu(mu, p.mu_re, p.mu_im);
    w.params[b] = decide(part[0][0], part[1][0], p);
    if (b == 0) {
      w.barrier[0] = 0;
      w.barrier[1] = 0;
    }
  }
}

// Slot 1 (and its derivative) = (A - mu I) 2^-s (and E 2^-s).
template <typename T>
__global__ void scale_kernel(int b0, const T* a, const T* e, Work w) {
  size_t nn = size_t(w.n) * w.n;
  int b = b0 + blockIdx.y;
  Params p = w.params[b];
  if (p.degree < 0) {
    return;
  }
  float f = float(ldexp(1.0, -p.squarings));
  T mu = get_mu<T>(p.mu_re, p.mu_im);
  T* x = wbuf<T>(w, b, 0);
  T* dx = wbuf<T>(w, b, kBuffers);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < nn;
       i += size_t(gridDim.x) * blockDim.x) {
    T v = a[nn * b + i];
    if (p.shift && i % (w.n + 1) == 0) {
      v = v - mu;
    }
    x[i] = v * f;
    if (w.frechet) {
      dx[i] = e[nn * b + i] * f;
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
    // With the shift, times e^(mu 2^-s) before the squarings (as on the CPU).
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

// ===================== single large matrix on Hopper wgmma ==================
//
// For one matrix (batch 1) with n c % 4 == 0 (c = 2 for complex64) on an
// sm_90 GPU, every product and the first kSm90Squarings squarings run as
// plain TF32 wgmma GEMMs (tf32_sm90.cuh) on operands split into TF32 parts
// beforehand: left rows [small | big | big], right (transposed) rows
// [big | small | big] along K = 3 n c, so one GEMM sums small*big +
// big*small + big*big ("3xTF32", small terms first). Complex64 runs as a
// real GEMM: a row of A viewed as 2n floats (re, im interleaved) times a
// right operand whose rows 2j / 2j+1 give Re / Im of column j, so D comes
// out interleaved, i.e. as complex64. With the derivative a second GEMM sums
// two such terms (K = 6 n c): dL R + L dR for a product, X dX + dX X for a
// squaring; the value GEMM reads its term as a sub-block of the same
// operands. The split kernel also forms the product operands from the slots
// (no combine launches for products here). Split and GEMM launches are
// predicated on the device like the others; squarings past kSm90Squarings
// go to the persistent square_kernel (mma.sync 3xTF32).

// Squarings as predicated wgmma launches: 4 cover 1-norms up to 16 theta_18
// (about 48); each idle split + GEMM pair costs a few microseconds.
constexpr int kSm90Squarings = 4;

// Step `op` of the sm90 launches: product op (op >= 0) or squaring -1 - op.
__device__ inline bool sm90_step_runs(const Params& p, int op) {
  return op >= 0 ? product_runs(p, op) : p.degree >= 0 && -1 - op < p.squarings;
}

// x rounded to the nearest TF32 (low 13 mantissa bits zero).
__device__ inline float tf32_round(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return __uint_as_float(r);
#else
  return x; // the sm90 path never runs below sm_80
#endif
}

__device__ inline float2 as_floats(float v) {
  return make_float2(v, 0.0f);
}
__device__ inline float2 as_floats(c64 v) {
  return make_float2(v.x, v.y);
}

// The split operands of step `op` (batch 1): grid (n/32 column tiles,
// n/32 row tiles, 2 x terms); z even writes a left term, z odd a right one.
// left: n rows x ld floats, right: n c rows x ld floats, term t at column
// 3 n c t.
template <typename T>
__global__ void
sm90_split_kernel(int op, Work w, float* left, float* right, int ld) {
  constexpr int c = std::is_same_v<T, c64> ? 2 : 1;
  __shared__ float2 tile[32][33];
  Params p = w.params[0];
  if (!sm90_step_runs(p, op)) {
    return;
  }
  const int n = w.n, nc = n * c;
  const int term = blockIdx.z / 2, side = blockIdx.z % 2;
  // The term's two matrices: (dL, R), (L, dR) for a product, (X, dX),
  // (dX, X) for a squaring; without the derivative (L, R) / (X, X). A
  // product's operand is formed here from the slots (this path has no
  // combine launches for products), or is a lone slot.
  const double* coef = nullptr;
  int count = 0, base_buf, lone = 0;
  bool identity = true;
  if (op >= 0) {
    int step = expm::kFirstStep[p.degree] + op;
    count = 2 + op;
    coef = side == 0 ? expm::kStepLeft[step] : expm::kStepRight[step];
    bool dual = w.frechet && (term == 0) == (side == 0);
    identity = !dual;
    lone = expm::lone_slot(coef, count, identity);
    base_buf = dual ? kBuffers : 0;
  } else {
    bool dual = w.frechet && (term == 0) == (side == 1);
    lone = 7 + (-1 - op) % 2; // buffer 6 + i % 2 as a slot number
    base_buf = dual ? kBuffers : 0;
  }
  auto at = [&](int i, int j) -> T {
    size_t idx = size_t(i) * n + j;
    if (lone >= 1) {
      return wbuf<T>(w, 0, base_buf + lone - 1)[idx];
    }
    return combine_elem<T>(coef, count, identity, i == j, [&](int q) {
      return wbuf<T>(w, 0, base_buf + q - 1)[idx];
    });
  };
  const int row0 = blockIdx.y * 32, col0 = blockIdx.x * 32;
  const long kt = long(term) * 3 * nc;
  if (side == 0) {
    // Row i of the left operand: [small | big | big] of the operand's row i.
    for (int r = threadIdx.y; r < 32; r += 8) {
      int i = row0 + r, j = col0 + threadIdx.x;
      if (i < n && j < n) {
        float2 v = as_floats(at(i, j));
        float* dst = left + size_t(i) * ld + kt + c * j;
#pragma unroll
        for (int e = 0; e < c; ++e) {
          float x = e == 0 ? v.x : v.y;
          float big = tf32_round(x);
          dst[e] = tf32_round(x - big);
          dst[nc + e] = big;
          dst[2 * nc + e] = big;
        }
      }
    }
    return;
  }
  // Right operand, transposed through shared memory: row c j + e holds
  // what multiplies row k of m into (Re, Im)[e] of column j of the product.
  for (int r = threadIdx.y; r < 32; r += 8) {
    int k = row0 + r, j = col0 + threadIdx.x;
    tile[r][threadIdx.x] =
        k < n && j < n ? as_floats(at(k, j)) : make_float2(0, 0);
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += 8) {
    int j = col0 + r, k = row0 + threadIdx.x;
    if (j >= n || k >= n) {
      continue;
    }
    float2 v = tile[threadIdx.x][r];
#pragma unroll
    for (int e = 0; e < c; ++e) {
      float* dst = right + size_t(c * j + e) * ld + kt + c * k;
#pragma unroll
      for (int f = 0; f < c; ++f) {
        // complex: [[re, -im], [im, re]] (e = output part, f = input part)
        float x = c == 1 ? v.x : (e == f ? v.x : (e == 0 ? -v.y : v.y));
        float big = tf32_round(x);
        dst[f] = big;
        dst[nc + f] = tf32_round(x - big);
        dst[2 * nc + f] = big;
      }
    }
  }
}

// One sm90 GEMM of step `op`: exits unless the matrix needs the step; the
// last squaring writes the output (to_out), every other GEMM to_buf.
template <class Gemm>
__global__ void __launch_bounds__(Gemm::kThreads, 1) sm90_gemm_kernel(
    const __grid_constant__ typename Gemm::Params to_buf,
    const __grid_constant__ typename Gemm::Params to_out,
    int op,
    const Params* params) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  Params p = params[0];
  if (!sm90_step_runs(p, op)) {
    return;
  }
  extern __shared__ char sm90_smem[];
  typename Gemm::Kernel gemm;
  gemm(op < 0 && -1 - op == p.squarings - 1 ? to_out : to_buf, sm90_smem);
#endif
}

// ================================ dispatch ==================================

// An integer from the environment (the tuning and test knobs below), or
// `fallback` when unset.
int env_int(const char* name, int fallback) {
  const char* s = std::getenv(name);
  return s ? std::atoi(s) : fallback;
}

// Largest n that takes a fused kernel: 128 (n <= 64 one block a matrix
// where has_small_kernel and the shared memory allow, n = 65..128 the
// float forward on a cluster of two on Hopper; else the GEMM path).
// MLX_LINALG_EXT_CUDA_SMALL_MAX=k (k < 128) lowers it, to test and time the
// GEMM path on small matrices.
int small_max() {
  static int v = env_int("MLX_LINALG_EXT_CUDA_SMALL_MAX", 128);
  return v;
}

// Smallest n whose products run on tensor cores (3xTF32); below it SIMT
// FP32. 3xTF32 rounds each operand to ~22 bits (big part truncated to TF32,
// remainder rounded to TF32): its error barely depends on n, whereas FP32
// accumulation error grows with n. Measured on an H200
// (scripts/gpu_accuracy.py, 1-norms 1..300): at n = 1024 3xTF32 is 0.4-1.6x
// PyTorch's FP32 error, at n = 96..256 up to 5.6x SIMT's; and SIMT costs
// only 1.1-1.3x the time there. MLX_LINALG_EXT_CUDA_TC_MIN=k overrides it (a
// huge k: FP32 SIMT only; 64: tensor cores from n = 64, fastest).
int tc_min() {
  static int v = env_int("MLX_LINALG_EXT_CUDA_TC_MIN", 512);
  return v;
}

// Whether a batch of `batch` matrices of n x n T, n c floats per row (c = 2
// for complex64), takes the Hopper wgmma path: one matrix, n c >= 2048, n c
// % 4 == 0 (16-byte TMA rows), an sm_90 GPU and sm_90a code in this build.
// Measured on an H100: float n = 1024 takes 0.47-0.54 ms there against 0.40
// ms with mma.sync (64 output tiles for 132 SMs); complex64 n = 1024 0.99
// against 1.16 ms, float n = 2048 1.67 against 1.94 ms.
// MLX_LINALG_EXT_CUDA_SM90_MIN=k sets the least n c (a huge k: never).
bool use_sm90(int nc, int batch) {
#if defined(MLX_LINALG_EXT_SM90A)
  static int min_nc = env_int("MLX_LINALG_EXT_CUDA_SM90_MIN", 2048);
  return batch == 1 && nc >= min_nc && nc % 4 == 0 &&
      device_attr(cudaDevAttrComputeCapabilityMajor) == 9;
#else
  return false;
#endif
}

template <typename T>
void expm_gpu(
    const mx::Stream& stream,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  auto& encoder = mx::cu::get_command_encoder(stream);
  const bool frechet = inputs.size() == 2;
  const mx::array& a = inputs[0];
  const int n = a.shape(-1);
  const size_t nn = size_t(n) * n;
  const size_t batch_sz = a.size() / nn;
  if (batch_sz > size_t(1) << 30) {
    throw std::invalid_argument("[matrix_exp] Batch too large for the GPU.");
  }
  const int batch = int(batch_sz);
  // Device memory, not mx::allocator::malloc's managed memory
  // (device_buffers.cu says why; MLX_LINALG_EXT_CUDA_MANAGED_BUFFERS=1 takes
  // the managed memory, to compare).
  static const bool managed =
      env_int("MLX_LINALG_EXT_CUDA_MANAGED_BUFFERS", 0) != 0;
  auto memory = [&](size_t bytes, cuda::Use use) {
    return managed ? mx::allocator::malloc(bytes)
                   : cuda::device_data(bytes, encoder.stream(), use);
  };
  for (auto& out : outputs) {
    out.set_data(memory(out.nbytes(), cuda::Use::kResult));
  }
  const T* pa = gpu_ptr<T>(a);
  const T* pe = frechet ? gpu_ptr<T>(inputs[1]) : nullptr;
  T* px = gpu_ptr<T>(outputs[0]);
  T* pl = frechet ? gpu_ptr<T>(outputs[1]) : nullptr;

  // Every node reads the inputs and writes the outputs (and the workspace),
  // so MLX orders the nodes of this primitive one after the other.
  std::vector<mx::array> temps;
  auto declare_arrays = [&] {
    for (const auto& in : inputs) {
      encoder.set_input_array(in);
    }
    for (const auto& t : temps) {
      encoder.set_input_array(t);
      encoder.set_output_array(t);
    }
    for (const auto& out : outputs) {
      encoder.set_output_array(out);
    }
  };
  // Arguments by value: MLX takes their addresses, which must not be const.
  auto add =
      [&](CUfunction f, dim3 grid, dim3 block, uint32_t smem, auto... args) {
        declare_arrays();
        encoder.add_kernel_node_ex(
            f, grid, block, dim3(1, 1, 1), smem, args...);
      };
  // A launch with thread-block clusters goes in as a one-node child graph.
  // MLX 0.32 keys its cached graphs by node kinds without the cluster shape,
  // and cudaGraphExecUpdate keeps a node's cluster shape: a later graph with
  // the same key ran with the stale shape (seen on an H100 with a clustered
  // variant of the fused kernel: clusters of 2 stayed, and the last block of
  // an odd grid of the one-block kernel never ran). A child graph's key has
  // the shape.
  auto add_cluster = [&](const void* kernel,
                         dim3 grid,
                         dim3 block,
                         dim3 cluster,
                         uint32_t smem,
                         auto... args) {
    declare_arrays();
    void* ptrs[] = {static_cast<void*>(&args)...};
    cudaKernelNodeParams params = {};
    params.func = const_cast<void*>(kernel);
    params.gridDim = grid;
    params.blockDim = block;
    params.sharedMemBytes = smem;
    params.kernelParams = ptrs;
    cudaGraph_t graph = nullptr;
    check_cuda(cudaGraphCreate(&graph, 0), "cudaGraphCreate");
    std::unique_ptr<CUgraph_st, cudaError_t (*)(cudaGraph_t)> child(
        graph, cudaGraphDestroy);
    cudaGraphNode_t node;
    check_cuda(
        cudaGraphAddKernelNode(&node, graph, nullptr, 0, &params),
        "cudaGraphAddKernelNode");
    cudaKernelNodeAttrValue attr = {};
    attr.clusterDim.x = cluster.x;
    attr.clusterDim.y = cluster.y;
    attr.clusterDim.z = cluster.z;
    check_cuda(
        cudaGraphKernelNodeSetAttribute(
            node, cudaLaunchAttributeClusterDimension, &attr),
        "cudaGraphKernelNodeSetAttribute");
    encoder.add_graph_node(graph); // copies it
  };

  // A workspace of `bytes` in one temporary array, so that MLX keeps it
  // alive until the nodes ran.
  auto workspace = [&](size_t bytes) {
    size_t words = (bytes + 3) / 4;
    mx::Shape shape = words < (size_t(1) << 30)
        ? mx::Shape{int(words)}
        : mx::Shape{int((words + (1 << 20) - 1) >> 20), 1 << 20};
    mx::array ws(
        memory(
            size_t(4) * shape[0] * (shape.size() > 1 ? shape[1] : 1),
            cuda::Use::kWorkspace),
        shape,
        mx::float32);
    encoder.add_temporary(ws);
    temps.push_back(ws);
    return gpu_ptr<char>(ws);
  };

  const int small_n = small_size(n);
  const int smem_optin = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  // n = 65..128, float forward, Hopper: a cluster of two blocks a matrix
  // (the GEMM path is slower at every batch size: NOTES.md). Its code must
  // be sm_90 code (a build for older GPUs alone traps there).
  if constexpr (std::is_same_v<T, float>) {
    static const bool pair_code = [] {
      cudaFuncAttributes attr{};
      if (cudaFuncGetAttributes(&attr, expm_pair_kernel) != cudaSuccess) {
        cudaGetLastError(); // not sticky; MLX checks the last error later
        return false;
      }
      return attr.ptxVersion >= 90;
    }();
    if (!frechet && small_n == kPairN && n <= small_max() && pair_code &&
        device_attr(cudaDevAttrComputeCapabilityMajor) >= 9 &&
        size_t(smem_optin) >= kPairSmem + 1024) {
      cu_function(expm_pair_kernel, kPairSmem); // its shared-memory limit
      add_cluster(
          reinterpret_cast<const void*>(expm_pair_kernel),
          dim3(2 * batch),
          dim3(kPairThreads),
          dim3(2, 1, 1),
          uint32_t(kPairSmem),
          pa,
          px,
          n,
          cuda::small_plan());
      return;
    }
  }
  const size_t smem = small_smem_bytes<T>(n, frechet);
  const bool fused = n <= small_max() && smem <= size_t(smem_optin) &&
      (frechet ? has_small_kernel<T, true>(small_n)
               : has_small_kernel<T, false>(small_n));
  if (fused) {
    auto add_small = [&](CUfunction f, dim3 grid, dim3 block, uint32_t sm) {
      add(f, grid, block, sm, pa, pe, px, pl, n, cuda::small_plan());
    };
    if (frechet) {
      launch_small<T, true>(n, batch, smem, add_small);
    } else {
      launch_small<T, false>(n, batch, smem, add_small);
    }
    return;
  }

  const int sms = device_attr(cudaDevAttrMultiProcessorCount);
  // Workspace: the buffers, then (degree, s) per matrix, the column sums and
  // the barrier.
  size_t buf_bytes = nn * sizeof(T) * kBuffers * (frechet ? 2 : 1) * batch;
  size_t params_off = buf_bytes;
  size_t colsum_off = params_off + (sizeof(Params) * batch + 255) / 256 * 256;
  size_t barrier_off = colsum_off + sizeof(double) * 2 * n * batch;
  // The sm90 path's split operands (float): left n x ld, right n c x ld.
  constexpr int c = std::is_same_v<T, c64> ? 2 : 1;
  const bool on_sm90 = use_sm90(n * c, batch);
  const int split_ld = on_sm90 ? 3 * n * c * (frechet ? 2 : 1) : 0;
  size_t split_off = (barrier_off + 256 + 255) / 256 * 256;
  size_t ws_bytes = split_off + sizeof(float) * split_ld * size_t(n + n * c);
  char* base = workspace(ws_bytes);
  Work w;
  w.buf = base;
  w.params = reinterpret_cast<Params*>(base + params_off);
  double* colsum = reinterpret_cast<double*>(base + colsum_off);
  w.barrier = reinterpret_cast<unsigned int*>(base + barrier_off);
  w.n = n;
  w.batch = batch;
  w.frechet = frechet;

  // Launches over the batch go in chunks: grid.y / grid.z stop at 65535.
  constexpr int kChunk = 32767;
  auto chunks = [&](auto body) {
    for (int b0 = 0; b0 < batch; b0 += kChunk) {
      body(b0, std::min(kChunk, batch - b0));
    }
  };
  CUfunction colsum_f = cu_function(colsum_kernel<T>);
  chunks([&](int b0, int nb) {
    add(colsum_f, dim3((n + 31) / 32, nb), dim3(32, 8), 0, b0, pa, colsum, n);
  });
  add(cu_function(decide_kernel<T>), dim3(batch), dim3(256), 0, pa, colsum, w);

  // Elementwise launches: enough blocks to fill the GPU across the batch.
  int ew_blocks = int(std::clamp<size_t>(
      (nn + 255) / 256, 1, std::max<size_t>(1, size_t(sms) * 8 / batch + 1)));
  CUfunction scale_f = cu_function(scale_kernel<T>);
  chunks([&](int b0, int nb) {
    add(scale_f, dim3(ew_blocks, nb), dim3(256), 0, b0, pa, pe, w);
  });
  // The products, the approximant and the squarings, with one tile policy.
  // The products of the program and the approximant, with one tile policy.
  auto product_steps = [&](auto tile_tag) {
    using Tile = typename decltype(tile_tag)::type;
    constexpr uint32_t smem = sizeof(typename Tile::SharedStorage);
    int tiles_m = (n + Tile::kRows - 1) / Tile::kRows;
    int tiles_n = (n + Tile::kCols - 1) / Tile::kCols;
    CUfunction comb = cu_function(combine_kernel<T>);
    CUfunction prod = cu_function(product_kernel<T, Tile>, smem);
    // Product k of every matrix whose degree has one: at most five.
    for (int k = 0; k < expm::kMaxSlots - 2; ++k) {
      chunks([&](int b0, int nb) {
        add(comb, dim3(ew_blocks, nb), dim3(256), 0, b0, k, px, pl, w);
      });
      chunks([&](int b0, int nb) {
        add(prod,
            dim3(tiles_n, tiles_m, nb * (frechet ? 2 : 1)),
            dim3(Tile::kThreads),
            smem,
            b0,
            k,
            w);
      });
    }
    chunks([&](int b0, int nb) {
      add(comb, dim3(ew_blocks, nb), dim3(256), 0, b0, -1, px, pl, w);
    });
  };
  // Persistent squaring kernel for squarings first, first + 1, ...: no more
  // blocks than can be resident at once (its grid barrier needs them all).
  auto square_steps = [&](auto tile_tag, int first) {
    using Tile = typename decltype(tile_tag)::type;
    constexpr uint32_t smem = sizeof(typename Tile::SharedStorage);
    int tiles_m = (n + Tile::kRows - 1) / Tile::kRows;
    int tiles_n = (n + Tile::kCols - 1) / Tile::kCols;
    CUfunction sq = cu_function(square_kernel<T, Tile>, smem);
    static int per_sm = [] {
      int v = 0;
      check_cuda(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(
              &v, square_kernel<T, Tile>, Tile::kThreads, smem),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      return std::max(v, 1);
    }();
    long tasks = long(tiles_m) * tiles_n * (frechet ? 2 : 1) * batch;
    int grid =
        int(std::max<long>(1, std::min<long>(tasks, long(sms) * per_sm)));
    add(sq, dim3(grid), dim3(Tile::kThreads), smem, first, px, pl, w);
  };
  auto gemm_steps = [&](auto tile_tag) {
    product_steps(tile_tag);
    square_steps(tile_tag, 0);
  };
  // Hopper: products and the first squarings as split-operand TF32 wgmma
  // GEMMs (see sm90_split_kernel).
  auto sm90_steps = [&](auto gemm_tag) -> bool {
    using Gemm = typename decltype(gemm_tag)::type;
    auto aligned = [](const void* p) {
      return reinterpret_cast<uintptr_t>(p) % 16 == 0;
    };
    if (!aligned(px) || !aligned(base) || (pl && !aligned(pl))) {
      return false; // TMA needs 16-byte aligned matrices
    }
    const int nc = n * c;
    float* left = reinterpret_cast<float*>(base + split_off);
    float* right = left + size_t(split_ld) * n;
    auto buffer = [&](int i) {
      return reinterpret_cast<float*>(base + nn * sizeof(T) * i);
    };
    // (value, derivative) GEMM parameters per step; the value's term is
    // left term 1 x right term 0 for a product, 0 x 1 for a squaring.
    struct StepParams {
      typename Gemm::Params value[2], dual[2]; // [to_buf, to_out]
    };
    const int dev = current_device();
    auto make = [&](const float* a,
                    const float* b,
                    int k,
                    float* d,
                    typename Gemm::Params& out) {
      return Gemm::make_params(
          n, nc, k, a, split_ld, b, split_ld, d, nc, dev, sms, out);
    };
    const int kv = 3 * nc;
    const size_t ofs = frechet ? size_t(kv) : 0;
    std::vector<StepParams> steps(expm::kMaxSlots - 2 + kSm90Squarings);
    bool ok = true;
    // A step's GEMMs writing {to_buf, to_out}: the value's with a = a0 and
    // b = b0, K = kv; the derivative's over both terms, K = 2 kv.
    auto step_params = [&](StepParams& sp,
                           const float* a0,
                           const float* b0,
                           float* const(&val)[2],
                           float* const(&dual)[2]) {
      for (int o = 0; o < 2; ++o) {
        if (o == 1 && val[1] == val[0]) { // a product: one destination
          sp.value[1] = sp.value[0];
          sp.dual[1] = sp.dual[0];
          break;
        }
        ok = ok && make(a0, b0, kv, val[o], sp.value[o]);
        if (frechet) {
          ok = ok && make(left, right, 2 * kv, dual[o], sp.dual[o]);
        }
      }
    };
    for (int k = 0; k < expm::kMaxSlots - 2; ++k) {
      float* val = buffer(1 + k);
      float* dual = buffer(kBuffers + 1 + k);
      step_params(steps[k], left + ofs, right, {val, val}, {dual, dual});
    }
    for (int i = 0; i < kSm90Squarings; ++i) {
      const int next = 6 + (i + 1) % 2;
      step_params(
          steps[expm::kMaxSlots - 2 + i],
          left,
          right + ofs,
          {buffer(next), reinterpret_cast<float*>(px)},
          {buffer(kBuffers + next), reinterpret_cast<float*>(pl)});
    }
    if (!ok) {
      return false; // CUTLASS cannot run these shapes: the mma.sync path
    }
    CUfunction comb = cu_function(combine_kernel<T>);
    CUfunction split = cu_function(sm90_split_kernel<T>);
    cu_function(sm90_gemm_kernel<Gemm>, Gemm::kSmemBytes); // its smem limit
    const void* gemm = reinterpret_cast<const void*>(sm90_gemm_kernel<Gemm>);
    const dim3 cluster(Gemm::kClusterM, 1, 1);
    dim3 split_grid((n + 31) / 32, (n + 31) / 32, frechet ? 4 : 2);
    auto launch = [&](const typename Gemm::Params(&p)[2], int op) {
      add_cluster(
          gemm,
          Gemm::grid_of(p[0]),
          dim3(Gemm::kThreads),
          cluster,
          Gemm::kSmemBytes,
          p[0],
          p[1],
          op,
          w.params);
    };
    auto gemms = [&](int op, const StepParams& sp) {
      add(split, split_grid, dim3(32, 8), 0, op, w, left, right, split_ld);
      launch(sp.value, op);
      if (frechet) {
        launch(sp.dual, op);
      }
    };
    for (int k = 0; k < expm::kMaxSlots - 2; ++k) {
      gemms(k, steps[k]);
    }
    add(comb, dim3(ew_blocks, 1), dim3(256), 0, 0, -1, px, pl, w);
    for (int i = 0; i < kSm90Squarings; ++i) {
      gemms(-1 - i, steps[expm::kMaxSlots - 2 + i]);
    }
    return true;
  };
  if (on_sm90 && sm90_steps(std::type_identity<sm90::Tf32Gemm>{})) {
    if constexpr (std::is_same_v<T, float>) {
      square_steps(
          std::type_identity<tc::Tile<tc::FloatGemm<4>>>{}, kSm90Squarings);
    } else {
      square_steps(
          std::type_identity<tc::Tile<tc::ComplexGemm>>{}, kSm90Squarings);
    }
    return;
  }
  if (n >= tc_min()) {
    if constexpr (std::is_same_v<T, float>) {
      // 16-byte accesses need n % 4 == 0 and 16-byte aligned matrices.
      auto aligned = [](const void* p) {
        return reinterpret_cast<uintptr_t>(p) % 16 == 0;
      };
      if (n % 4 == 0 && aligned(px) && aligned(base) && (!pl || aligned(pl))) {
        gemm_steps(std::type_identity<tc::Tile<tc::FloatGemm<4>>>{});
      } else {
        gemm_steps(std::type_identity<tc::Tile<tc::FloatGemm<1>>>{});
      }
    } else {
      gemm_steps(std::type_identity<tc::Tile<tc::ComplexGemm>>{});
    }
    return;
  }
  // SIMT tiles of 128 for n >= 256 when there are at least as many as SMs.
  long big_tiles = long((n + 127) / 128) * ((n + 127) / 128) * batch;
  if constexpr (std::is_same_v<T, float>) {
    if (n >= 256 && big_tiles >= sms) {
      gemm_steps(std::type_identity<SimtTile<T, true>>{});
      return;
    }
  }
  gemm_steps(std::type_identity<SimtTile<T, false>>{});
}

void eval_gpu_dispatch(
    const mx::Stream& stream,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  switch (inputs[0].dtype()) {
    case mx::float32:
      return expm_gpu<float>(stream, inputs, outputs);
    case mx::complex64:
      return expm_gpu<c64>(stream, inputs, outputs);
    default:
      throw std::invalid_argument(
          "[matrix_exp] The GPU supports float32 and complex64 only.");
  }
}

} // namespace

void MatrixExp::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  std::vector<mx::array> outputs = {out};
  eval_gpu_dispatch(stream(), inputs, outputs);
}

void ExpmFrechet::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  eval_gpu_dispatch(stream(), inputs, outputs);
}

} // namespace mlx_linalg_ext
