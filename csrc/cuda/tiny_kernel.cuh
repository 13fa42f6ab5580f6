// The per-matrix evaluator of the tiny-matrix kernel (tiny_kernel.cu): n <=
// 8, many matrices per block. Each matrix is held in registers by a group
// of threads: one thread where its live slots fit about 128 registers (the
// whole matrix a thread), else n threads (one row each, the right operand of
// each product read from the matrix's shared-memory region). Slots are
// indexed at compile time (one program per degree, loops over n unrolled),
// so they stay in registers.
//
// Numerics: those of the fused kernel (trace in double, expm::decide,
// products and combinations with FMAs in slot order, e^(mu 2^-s) in double),
// except the 1-norms: column sums of n <= 8 terms in float (relative error
// <= 8u, far inside the thresholds' margins; in double every term costs a
// conversion on a quarter-rate pipe),
// plus both overscaling rules of the last degree, as on the CPU
// (expm::refine_squarings from B^2 and B^3 of the unscaled B, then
// expm::refine_squarings_sixth from B^6 of the scaled B^3): its first three
// products, rescaled exactly by powers of two.
#pragma once

#include "cuda/kernel_utils.cuh"

namespace mlx_linalg_ext::cuda {

// max that keeps a NaN.
__device__ __forceinline__ float nan_maxf(float a, float b) {
  return (b > a || isnan(b)) ? b : a;
}

// Threads per matrix: 1 where the live matrices of the degree-18 program (7
// forward, 14 with the derivative) fit in about 128 registers, else n.
template <typename T, bool kFrechet>
constexpr int tiny_threads_per_matrix(int n) {
  const int planes = int(sizeof(T) / sizeof(float));
  return (kFrechet ? 14 : 7) * n * n * planes <= 128 ? 1 : n;
}

// Bytes of one shared-memory access of a row: 16, 8 or 4.
template <typename T>
constexpr int tiny_vec_bytes(int n) {
  const int row = n * int(sizeof(T));
  return row % 16 == 0 ? 16 : row % 8 == 0 ? 8 : 4;
}

// Elements from one matrix's region to the next: at least n * n, an odd
// number of row accesses, so that the threads of a warp, each reading the
// same element of different matrices, spread over the banks.
template <typename T>
constexpr int tiny_pitch(int n) {
  const int v = tiny_vec_bytes<T>(n);
  int p = n * n;
  while ((p * int(sizeof(T))) % v != 0 || (p * int(sizeof(T)) / v) % 2 == 0) {
    ++p;
  }
  return p;
}

// A row of N elements from shared memory (16-byte aligned rows where
// tiny_vec_bytes is 16), and back.
template <int N>
__device__ __forceinline__ void load_row(const float* p, float (&v)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
      const float4 f = reinterpret_cast<const float4*>(p)[q];
      v[4 * q] = f.x;
      v[4 * q + 1] = f.y;
      v[4 * q + 2] = f.z;
      v[4 * q + 3] = f.w;
    }
  } else if constexpr (N % 2 == 0) {
#pragma unroll
    for (int q = 0; q < N / 2; ++q) {
      const float2 f = reinterpret_cast<const float2*>(p)[q];
      v[2 * q] = f.x;
      v[2 * q + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int q = 0; q < N; ++q) {
      v[q] = p[q];
    }
  }
}
template <int N>
__device__ __forceinline__ void load_row(const c64* p, c64 (&v)[N]) {
  if constexpr (N % 2 == 0) {
#pragma unroll
    for (int q = 0; q < N / 2; ++q) {
      const float4 f = reinterpret_cast<const float4*>(p)[q];
      v[2 * q] = {f.x, f.y};
      v[2 * q + 1] = {f.z, f.w};
    }
  } else {
#pragma unroll
    for (int q = 0; q < N; ++q) {
      const float2 f = reinterpret_cast<const float2*>(p)[q];
      v[q] = {f.x, f.y};
    }
  }
}
template <int N>
__device__ __forceinline__ void store_row(float* p, const float (&v)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
      reinterpret_cast<float4*>(p)[q] =
          make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
  } else if constexpr (N % 2 == 0) {
#pragma unroll
    for (int q = 0; q < N / 2; ++q) {
      reinterpret_cast<float2*>(p)[q] = make_float2(v[2 * q], v[2 * q + 1]);
    }
  } else {
#pragma unroll
    for (int q = 0; q < N; ++q) {
      p[q] = v[q];
    }
  }
}
template <int N>
__device__ __forceinline__ void store_row(c64* p, const c64 (&v)[N]) {
  if constexpr (N % 2 == 0) {
#pragma unroll
    for (int q = 0; q < N / 2; ++q) {
      reinterpret_cast<float4*>(p)[q] =
          make_float4(v[2 * q].x, v[2 * q].y, v[2 * q + 1].x, v[2 * q + 1].y);
    }
  } else {
#pragma unroll
    for (int q = 0; q < N; ++q) {
      reinterpret_cast<float2*>(p)[q] = make_float2(v[q].x, v[q].y);
    }
  }
}

// R rows of an N x N matrix: all of it (R = N) or one row.
template <typename T, int N, int R>
struct TinyRows {
  T v[R][N];
};

// exp(A), and L(A, E) when kFrechet, of one N x N matrix held by a Group of
// N / R threads, R = N or 1 rows each (R = 2 rows on 4 threads for n = 8
// and on 2 threads for n = 4 ran 17% and 40% slower on an H200). Group: row0
// (the first row of this thread), sync() (orders the exchanges among the
// group's threads) and max(v) (the largest v of the group, NaN kept, the same
// on every thread); for R = N both are no-ops. The matrix is row-major at ex (E
// at dex), and the results go there; for R < N the region also passes each
// product's right operand between the group's threads.
template <typename T, int N, int R, bool kFrechet, typename Group>
class TinyEval {
  static_assert(R == N || R == 1);
  using Rows = TinyRows<T, N, R>;

 public:
  __device__ __forceinline__ TinyEval(const Group& group, T* ex, T* dex)
      : group_(group), ex_(ex), dex_(dex) {}

  __device__ __forceinline__ void run() {
    // The decision: mu = tr(A)/n in double by every thread of the group (the
    // same sums in the same order: the same answer), column sums in row
    // order.
    double2 tr = make_double2(0.0, 0.0);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      tr = add2(tr, widen(ex_[i * N + i]));
    }
    const T mu = narrow<T>(make_double2(tr.x / N, tr.y / N));
    // Each thread sums the columns of its rows' indices; the group's
    // largest sum is the 1-norm.
    float norm = 0.0f, shifted = 0.0f;
#pragma unroll
    for (int c = 0; c < R; ++c) {
      const int j = row0() + c;
      const float diag_shifted = abs_of(ex_[j * N + j] - mu);
      float sum = 0.0f, sum_shifted = 0.0f;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const float av = abs_of(ex_[i * N + j]);
        sum += av;
        sum_shifted += i == j ? diag_shifted : av;
      }
      norm = nan_maxf(norm, sum);
      shifted = nan_maxf(shifted, sum_shifted);
    }
    norm = group_.max(norm);
    shifted = group_.max(shifted);
    Params p{};
    put_mu(mu, p.mu_re, p.mu_im);
    p = decide_params(double(norm), double(shifted), p);

    Rows b, db;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      load_row<N>(ex_ + (row0() + r) * N, b.v[r]);
      if constexpr (kFrechet) {
        load_row<N>(dex_ + (row0() + r) * N, db.v[r]);
      }
    }
    // Every thread has read the matrix before the region is written.
    if constexpr (R < N) {
      group_.sync();
    }
    if (p.degree < 0) {
      Rows nan;
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
          nan.v[r][k] = nan_of<T>();
        }
      }
      store(nan, nan);
      return;
    }
    if (p.shift) {
      const T m = get_mu<T>(p.mu_re, p.mu_im);
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
          if (row0() + r == k) {
            b.v[r][k] = b.v[r][k] - m;
          }
        }
      }
    }
    switch (p.degree) {
      case 0:
        return program<0>(b, db, p);
      case 1:
        return program<1>(b, db, p);
      case 2:
        return program<2>(b, db, p);
      case 3:
        return program<3>(b, db, p);
      case 4:
        return program<4>(b, db, p);
      default:
        return program<expm::kLastDegree>(b, db, p);
    }
  }

 private:
  // The first row this thread holds (a constant for R = N).
  __device__ __forceinline__ int row0() const {
    if constexpr (R == N) {
      return 0;
    } else {
      return group_.row0;
    }
  }

  // The product program of degree index D on B = A - mu I, with
  // squarings s (refined for the last degree), e^(mu 2^-s) and the
  // squarings.
  template <int D>
  __device__ __forceinline__ void
  program(const Rows& b, const Rows& db, const Params& p) {
    Rows slot[2 + D]; // slot 0, the identity, is not stored
    Rows dslot[2 + D];
    int s = p.squarings;
    slot[1] = b;
    // The last degree's first three products (B^2, B^3, B^6) are formed
    // here, their derivatives in the loop below from the scaled slots.
    constexpr int kFormed = D == expm::kLastDegree ? 3 : 0;
    if constexpr (D == expm::kLastDegree) {
      // B^2 and B^3 of the unscaled B give s (alpha_2); B, B^2, B^3 are
      // scaled exactly; then B^6 of the scaled B^3 may take squarings away.
      step(slot[1], slot[1], slot[1], slot[1], slot[2], dslot[2], true, false);
      step(slot[2], slot[1], slot[2], slot[1], slot[3], dslot[3], true, false);
      const bool refine = s > 0;
      float norm2 = 0.0f, norm3 = 0.0f;
      if (refine) {
        norm2 = norm1(slot[2]);
        norm3 = norm1(slot[3]);
        s = expm::refine_squarings(norm2, norm3, s, expm::kSingle);
        rescale<false>(slot, -s);
      }
      step(slot[3], slot[3], slot[3], slot[3], slot[4], dslot[4], true, false);
      if (refine && s > 0) {
        const int s6 = expm::refine_squarings_sixth(
            ldexpf(norm2, -2 * s),
            ldexpf(norm3, -3 * s),
            norm1(slot[4]),
            s,
            expm::kSingle);
        if (s6 < s) {
          rescale<true>(slot, s - s6);
          s = s6;
        }
      }
    }
    if constexpr (kFrechet) {
      dslot[1] = db;
      if (s > 0) {
        scale(dslot[1], ldexpf(1.0f, -s));
      }
    }
#pragma unroll
    for (int k = 0; k < D; ++k) {
      const bool formed = k < kFormed;
      if (formed && !kFrechet) {
        continue;
      }
      const int at = expm::kFirstStep[D] + k;
      const Rows l = combine(expm::kStepLeft[at], 2 + k, slot, true);
      const Rows r = combine(expm::kStepRight[at], 2 + k, slot, true);
      Rows dl, dr;
      if constexpr (kFrechet) {
        dl = combine(expm::kStepLeft[at], 2 + k, dslot, false);
        dr = combine(expm::kStepRight[at], 2 + k, dslot, false);
      }
      step(l, r, dl, dr, slot[2 + k], dslot[2 + k], !formed, kFrechet);
    }
    Rows x = combine(expm::kFinal[D], 2 + D, slot, true);
    Rows dx;
    if constexpr (kFrechet) {
      dx = combine(expm::kFinal[D], 2 + D, dslot, false);
    }
    if (p.shift) {
      // e^(mu 2^-s) before the squarings, in double.
      const T m = get_mu<T>(p.mu_re, p.mu_im) * ldexpf(1.0f, -s);
      const Factor factor = exp_factor(m);
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
          x.v[r][k] = apply(factor, x.v[r][k]);
          if constexpr (kFrechet) {
            dx.v[r][k] = apply(factor, dx.v[r][k]);
          }
        }
      }
    }
    // X^2 and d(X^2) = dX X + X dX.
    for (int i = 0; i < s; ++i) {
      Rows y, dy;
      step(x, x, dx, dx, y, dy, true, kFrechet);
      x = y;
      if constexpr (kFrechet) {
        dx = dy;
      }
    }
    store(x, dx);
  }

  // out = l r (when primal) and dout = dl r + l dr (when dual); r and dr
  // pass through the region for R = 1.
  __device__ __forceinline__ void step(
      const Rows& l,
      const Rows& r,
      const Rows& dl,
      const Rows& dr,
      Rows& out,
      Rows& dout,
      bool primal,
      bool dual) {
    if constexpr (R < N) {
#pragma unroll
      for (int q = 0; q < R; ++q) {
        store_row<N>(ex_ + (row0() + q) * N, r.v[q]);
        if (dual) {
          store_row<N>(dex_ + (row0() + q) * N, dr.v[q]);
        }
      }
      group_.sync();
    }
    if (primal) {
      out = zero();
      mul(l, r, ex_, out);
    }
    if (dual) {
      dout = zero();
      mul(dl, r, ex_, dout);
      mul(l, dr, dex_, dout);
    }
    if constexpr (R < N) {
      group_.sync(); // read before the next exchange writes
    }
  }

  // out += l [r], row by row; [r] is the whole right operand: this thread's
  // registers (R = N) or the region `shared` (R = 1).
  __device__ __forceinline__ void
  mul(const Rows& l, const Rows& r, const T* shared, Rows& out) const {
#pragma unroll
    for (int i = 0; i < R; ++i) {
#pragma unroll
      for (int j = 0; j < N; ++j) {
        T rj[N];
        if constexpr (R == N) {
#pragma unroll
          for (int k = 0; k < N; ++k) {
            rj[k] = r.v[j][k];
          }
        } else {
          load_row<N>(shared + j * N, rj);
        }
#pragma unroll
        for (int k = 0; k < N; ++k) {
          mac(out.v[i][k], l.v[i][j], rj[k]);
        }
      }
    }
  }

  // The 1-norm of a matrix, column sums in row order, NaN kept;
  // each thread sums the columns of its rows' indices.
  __device__ __forceinline__ float norm1(const Rows& m) {
    float norm = 0.0f;
    if constexpr (R == N) {
#pragma unroll
      for (int j = 0; j < N; ++j) {
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          sum += abs_of(m.v[i][j]);
        }
        norm = nan_maxf(norm, sum);
      }
      return norm;
    } else {
#pragma unroll
      for (int q = 0; q < R; ++q) {
        store_row<N>(ex_ + (row0() + q) * N, m.v[q]);
      }
      group_.sync();
#pragma unroll
      for (int c = 0; c < R; ++c) {
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          sum += abs_of(ex_[i * N + row0() + c]);
        }
        norm = nan_maxf(norm, sum);
      }
      group_.sync();
      return group_.max(norm);
    }
  }

  // sum_{j >= 1} c[j] slot_j in increasing j (+ c[0] on the diagonal when
  // `identity`), with FMAs, as the fused kernel's combinations; count is a
  // constant wherever this is inlined, so the slots stay in registers.
  template <int S>
  __device__ __forceinline__ Rows combine(
      const double* c,
      int count,
      const Rows (&slots)[S],
      bool identity) const {
    Rows out = zero();
#pragma unroll
    for (int j = 1; j < S; ++j) {
      const float cj = float(c[j]);
      if (j < count && cj != 0.0f) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
          for (int k = 0; k < N; ++k) {
            mac(out.v[r][k], cj, slots[j].v[r][k]);
          }
        }
      }
    }
    const float c0 = float(c[0]);
    if (identity && c0 != 0.0f) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
          if (row0() + r == k) {
            out.v[r][k] += real_to<T>(c0);
          }
        }
      }
    }
    return out;
  }

  __device__ __forceinline__ static Rows zero() {
    Rows m;
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int k = 0; k < N; ++k) {
        m.v[r][k] = real_to<T>(0.0f);
      }
    }
    return m;
  }

  // B, B^2, B^3 (and B^6 when kSixth) of slots 1..4 times 2^e, 4^e, 8^e,
  // 64^e, exactly: the powers of B 2^e. 64^e in two factors (it can pass
  // float's range where the product does not).
  template <bool kSixth, int S>
  __device__ __forceinline__ static void rescale(Rows (&slot)[S], int e) {
    const float f = ldexpf(1.0f, e);
    const float f3 = f * f * f;
    scale(slot[1], f);
    scale(slot[2], f * f);
    scale(slot[3], f3);
    if constexpr (kSixth) {
      scale(slot[4], f3);
      scale(slot[4], f3);
    }
  }

  __device__ __forceinline__ static void scale(Rows& m, float f) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int k = 0; k < N; ++k) {
        m.v[r][k] = m.v[r][k] * f;
      }
    }
  }

  __device__ __forceinline__ void store(const Rows& x, const Rows& dx) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      store_row<N>(ex_ + (row0() + r) * N, x.v[r]);
      if constexpr (kFrechet) {
        store_row<N>(dex_ + (row0() + r) * N, dx.v[r]);
      }
    }
  }

  Group group_;
  T* ex_;
  T* dex_;
};

} // namespace mlx_linalg_ext::cuda
