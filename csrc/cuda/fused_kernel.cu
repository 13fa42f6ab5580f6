// The fused kernel for n <= 64 (32 for complex64 with the derivative): one
// block per matrix holds A (and E) and every matrix of the product program
// in shared memory and runs the norms, expm::decide, the products, the
// approximant and its own squaring loop; one launch serves any batch.
// matrix_exp.cu chooses it for every n it covers whose buffers fit the
// device's shared memory (test_hooks.h can send small n to the GEMM path).
#include "cuda/kernel_utils.cuh"

#include "cuda/fused_common.cuh"
#include "cuda/fused_kernel.h"

namespace mlx_linalg_ext::cuda {

namespace {

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

// The 1-norm of the n x n block of buffer m, for warp 0 (every lane gets
// it): lane j sums columns j, j + 32, ... in double in row order (the
// padding adds exact zeros), shuffles take the maximum (NaN kept).
template <typename T, int N>
__device__ inline double small_norm1(const T* m, int n) {
  double norm = 0.0;
#pragma unroll
  for (int j0 = 0; j0 < N; j0 += 32) {
    const int j = j0 + threadIdx.x;
    double sum = 0.0;
#pragma unroll 16
    for (int i = 0; i < N; ++i) {
      T v = j < N ? m[small_at<T, N>(i, j)] : real_to<T>(0.0f);
      sum += double(abs_of(v));
    }
    if (j < n) {
      norm = nan_max(norm, sum);
    }
  }
#pragma unroll
  for (int m = 16; m > 0; m /= 2) {
    norm = nan_max(norm, __shfl_xor_sync(0xffffffffu, norm, m));
  }
  return norm;
}

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
  __shared__ int refined_squarings;
  __shared__ double power_norms[2]; // ||B^2||, ||B^3|| at the refined s

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
  // The 1-norms of A and A - mu I over the n x n block in warp 0: mu =
  // tr(A)/n summed in double in order (every lane forms it), lane j
  // sums columns j, j + 32, ... in double in row order, shuffles take the
  // maxima (NaN kept), lane 0 decides. The loops run over the padded N x N
  // matrix without branches (so that the loads overlap): the padding adds
  // exact zeros.
  if (threadIdx.x < 32) {
    double2 tr = make_double2(0.0, 0.0);
#pragma unroll 16
    for (int i = 0; i < N; ++i) {
      tr = add2(tr, widen(buf[small_at<T, N>(i, i)]));
    }
    const T mu = narrow<T>(make_double2(tr.x / n, tr.y / n));
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
      shared_params = decide_params(norm, shifted, p);
    }
  }
  __syncthreads();
  const Params params = shared_params;
  const int d = params.degree;
  int s = params.squarings; // refined after B^2, B^3, B^6 where refines()
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
  // B = A - mu I (the shift only on the n x n diagonal), unscaled: only
  // the last degree has squarings, and it scales B, B^2, B^3 (and E) once
  // s is refined after its first two products, and B .. B^6 again after the
  // third.
  const bool refine = refines(params);
  if (shift) {
    for (int idx = threadIdx.x; idx < kMat; idx += kThreads) {
      if (small_diagonal<T, N>(idx) && idx / LD < n) {
        buf[idx] = buf[idx] - mu;
      }
    }
  }
  // Every thread has read the parameters (in buffer 1) before buffer 1 is
  // written.
  __syncthreads();

  const signed char* slot = plan.slot[d];
  for (int k = 0; k < expm::kNumProducts[d]; ++k) {
    const int step = expm::kFirstStep[d] + k;
    if (small_form_operands<T, N, kFrechet>(plan, d, step, buf, dbuf)) {
      __syncthreads();
    }
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
    if (refine && (k == 1 || (k == 2 && s > 0))) {
      // Overscaling. After B^2, B^3 (of the unscaled B): s from their
      // 1-norms, then B, B^2, B^3 scaled by 2^-s, 4^-s, 8^-s (the
      // derivative's slots alike: dP2 4^-s and dP3 8^-s are the products of
      // E 2^-s and B 2^-s). After B^6 (of the scaled B^3): s' <= s, and B ..
      // B^6 and their derivatives scaled up by 2^(s - s'), ...
      if (threadIdx.x < 32) {
        const double norm =
            small_norm1<T, N>(buf + slot[k == 1 ? 2 : 4] * kMat, n);
        const double norm3 =
            k == 1 ? small_norm1<T, N>(buf + slot[3] * kMat, n) : 0.0;
        if (threadIdx.x == 0) {
          if (k == 1) {
            const int r = expm::refine_squarings(norm, norm3, s, expm::kSingle);
            refined_squarings = r;
            power_norms[0] = ldexp(norm, -2 * r);
            power_norms[1] = ldexp(norm3, -3 * r);
          } else {
            refined_squarings = expm::refine_squarings_sixth(
                power_norms[0], power_norms[1], norm, s, expm::kSingle);
          }
        }
      }
      __syncthreads();
      const int r = refined_squarings;
      if (k == 1 || r < s) {
        small_scale_powers<T, N, kFrechet>(
            plan, k == 1 ? -r : s - r, k == 1 ? 3 : 4, buf, dbuf);
        __syncthreads();
      }
      s = r;
    }
  }

  // The approximant, then s squarings in place.
  const float f = float(ldexp(1.0, -s)); // exact power of two
  const int fin =
      small_approximant<T, N, kFrechet>(plan, d, shift, mu * f, buf, dbuf);
  __syncthreads();
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
  }
  // The n x n corner out; with n = N the division by the row length is a
  // shift, not an integer division by a runtime value.
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
}

// Whether the one-block fused kernel exists for padded size N: up to 64,
// all but complex64 with the derivative at N = 64 (twice 6 buffers of 64 x
// 68 complex64, 418 KB). (N = 128: expm_pair_kernel, the float forward.)
template <typename T, bool kFrechet>
constexpr bool has_small_kernel(int N) {
  return N <= 32 || (N == 64 && !(std::is_same_v<T, c64> && kFrechet));
}

} // namespace

template <typename T>
size_t fused_smem_bytes(int n, bool frechet) {
  const int N = small_size(n);
  const bool exists =
      frechet ? has_small_kernel<T, true>(N) : has_small_kernel<T, false>(N);
  return exists ? small_smem_bytes<T>(n, frechet) : 0;
}

namespace {

template <typename T, bool kFrechet, typename Add>
void launch_small(int n, int batch, size_t smem, const Add& add) {
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
    case 64: // the caller checked fused_smem_bytes against the device
      if constexpr (has_small_kernel<T, kFrechet>(64)) {
        return go(
            expm_small_kernel<T, kFrechet, 64>, SmallShape<T, 64>::kThreads);
      }
      break;
  }
  throw std::logic_error("[matrix_exp] No fused kernel for this size.");
}

} // namespace

template <typename T>
void launch_fused(
    Launcher& launcher,
    const T* a,
    const T* e,
    T* x,
    T* l,
    int n,
    int batch,
    size_t smem) {
  auto add = [&](CUfunction f, dim3 grid, dim3 block, uint32_t sm) {
    launcher.add(f, grid, block, sm, a, e, x, l, n, small_plan());
  };
  if (e) {
    launch_small<T, true>(n, batch, smem, add);
  } else {
    launch_small<T, false>(n, batch, smem, add);
  }
}

template size_t fused_smem_bytes<float>(int, bool);
template size_t fused_smem_bytes<c64>(int, bool);
template void launch_fused<float>(
    Launcher&,
    const float*,
    const float*,
    float*,
    float*,
    int,
    int,
    size_t);
template void launch_fused<
    c64>(Launcher&, const c64*, const c64*, c64*, c64*, int, int, size_t);

} // namespace mlx_linalg_ext::cuda
