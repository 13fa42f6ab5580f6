// CUDA backend of MatrixExp and ExpmFrechet. Mirrors csrc/cpu/matrix_exp.cpp:
// per matrix, the 1-norm (accumulated in double) picks the Taylor degree and
// the number of squarings s (expm_numerics.h); the product program of that
// degree runs, then s squarings; the Frechet derivative runs alongside as the
// dual evaluation (dP = dL R + L dR, d(X^2) = X dX + dX X). A matrix with a
// NaN or Inf becomes all NaN. Nothing is read back to the host: degree and s
// live on the device.
//
// Two paths:
// - small n: one fused kernel for the whole batch, one block per matrix that
//   holds everything in shared memory and runs norm, degree, product program
//   and its own squaring loop (one launch for any batch);
// - larger n: a parameter kernel writes (degree, s) per matrix to a device
//   buffer; the combine and GEMM launches of the product program read it and
//   skip matrices that do not need their step (5 predicated steps at most);
//   the squarings run in one persistent kernel that loops on the device up
//   to the largest s of the batch, with a grid-wide barrier between squarings
//   (its grid never exceeds what is co-resident on the GPU).
// All products are full FP32 (SIMT FMA), never TF32.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "mlx/allocator.h"
#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/utils.h"

#define EXPM_TABLE static __constant__ const
#define EXPM_FN __device__ inline
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

__device__ inline c64 operator+(c64 a, c64 b) {
  return {a.x + b.x, a.y + b.y};
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

// ------------------------------ shared numerics ----------------------------

// (degree index, s) of one matrix from its 1-norm; degree -1 marks a matrix
// with a NaN or Inf (its result is all NaN).
struct Params {
  int degree;
  int squarings;
};

__device__ inline Params decide(double norm) {
  if (!isfinite(norm)) {
    return {-1, 0};
  }
  int d = expm::choose_degree(norm, expm::kSingle);
  int s = d == expm::kLastDegree ? expm::square_steps(norm, expm::kSingle) : 0;
  return {d, s};
}

// max that keeps a NaN (std::max would drop it), as one_norm on the CPU.
__device__ inline double nan_max(double a, double b) {
  return (b > a || isnan(b)) ? b : a;
}

// The slot that a combination sum_j c[j] slot_j is on its own (one nonzero
// coefficient, equal to 1, not the identity), or -1. As Evaluator::combine.
__device__ inline int lone_slot(const double* c, int count, bool identity) {
  int lone = -1;
  for (int j = identity ? 0 : 1; j < count; ++j) {
    if (c[j] != 0) {
      if (lone != -1 || j == 0 || c[j] != 1) {
        return -1;
      }
      lone = j;
    }
  }
  return lone;
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

void check_cu(CUresult err, const char* what) {
  if (err != CUDA_SUCCESS) {
    const char* msg = nullptr;
    cuGetErrorString(err, &msg);
    throw std::runtime_error(
        std::string("[matrix_exp] ") + what + ": " + (msg ? msg : "?"));
  }
}

// The driver handle of a kernel of this extension: libmlx has its own static
// CUDA runtime, which does not know this library's kernels.
template <typename Kernel>
CUfunction cu_function(Kernel kernel) {
  cudaFunction_t f;
  check_cuda(
      cudaGetFuncBySymbol(&f, reinterpret_cast<const void*>(kernel)),
      "cudaGetFuncBySymbol");
  return reinterpret_cast<CUfunction>(f);
}

int device_attr(cudaDeviceAttr attr) {
  int dev = 0, v = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&v, attr, dev), "cudaDeviceGetAttribute");
  return v;
}

// ============================ small matrices ================================
//
// One block per matrix; every matrix of the product program lives in shared
// memory: slots A, P2..P6, operands L, R (and the same again for the
// derivative). Thread t owns elements t, t + blockDim, ... of each n x n
// result; a product element reads a row of L (a broadcast within a row) and
// a column of R (consecutive threads, consecutive banks).

constexpr int kSmallBuffers = 8; // A, P2..P6, L, R

template <typename T>
size_t small_smem_bytes(int n, bool frechet) {
  size_t nn = size_t(n) * n;
  size_t bytes = nn * sizeof(T) * kSmallBuffers * (frechet ? 2 : 1);
  bytes = (bytes + 15) / 16 * 16;
  return bytes + sizeof(double) * n + 16;
}

// C = L R (+ L2 R2), all n x n in shared memory, then a block barrier.
template <typename T>
__device__ inline void small_gemm(
    const T* l,
    const T* r,
    const T* l2,
    const T* r2,
    T* c,
    int n) {
  int nn = n * n;
  for (int idx = threadIdx.x; idx < nn; idx += blockDim.x) {
    int i = idx / n, j = idx - i * n;
    const T* lr = l + i * n;
    T acc = real_to<T>(0.0f);
    for (int k = 0; k < n; ++k) {
      mac(acc, lr[k], r[k * n + j]);
    }
    if (l2) {
      const T* lr2 = l2 + i * n;
      for (int k = 0; k < n; ++k) {
        mac(acc, lr2[k], r2[k * n + j]);
      }
    }
    c[idx] = acc;
  }
}

// The combination sum_j c[j] slot_j as an operand: a slot itself when it is
// alone, else written into `scratch`. No barrier.
template <typename T>
__device__ inline const T* small_operand(
    const double* c,
    int count,
    T* const* slot,
    bool identity,
    T* scratch,
    int n) {
  int lone = lone_slot(c, count, identity);
  if (lone >= 1) {
    return slot[lone];
  }
  int nn = n * n;
  for (int idx = threadIdx.x; idx < nn; idx += blockDim.x) {
    int i = idx / n;
    scratch[idx] = combine_elem<T>(
        c, count, identity, idx == i * n + i, [&](int j) {
          return slot[j][idx];
        });
  }
  return scratch;
}

template <typename T, bool kFrechet>
__global__ void expm_small_kernel(
    const T* __restrict__ a,
    const T* __restrict__ e,
    T* __restrict__ x_out,
    T* __restrict__ l_out,
    int n) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nn = n * n;
  const size_t off = size_t(blockIdx.x) * nn;
  T* buf = reinterpret_cast<T*>(smem_raw);
  constexpr int nbuf = kSmallBuffers * (kFrechet ? 2 : 1);
  size_t tbytes = (size_t(nn) * sizeof(T) * nbuf + 15) / 16 * 16;
  double* colsum = reinterpret_cast<double*>(smem_raw + tbytes);
  __shared__ Params params;

  // Slots: 0 = identity (never read as a buffer), 1 = A, 2..6 = products.
  T* slot[expm::kMaxSlots];
  T* dslot[expm::kMaxSlots];
  slot[0] = dslot[0] = nullptr;
  for (int j = 1; j < expm::kMaxSlots; ++j) {
    slot[j] = buf + (j - 1) * nn;
    dslot[j] = buf + (kSmallBuffers + j - 1) * nn;
  }
  T* left = buf + 6 * nn;
  T* right = buf + 7 * nn;
  T* dleft = buf + (kSmallBuffers + 6) * nn;
  T* dright = buf + (kSmallBuffers + 7) * nn;

  for (int idx = threadIdx.x; idx < nn; idx += blockDim.x) {
    slot[1][idx] = a[off + idx];
    if constexpr (kFrechet) {
      dslot[1][idx] = e[off + idx];
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    double sum = 0.0;
    for (int i = 0; i < n; ++i) {
      sum += double(abs_of(slot[1][i * n + j]));
    }
    colsum[j] = sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double norm = 0.0;
    for (int j = 0; j < n; ++j) {
      norm = nan_max(norm, colsum[j]);
    }
    params = decide(norm);
  }
  __syncthreads();
  const int d = params.degree;
  const int s = params.squarings;
  if (d < 0) {
    for (int idx = threadIdx.x; idx < nn; idx += blockDim.x) {
      x_out[off + idx] = nan_of<T>();
      if constexpr (kFrechet) {
        l_out[off + idx] = nan_of<T>();
      }
    }
    return;
  }
  if (s > 0) {
    float f = float(ldexp(1.0, -s)); // exact power of two
    for (int idx = threadIdx.x; idx < nn; idx += blockDim.x) {
      slot[1][idx] = slot[1][idx] * f;
      if constexpr (kFrechet) {
        dslot[1][idx] = dslot[1][idx] * f;
      }
    }
    __syncthreads();
  }

  for (int k = 0; k < expm::kNumProducts[d]; ++k) {
    int step = expm::kFirstStep[d] + k;
    int count = 2 + k;
    const double* cl = expm::kStepLeft[step];
    const double* cr = expm::kStepRight[step];
    const T* l = small_operand(cl, count, slot, true, left, n);
    const T* r = small_operand(cr, count, slot, true, right, n);
    const T* dl = nullptr;
    const T* dr = nullptr;
    if constexpr (kFrechet) {
      dl = small_operand(cl, count, dslot, false, dleft, n);
      dr = small_operand(cr, count, dslot, false, dright, n);
    }
    __syncthreads();
    small_gemm<T>(l, r, nullptr, nullptr, slot[2 + k], n);
    if constexpr (kFrechet) {
      small_gemm<T>(dl, r, l, dr, dslot[2 + k], n);
    }
    __syncthreads();
  }

  // The approximant into `left`, then s squarings ping-ponging with `right`.
  const int count = expm::num_slots(d);
  const double* cf = expm::kFinal[d];
  for (int idx = threadIdx.x; idx < nn; idx += blockDim.x) {
    bool diag = idx % (n + 1) == 0;
    left[idx] = combine_elem<T>(
        cf, count, true, diag, [&](int j) { return slot[j][idx]; });
    if constexpr (kFrechet) {
      dleft[idx] = combine_elem<T>(
          cf, count, false, diag, [&](int j) { return dslot[j][idx]; });
    }
  }
  __syncthreads();
  T* x = left;
  T* y = right;
  T* dx = dleft;
  T* dy = dright;
  for (int i = 0; i < s; ++i) {
    if constexpr (kFrechet) {
      small_gemm<T>(x, dx, dx, x, dy, n);
    }
    small_gemm<T>(x, x, nullptr, nullptr, y, n);
    __syncthreads();
    T* t = x;
    x = y;
    y = t;
    if constexpr (kFrechet) {
      t = dx;
      dx = dy;
      dy = t;
    }
  }
  for (int idx = threadIdx.x; idx < nn; idx += blockDim.x) {
    x_out[off + idx] = x[idx];
    if constexpr (kFrechet) {
      l_out[off + idx] = dx[idx];
    }
  }
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

// Column sums of |A| in double: block (32 columns x 8 row groups).
template <typename T>
__global__ void colsum_kernel(const T* __restrict__ a, double* colsum, int n) {
  __shared__ double part[8][33];
  int b = blockIdx.y;
  int j = blockIdx.x * 32 + threadIdx.x;
  const T* m = a + size_t(b) * n * n;
  double sum = 0.0;
  if (j < n) {
    for (int i = threadIdx.y; i < n; i += 8) {
      sum += double(abs_of(m[size_t(i) * n + j]));
    }
  }
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    for (int r = 1; r < 8; ++r) {
      sum += part[r][threadIdx.x];
    }
    colsum[size_t(b) * n + j] = sum;
  }
}

// Norm -> (degree, s) per matrix; block 0 also clears the grid barrier.
__global__ void decide_kernel(const double* colsum, Work w) {
  __shared__ double part[256];
  int b = blockIdx.x;
  double norm = 0.0;
  for (int j = threadIdx.x; j < w.n; j += blockDim.x) {
    norm = nan_max(norm, colsum[size_t(b) * w.n + j]);
  }
  part[threadIdx.x] = norm;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) {
      part[threadIdx.x] = nan_max(part[threadIdx.x], part[threadIdx.x + h]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    w.params[b] = decide(part[0]);
    if (b == 0) {
      w.barrier[0] = 0;
      w.barrier[1] = 0;
    }
  }
}

// Slot 1 (and its derivative) = A * 2^-s.
template <typename T>
__global__ void scale_kernel(const T* a, const T* e, Work w) {
  size_t nn = size_t(w.n) * w.n;
  int b = blockIdx.y;
  Params p = w.params[b];
  if (p.degree < 0) {
    return;
  }
  float f = float(ldexp(1.0, -p.squarings));
  T* x = wbuf<T>(w, b, 0);
  T* dx = wbuf<T>(w, b, kBuffers);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < nn;
       i += size_t(gridDim.x) * blockDim.x) {
    x[i] = a[nn * b + i] * f;
    if (w.frechet) {
      dx[i] = e[nn * b + i] * f;
    }
  }
}

// The operands of product k (k >= 0), written where they are no lone slot;
// k = -1: the approximant (into L / dL, or into the outputs when s = 0, and
// NaN for a matrix with NaN/Inf).
template <typename T>
__global__ void combine_kernel(int k, T* x_out, T* l_out, Work w) {
  int n = w.n;
  size_t nn = size_t(n) * n;
  int b = blockIdx.y;
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
    for (size_t i = i0; i < nn; i += stride) {
      bool diag = i % (n + 1) == 0;
      x[i] = combine_elem<T>(
          c, count, true, diag, [&](int j) { return slot(j)[i]; });
      if (w.frechet) {
        dx[i] = combine_elem<T>(
            c, count, false, diag, [&](int j) { return dslot(j)[i]; });
      }
    }
    return;
  }
  if (p.degree < 0 || k >= expm::kNumProducts[p.degree]) {
    return;
  }
  int step = expm::kFirstStep[p.degree] + k;
  int count = 2 + k;
  for (int side = 0; side < 2; ++side) {
    const double* c = side == 0 ? expm::kStepLeft[step] : expm::kStepRight[step];
    for (int dual = 0; dual < (w.frechet ? 2 : 1); ++dual) {
      bool identity = dual == 0;
      if (lone_slot(c, count, identity) >= 1) {
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

constexpr int kTile = 64;
constexpr int kTileK = 16;
constexpr int kGemmThreads = 256; // 16 x 16, each 4 x 4 outputs

template <typename T>
struct GemmSmem {
  T a[kTileK][kTile + 1];
  T b[kTileK][kTile];
};

template <typename T>
__device__ inline void gemm_accumulate(
    const T* __restrict__ A,
    const T* __restrict__ B,
    int n,
    int row0,
    int col0,
    GemmSmem<T>& sm,
    T (&acc)[4][4]) {
  int tid = threadIdx.x;
  int tx = tid % 16, ty = tid / 16;
  for (int k0 = 0; k0 < n; k0 += kTileK) {
#pragma unroll
    for (int q = 0; q < kTile * kTileK / kGemmThreads; ++q) {
      int e = tid + q * kGemmThreads;
      int r = e / kTileK, c = e % kTileK;
      int gr = row0 + r, gc = k0 + c;
      sm.a[c][r] = (gr < n && gc < n) ? A[size_t(gr) * n + gc] : real_to<T>(0.0f);
      r = e / kTile;
      c = e % kTile;
      gr = k0 + r;
      gc = col0 + c;
      sm.b[r][c] = (gr < n && gc < n) ? B[size_t(gr) * n + gc] : real_to<T>(0.0f);
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

template <typename T>
__device__ inline void gemm_tile(
    const T* A1,
    const T* B1,
    const T* A2,
    const T* B2,
    T* C,
    int n,
    int row0,
    int col0,
    GemmSmem<T>& sm) {
  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      acc[i][j] = real_to<T>(0.0f);
    }
  }
  gemm_accumulate(A1, B1, n, row0, col0, sm, acc);
  if (A2) {
    gemm_accumulate(A2, B2, n, row0, col0, sm, acc);
  }
  int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int r = row0 + ty + 16 * i, c = col0 + tx + 16 * j;
      if (r < n && c < n) {
        C[size_t(r) * n + c] = acc[i][j];
      }
    }
  }
}

// Product k of the program: grid (tiles, tiles, batch x (1 or 2)); z odd is
// the derivative dP = dL R + L dR. Matrices whose degree has no product k exit.
template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    product_kernel(int k, Work w) {
  __shared__ GemmSmem<T> sm;
  int dual = w.frechet ? blockIdx.z % 2 : 0;
  int b = w.frechet ? blockIdx.z / 2 : blockIdx.z;
  Params p = w.params[b];
  if (p.degree < 0 || k >= expm::kNumProducts[p.degree]) {
    return;
  }
  int step = expm::kFirstStep[p.degree] + k;
  int count = 2 + k;
  auto operand = [&](const double* c, int side, int d) -> const T* {
    int lone = lone_slot(c, count, d == 0);
    return wbuf<T>(w, b, d * kBuffers + (lone >= 1 ? lone - 1 : 6 + side));
  };
  const T* l = operand(expm::kStepLeft[step], 0, 0);
  const T* r = operand(expm::kStepRight[step], 1, 0);
  int row0 = blockIdx.y * kTile, col0 = blockIdx.x * kTile;
  if (dual == 0) {
    gemm_tile<T>(l, r, nullptr, nullptr, wbuf<T>(w, b, 2 + k - 1), w.n, row0,
                 col0, sm);
  } else {
    const T* dl = operand(expm::kStepLeft[step], 0, 1);
    const T* dr = operand(expm::kStepRight[step], 1, 1);
    gemm_tile<T>(dl, r, l, dr, wbuf<T>(w, b, kBuffers + 2 + k - 1), w.n, row0,
                 col0, sm);
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
template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    square_kernel(T* x_out, T* l_out, Work w) {
  __shared__ GemmSmem<T> sm;
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
  const int tiles = (w.n + kTile - 1) / kTile;
  const int per_matrix = tiles * tiles * (w.frechet ? 2 : 1);
  const long total = long(per_matrix) * w.batch;
  const size_t nn = size_t(w.n) * w.n;
  for (int i = 0; i < smax; ++i) {
    for (long t = blockIdx.x; t < total; t += gridDim.x) {
      int b = int(t / per_matrix);
      int r = int(t % per_matrix);
      int s = w.params[b].squarings;
      if (i >= s) {
        continue;
      }
      int dual = w.frechet ? r % 2 : 0;
      int tile = w.frechet ? r / 2 : r;
      int row0 = (tile / tiles) * kTile, col0 = (tile % tiles) * kTile;
      bool last = i == s - 1;
      const T* x = wbuf<T>(w, b, 6 + (i % 2));
      if (dual == 0) {
        T* y = last ? x_out + nn * b : wbuf<T>(w, b, 6 + (i + 1) % 2);
        gemm_tile<T>(x, x, nullptr, nullptr, y, w.n, row0, col0, sm);
      } else {
        const T* dx = wbuf<T>(w, b, kBuffers + 6 + (i % 2));
        T* dy = last ? l_out + nn * b : wbuf<T>(w, b, kBuffers + 6 + (i + 1) % 2);
        gemm_tile<T>(x, dx, dx, x, dy, w.n, row0, col0, sm);
      }
    }
    if (i + 1 < smax) {
      grid_barrier(w.barrier);
    }
  }
}

// ================================ dispatch ==================================

// Largest n that takes the fused one-block path (shared memory permitting);
// MLX_LINALG_EXT_CUDA_SMALL_MAX overrides it (for measurements).
int small_max() {
  static int v = [] {
    const char* s = std::getenv("MLX_LINALG_EXT_CUDA_SMALL_MAX");
    return s ? std::atoi(s) : 32;
  }();
  return v;
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
  if (batch_sz > size_t(65535) * 1024) {
    throw std::invalid_argument("[matrix_exp] Batch too large for the GPU.");
  }
  const int batch = int(batch_sz);
  for (auto& out : outputs) {
    out.set_data(mx::allocator::malloc(out.nbytes()));
  }
  const T* pa = gpu_ptr<T>(a);
  const T* pe = frechet ? gpu_ptr<T>(inputs[1]) : nullptr;
  T* px = gpu_ptr<T>(outputs[0]);
  T* pl = frechet ? gpu_ptr<T>(outputs[1]) : nullptr;

  // Every node reads the inputs and writes the outputs (and the workspace),
  // so MLX orders the nodes of this primitive one after the other.
  std::vector<mx::array> temps;
  auto add = [&](CUfunction f, dim3 grid, dim3 block, uint32_t smem,
                 auto&&... args) {
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
    encoder.add_kernel_node_ex(f, grid, block, dim3(1, 1, 1), smem, args...);
  };

  size_t smem = small_smem_bytes<T>(n, frechet);
  int smem_optin = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  if (n <= small_max() && smem <= size_t(smem_optin)) {
    CUfunction f = frechet ? cu_function(expm_small_kernel<T, true>)
                           : cu_function(expm_small_kernel<T, false>);
    check_cu(
        cuFuncSetAttribute(
            f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(smem)),
        "cuFuncSetAttribute");
    int threads = std::min<int>(1024, std::max<int>(32, (nn + 31) / 32 * 32));
    add(f, dim3(batch), dim3(threads), uint32_t(smem), pa, pe, px, pl, n);
    return;
  }

  // Workspace: the buffers, then (degree, s) per matrix, the column sums and
  // the barrier; one temporary array so that MLX keeps it alive.
  size_t buf_bytes = nn * sizeof(T) * kBuffers * (frechet ? 2 : 1) * batch;
  size_t params_off = buf_bytes;
  size_t colsum_off = params_off + (sizeof(Params) * batch + 255) / 256 * 256;
  size_t barrier_off = colsum_off + sizeof(double) * n * batch;
  size_t ws_bytes = barrier_off + 256;
  size_t ws_words = (ws_bytes + 3) / 4;
  mx::Shape ws_shape =
      ws_words < (size_t(1) << 30)
      ? mx::Shape{int(ws_words)}
      : mx::Shape{int((ws_words + (1 << 20) - 1) >> 20), 1 << 20};
  mx::array ws(
      mx::allocator::malloc(size_t(4) * ws_shape[0] *
                            (ws_shape.size() > 1 ? ws_shape[1] : 1)),
      ws_shape,
      mx::float32);
  encoder.add_temporary(ws);
  temps.push_back(ws);
  char* base = gpu_ptr<char>(ws);
  Work w;
  w.buf = base;
  w.params = reinterpret_cast<Params*>(base + params_off);
  double* colsum = reinterpret_cast<double*>(base + colsum_off);
  w.barrier = reinterpret_cast<unsigned int*>(base + barrier_off);
  w.n = n;
  w.batch = batch;
  w.frechet = frechet;

  add(cu_function(colsum_kernel<T>), dim3((n + 31) / 32, batch), dim3(32, 8),
      0, pa, colsum, n);
  add(cu_function(decide_kernel), dim3(batch), dim3(256), 0, colsum, w);

  int sms = device_attr(cudaDevAttrMultiProcessorCount);
  // Elementwise launches: enough blocks to fill the GPU across the batch.
  int ew_blocks = int(std::clamp<size_t>(
      (nn + 255) / 256, 1, std::max<size_t>(1, size_t(sms) * 8 / batch + 1)));
  add(cu_function(scale_kernel<T>), dim3(ew_blocks, batch), dim3(256), 0, pa,
      pe, w);
  int tiles = (n + kTile - 1) / kTile;
  CUfunction comb = cu_function(combine_kernel<T>);
  CUfunction prod = cu_function(product_kernel<T>);
  for (int k = 0; k < expm::kNumSteps; ++k) {
    if (k >= 5) {
      break; // at most five products (degree 18)
    }
    add(comb, dim3(ew_blocks, batch), dim3(256), 0, k, px, pl, w);
    add(prod, dim3(tiles, tiles, batch * (frechet ? 2 : 1)),
        dim3(kGemmThreads), 0, k, w);
  }
  add(comb, dim3(ew_blocks, batch), dim3(256), 0, -1, px, pl, w);

  // Persistent squaring kernel: no more blocks than can be resident at once.
  CUfunction sq = cu_function(square_kernel<T>);
  int per_sm = 0;
  check_cu(
      cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, sq, kGemmThreads, 0),
      "cuOccupancyMaxActiveBlocksPerMultiprocessor");
  long tasks = long(tiles) * tiles * (frechet ? 2 : 1) * batch;
  int grid = int(std::max<long>(1, std::min<long>(tasks, long(sms) * per_sm)));
  add(sq, dim3(grid), dim3(kGemmThreads), 0, px, pl, w);
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
