// The building blocks of the fused small-matrix kernels (fused_kernel.cu,
// pair_kernel.cu): the padded shared-memory layout, the product of two
// shared-memory matrices (FP32 or complex64 FMAs, or FP64 tensor cores for
// float on sm_90), and the elementwise passes of the product program.
#pragma once

#include <type_traits>

#include "cuda/kernel_utils.cuh"
#include "cuda/small_plan.h"

namespace mlx_linalg_ext::cuda {

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
// an SM.

constexpr int kSmallBuffers = kPlanBuffers;

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
// shared memory least per FMA, and the products are bound by shared-memory
// wavefronts), else fewer rows.
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
// floats put the rows of a tensor-core fragment in the same banks. Bit 4
// of the swizzle (row parity) separates the rows g, g + 1 of one
// quarter-warp's 16-byte L loads; bit 3 (bits 2 and 3 of the row) with it
// gives the 4 R rows 4t + .. of one half-warp's 8-byte loads 4 different
// 8-float groups (see SmallMma). It keeps 4-float vectors whole. N >= 64
// only: at N = 32 the address arithmetic costs more than the conflicts
// (NOTES.md). Elementwise passes are unaffected (every buffer has the same
// layout); what needs (i, j) maps through small_at / small_col.
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
// 6 values per 8 FMAs at N = 16 and is bound by shared-memory wavefronts.
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

// A linear combination of slots of the fused kernel, elementwise over the
// padded matrices: sum_{j >= 1} c[j] slot_j (+ c[0] I when `identity`), in
// increasing j, then c[0]. Coefficients and slot offsets go to
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
  // consecutive ones share a row). One element at a time they would be
  // latency bound: a thread's loads of the next element wait behind its
  // stores of the last (the compiler cannot tell the slots from the
  // operands). Fewer where a block has fewer elements
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

// Overscaling: the last degree's slots 1 + k, k < count (B, B^2, B^3, B^6;
// and their derivatives) times 2^(p_k e) for the powers p = 1, 2, 3, 6,
// which is exact. expm::refine_squarings: count 3, e = -s (slots formed
// unscaled); expm::refine_squarings_sixth: count 4, e = s - s' (the
// products are then those of B 2^-s'). The block holds rows row0 .. row0 +
// kHeld - 1 (see SmallCombo). No barrier.
template <typename T, int N, bool kFrechet, int kHeld = N>
__device__ inline void
small_scale_powers(const SmallPlan& plan, int e, int count, T* buf, T* dbuf) {
  constexpr int kMat = kHeld * SmallShape<T, N>::kLd;
  const signed char* slot = plan.slot[expm::kLastDegree];
  // One slot at a time: few registers live, next to the products'.
  for (int k = 0; k < count; ++k) {
    const Pow2 f = pow2_factors(power_of_slot(k) * e);
    const int off = slot[1 + k] * kMat;
    for (int idx = threadIdx.x; idx < kMat; idx += SmallShape<T, N>::kThreads) {
      buf[off + idx] = times(f, buf[off + idx]);
      if constexpr (kFrechet) {
        dbuf[off + idx] = times(f, dbuf[off + idx]);
      }
    }
  }
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

} // namespace mlx_linalg_ext::cuda
