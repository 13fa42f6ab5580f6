// Single large matrices on sm_90 (Hopper): one matrix (batch 1) with
// n c >= TestHooks::sm90_min (c = 2 for complex64), n c % 4 == 0, on an
// sm_90 GPU with sm_90a code in this build. Every product and the first
// kSm90Squarings squarings run as plain TF32 wgmma GEMMs (tf32_sm90.cuh) on
// operands split into TF32 parts beforehand: left rows [small | big | big],
// right (transposed) rows [big | small | big] along K = 3 n c, so one GEMM
// sums small*big + big*small + big*big ("3xTF32", small terms first).
// Complex64 runs as a real GEMM: a row of A viewed as 2n floats (re, im
// interleaved) times a right operand whose rows 2j / 2j+1 give Re / Im of
// column j, so D comes out interleaved, i.e. as complex64. With the
// derivative a second GEMM sums two such terms (K = 6 n c): dL R + L dR for
// a product, X dX + dX X for a squaring; the value GEMM reads its term as a
// sub-block of the same operands. The split kernel also forms the product
// operands from the slots (no combine launches for products here). Split
// and GEMM launches are predicated on the device like those of the GEMM
// path, whose norms, shift, refinements of s after the second and third
// products, approximant and later squarings this path shares (gemm_path.h).
#include "cuda/kernel_utils.cuh"

#include <type_traits>

#include "cuda/gemm_path.h"
#include "cuda/sm90_path.h"
#include "cuda/tf32_sm90.cuh"

namespace mlx_linalg_ext::cuda {

namespace {

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

} // namespace

bool sm90_path_applies(int nc, int batch, int min_nc) {
#if defined(MLX_LINALG_EXT_SM90A)
  return batch == 1 && nc >= min_nc && nc % 4 == 0 &&
      device_attr(cudaDevAttrComputeCapabilityMajor) == 9;
#else
  return false;
#endif
}

namespace {

// Floats per row of the split operands: the three parts of n c floats, for
// one term (two with the derivative).
template <typename T>
int split_ld(int n, bool frechet) {
  constexpr int c = std::is_same_v<T, c64> ? 2 : 1;
  return 3 * n * c * (frechet ? 2 : 1);
}

} // namespace

template <typename T>
size_t sm90_split_bytes(int n, bool frechet) {
  constexpr int c = std::is_same_v<T, c64> ? 2 : 1;
  return sizeof(float) * split_ld<T>(n, frechet) * size_t(n + n * c);
}

template <typename T>
bool launch_sm90_steps(Launcher& launcher, const GemmRun& run, T* px, T* pl) {
  using Gemm = sm90::Tf32Gemm;
  constexpr int c = std::is_same_v<T, c64> ? 2 : 1;
  const Work& w = run.work;
  const int n = w.n;
  const bool frechet = w.frechet;
  const size_t nn = size_t(n) * n;
  const int ld = split_ld<T>(n, frechet);
  char* base = run.base;
  const int sms = run.sms;
  if (!aligned16(px) || !aligned16(base) || (pl && !aligned16(pl))) {
    return false; // TMA needs 16-byte aligned matrices
  }
  const int nc = n * c;
  float* left = reinterpret_cast<float*>(run.extra);
  float* right = left + size_t(ld) * n;
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
    return Gemm::make_params(n, nc, k, a, ld, b, ld, d, nc, dev, sms, out);
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
  CUfunction split = cu_function(sm90_split_kernel<T>);
  cu_function(sm90_gemm_kernel<Gemm>, Gemm::kSmemBytes); // its smem limit
  const void* gemm = reinterpret_cast<const void*>(sm90_gemm_kernel<Gemm>);
  const dim3 cluster(Gemm::kClusterM, 1, 1);
  dim3 split_grid((n + 31) / 32, (n + 31) / 32, frechet ? 4 : 2);
  auto launch = [&](const typename Gemm::Params(&p)[2], int op) {
    launcher.add_cluster(
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
    launcher.add(split, split_grid, dim3(32, 8), 0, op, w, left, right, ld);
    launch(sp.value, op);
    if (frechet) {
      launch(sp.dual, op);
    }
  };
  for (int k = 0; k < expm::kMaxSlots - 2; ++k) {
    gemms(k, steps[k]);
    if (k == 1 || k == 2) {
      // s from B^2, B^3, then B, B^2, B^3 scaled; then from B^6, B .. B^6.
      launch_refinement<T>(launcher, run, /* sixth= */ k == 2);
    }
  }
  launch_approximant(launcher, run, px, pl);
  for (int i = 0; i < kSm90Squarings; ++i) {
    gemms(-1 - i, steps[expm::kMaxSlots - 2 + i]);
  }
  return true;
}

template size_t sm90_split_bytes<float>(int, bool);
template size_t sm90_split_bytes<c64>(int, bool);
template bool
launch_sm90_steps<float>(Launcher&, const GemmRun&, float*, float*);
template bool launch_sm90_steps<c64>(Launcher&, const GemmRun&, c64*, c64*);

} // namespace mlx_linalg_ext::cuda
