// What every kernel file of the CUDA backend shares: the complex64 element
// type and its arithmetic, the per-matrix parameters that expm::decide
// yields on the device, the combination of slots, and the host side of a
// launch (driver handles of this library's kernels, device attributes, and
// nodes added to MLX's command encoder).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mlx/backend/cuda/device.h"

// The tables of expm_numerics.h in constant memory, its functions on the
// device.
#define EXPM_TABLE static __constant__ const
#define EXPM_FN __device__ inline
#include "cuda/device_buffers.h"
#include "expm_numerics.h"

namespace mlx_linalg_ext::cuda {

namespace mx = mlx::core;

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
  return hypotf(v.x, v.y); // std::abs(std::complex<float>)
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

// An element in double (complex: both parts), for sums that must not
// overflow the element type (the trace of huge diagonals), and back.
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
// in double and rounded once.
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
// a NaN or Inf (its result is all NaN). See expm::decide.
struct Params {
  int degree;
  int squarings;
  int shift;
  int lowered; // squarings refine_squarings_sixth took away (GEMM path)
  float mu_re, mu_im; // 0 unless shift
};

__device__ inline Params
decide_params(double norm, double shifted_norm, Params p) {
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

// Whether the matrix's squarings are refined from ||B^2||, ||B^3|| after its
// first two products (expm::refine_squarings): B is left unscaled until then.
// Also true after that refinement where s is still positive: then
// expm::refine_squarings_sixth follows the third product (B^6).
__device__ inline bool refines(const Params& p) {
  return expm::refines_squarings({p.degree, p.squarings, p.shift != 0});
}

// 2^e as two float factors, so that v 2^e is exact (where it is a normal
// float) although 2^e itself may lie outside float's range: B^6 is scaled up
// by 64^d, d <= 23. The first factor is 1 where 2^e is a normal float.
struct Pow2 {
  float first, second;
};
__device__ inline Pow2 pow2_factors(int e) {
  const int h = e > 126 || e < -126 ? e / 2 : 0;
  return {float(ldexp(1.0, h)), float(ldexp(1.0, e - h))};
}
template <typename T>
__device__ inline T times(Pow2 f, T v) {
  return v * f.first * f.second;
}

// The power of B in slot 1 + k (k < 4) of the last degree: B, B^2, B^3, B^6.
__host__ __device__ constexpr int power_of_slot(int k) {
  return k == 3 ? 6 : k + 1;
}

// max that keeps a NaN (std::max would drop it).
__device__ inline double nan_max(double a, double b) {
  return (b > a || isnan(b)) ? b : a;
}

// One element of sum_{j >= 1} c[j] slot_j (+ c[0] on the diagonal when
// `identity`), accumulated in increasing j, then c[0].
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

// ------------------------------- host side ---------------------------------

// Throws "[matrix_exp] what: CUDA's message" unless err is cudaSuccess.
void check_cuda(cudaError_t err, const char* what);

int current_device();

// An attribute of the current device (cached per device).
int device_attr(cudaDeviceAttr attr);

// Whether p is 16-byte aligned (vector loads, TMA).
inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
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

// Adds the kernel launches of one evaluation to MLX's command encoder. Every
// node reads the inputs and writes the outputs and the workspace, so MLX
// orders the nodes of one evaluation one after the other.
class Launcher {
 public:
  Launcher(
      mx::cu::CommandEncoder& encoder,
      const std::vector<mx::array>& inputs,
      const std::vector<mx::array>& outputs)
      : encoder_(encoder), inputs_(inputs), outputs_(outputs) {}

  // Arguments by value: MLX takes their addresses, which must not be const.
  template <typename... Args>
  void add(CUfunction f, dim3 grid, dim3 block, uint32_t smem, Args... args) {
    declare_arrays();
    encoder_.add_kernel_node_ex(f, grid, block, dim3(1, 1, 1), smem, args...);
  }

  // A launch with thread-block clusters, as a one-node child graph: MLX
  // 0.32 keys its cached graphs by node kinds without the cluster shape, and
  // cudaGraphExecUpdate keeps a node's cluster shape, so a later graph with
  // the same key would run with a stale shape. A child graph's key has it.
  template <typename... Args>
  void add_cluster(
      const void* kernel,
      dim3 grid,
      dim3 block,
      dim3 cluster,
      uint32_t smem,
      Args... args) {
    void* ptrs[] = {static_cast<void*>(&args)...};
    add_cluster_node(kernel, grid, block, cluster, smem, ptrs);
  }

  // `bytes` of device memory on the encoder's stream (device_buffers.h).
  mx::allocator::Data memory(size_t bytes, Use use);

  // A workspace of `bytes` in one temporary array, so that MLX keeps it
  // alive until the nodes ran.
  char* workspace(size_t bytes);

 private:
  void declare_arrays();
  void add_cluster_node(
      const void* kernel,
      dim3 grid,
      dim3 block,
      dim3 cluster,
      uint32_t smem,
      void** args);

  mx::cu::CommandEncoder& encoder_;
  const std::vector<mx::array>& inputs_;
  const std::vector<mx::array>& outputs_;
  std::vector<mx::array> temps_;
};

} // namespace mlx_linalg_ext::cuda
