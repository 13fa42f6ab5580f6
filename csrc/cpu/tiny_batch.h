// Tiny matrices (n <= 8) on the CPU: kLanes matrices at a time, stored lane
// by lane (entry (i, j) of the kLanes matrices is one contiguous row), so the
// compiler turns every loop over lanes into SIMD across matrices. A 3x3
// product is 27 multiply-adds: a BLAS call or a per-matrix loop spends more
// on overhead and shuffles than on the arithmetic.
//
// The caller sorts the batch by degree, so a block's lanes share one degree
// program and each matrix runs the program its own decision asks for: its
// result does not depend on its neighbours. Each lane keeps its own trace
// shift and scaling 2^-s; squarings run up to the largest s of the block,
// each lane taking the squared value only while it has squarings left.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/gemm.h"
#include "cpu/triangular.h"
#include "expm_numerics.h"

namespace mlx_linalg_ext::cpu {

// 2^k exactly. std::ldexp is a libm call (scalbn): in the per-lane
// bookkeeping of 100,000 3x3 matrices it took 17% of the time (perf).
inline double exact_pow2(int k) {
  if (k < -1022 || k > 1023) {
    return std::ldexp(1.0, k);
  }
  const uint64_t bits = uint64_t(k + 1023) << 52;
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

// |x| in double. For complex64 the square root of the sum of squares: float
// parts cannot overflow it in double, and std::abs (hypotf) cost several
// times the arithmetic of a tiny complex matrix.
inline double magnitude(float x) {
  return std::abs(x);
}
inline double magnitude(double x) {
  return std::abs(x);
}
inline double magnitude(complex64 x) {
  const double re = x.real(), im = x.imag();
  return std::sqrt(re * re + im * im);
}

// Sizes the lane-batched path takes; larger ones run a matrix at a time.
constexpr int kTinyMaxN = 8;

// What expm::decide gave one matrix, with its trace shift.
template <typename T>
struct MatrixDecision {
  int degree; // expm::kNoAnswer: the matrix's results are all NaN
  int squarings;
  T mu; // the trace shift, 0 where it is not used
  Triangle triangle; // the exact band of cpu/triangular.h applies
};

// float and double: one plane; complex64: real and imaginary planes.
template <typename T>
struct PlanesOf {
  using Real = T;
  static constexpr int kPlanes = 1;
};
template <>
struct PlanesOf<complex64> {
  using Real = float;
  static constexpr int kPlanes = 2;
};

template <typename T, int N>
class TinyBlock {
  using Real = typename PlanesOf<T>::Real;
  static constexpr int P = PlanesOf<T>::kPlanes;
  static constexpr int NN = N * N;

 public:
  // 8 lanes: two SSE or one AVX vector of float; small enough that every
  // slot of an 8 x 8 complex block stays in L1 and L2. A vector extension
  // (GCC and Clang) rather than a loop over lanes: the SIMD code does not
  // depend on what the vectoriser makes of each loop.
  static constexpr int kLanes = 8;
  typedef Real Lanes __attribute__((vector_size(kLanes * sizeof(Real))));
  using MaskInt = std::conditional_t<sizeof(Real) == 8, int64_t, int32_t>;
  typedef MaskInt Mask __attribute__((vector_size(kLanes * sizeof(Real))));
  struct Mat {
    Lanes v[P][NN];
  };

  // exp (and L(A, E) when e is given) of the count <= kLanes row-major
  // N x N matrices index[0..count) of a, e into x, l; every one of them has
  // the same degree, not expm::kNoAnswer.
  void run(
      int count,
      const int64_t* index,
      const T* a,
      const T* e,
      T* x,
      T* l,
      const MatrixDecision<T>* lanes) {
    MatrixDecision<T> lane[kLanes] = {};
    for (int w = 0; w < count; ++w) {
      lane[w] = lanes[index[w]];
    }
    const bool frechet = e != nullptr;
    evaluate(count, index, a, e, lane, lane[0].degree, frechet);
    for (int w = 0; w < count; ++w) {
      store(x + size_t(index[w]) * NN, x_, w);
      if (frechet) {
        store(l + size_t(index[w]) * NN, dx_, w);
      }
    }
  }

 private:
  void evaluate(
      int count,
      const int64_t* index,
      const T* a,
      const T* e,
      MatrixDecision<T>* lane,
      int degree,
      bool frechet) {
    // Slot 1 = B = A - mu I lane by lane; empty lanes and lanes without an
    // answer hold zeros.
    Lanes shift_re = {}, shift_im = {};
    for (int w = 0; w < count; ++w) {
      shift_re[w] = std::real(lane[w].mu);
      shift_im[w] = std::imag(lane[w].mu);
    }
    load(a, count, index, slot_[1]);
    for (int i = 0; i < NN; i += N + 1) {
      slot_[1].v[0][i] -= shift_re;
      if constexpr (P == 2) {
        slot_[1].v[1][i] -= shift_im;
      }
    }
    // Overscaling: at the last degree, B^2 and B^3 of the unscaled B give
    // each lane its s (expm::refine_squarings), B, B^2, B^3 are scaled
    // exactly, then B^6 may take squarings away
    // (expm::refine_squarings_sixth): the products are those of scaling B
    // by the final 2^-s first.
    int formed = 0; // products made before the program's loop
    int most_squarings = 0;
    for (int w = 0; w < count; ++w) {
      most_squarings = std::max(most_squarings, lane[w].squarings);
    }
    if (degree == expm::kLastDegree && most_squarings > 0) {
      product(slot_[1], slot_[1], slot_[2], false);
      product(slot_[2], slot_[1], slot_[3], false);
      int first[kLanes] = {};
      double norm2[kLanes] = {}, norm3[kLanes] = {};
      lane_norms(slot_[2], norm2);
      lane_norms(slot_[3], norm3);
      for (int w = 0; w < count; ++w) {
        first[w] = expm::refine_squarings(
            norm2[w], norm3[w], lane[w].squarings, precision());
      }
      scale_powers(first, count, 3);
      product(slot_[3], slot_[3], slot_[4], false);
      int change[kLanes] = {};
      double norm6[kLanes] = {};
      lane_norms(slot_[4], norm6);
      bool changed = false;
      most_squarings = 0;
      for (int w = 0; w < count; ++w) {
        // A lane already at s = 0 keeps it (and skips the norm and logs).
        lane[w].squarings = first[w] == 0
            ? 0
            : expm::refine_squarings_sixth(
                  norm2[w] * exact_pow2(-2 * first[w]),
                  norm3[w] * exact_pow2(-3 * first[w]),
                  norm6[w],
                  first[w],
                  precision());
        change[w] = lane[w].squarings - first[w];
        changed = changed || change[w] != 0;
        most_squarings = std::max(most_squarings, lane[w].squarings);
      }
      if (changed) {
        scale_powers(change, count, 4);
      }
      formed = 3;
    } else {
      int s[kLanes] = {};
      for (int w = 0; w < count; ++w) {
        s[w] = lane[w].squarings;
      }
      scale_powers(s, count, 1);
    }
    if (frechet) {
      Lanes scale = {};
      for (int w = 0; w < count; ++w) {
        scale[w] = Real(exact_pow2(-lane[w].squarings));
      }
      load(e, count, index, dslot_[1]);
      scale_by(dslot_[1], scale);
    }

    const Mat* slot[expm::kMaxSlots] = {nullptr, &slot_[1]};
    const Mat* dslot[expm::kMaxSlots] = {nullptr, &dslot_[1]};
    for (int k = 0; k < expm::kNumProducts[degree]; ++k) {
      int step = expm::kFirstStep[degree] + k;
      int count_slots = 2 + k;
      const Mat* left =
          combine(expm::kStepLeft[step], count_slots, slot, true, left_);
      const Mat* right =
          combine(expm::kStepRight[step], count_slots, slot, true, right_);
      if (k >= formed) {
        product(*left, *right, slot_[2 + k], false);
      }
      slot[2 + k] = &slot_[2 + k];
      if (frechet) {
        // d(LR) = dL R + L dR; the identity slot has no derivative.
        const Mat* dleft =
            combine(expm::kStepLeft[step], count_slots, dslot, false, dleft_);
        const Mat* dright =
            combine(expm::kStepRight[step], count_slots, dslot, false, dright_);
        product(*dleft, *right, dslot_[2 + k], false);
        product(*left, *dright, dslot_[2 + k], true);
        dslot[2 + k] = &dslot_[2 + k];
      }
    }
    int slots = expm::num_slots(degree);
    combine_into(expm::kFinal[degree], slots, slot, true, x_);
    if (frechet) {
      combine_into(expm::kFinal[degree], slots, dslot, false, dx_);
    }
    // e^(mu 2^-s) before the squarings, formed in double (as the per-matrix
    // path does): the squarings never leave the range of the result.
    rescale(lane, count, frechet);

    // Triangular lanes: the exact diagonal and first off-diagonal before
    // every squaring and after the last (cpu/triangular.h).
    auto put_band = [&](int step) {
      for (int w = 0; w < count; ++w) {
        int k = lane[w].squarings - step;
        if (lane[w].triangle == kFull || k < 0 || lane[w].squarings == 0) {
          continue;
        }
        exact_band(
            a + size_t(index[w]) * NN,
            N,
            lane[w].triangle,
            k,
            [&](int i, int j, auto v) {
              x_.v[0][i * N + j][w] = Real(std::real(v));
              if constexpr (P == 2) {
                x_.v[1][i * N + j][w] = Real(std::imag(v));
              }
            });
      }
    };
    put_band(0);
    for (int i = 0; i < most_squarings; ++i) {
      Mask take = {};
      for (int w = 0; w < count; ++w) {
        take[w] = i < lane[w].squarings ? -1 : 0;
      }
      if (frechet) {
        // d(X^2) = X dX + dX X.
        product(x_, dx_, left_, false);
        product(dx_, x_, left_, true);
        select(take, left_, dx_);
      }
      product(x_, x_, right_, false);
      select(take, right_, x_);
      put_band(i + 1);
    }
  }

  // Slots 1 .. `slots` (B, B^2, B^3, B^6) times 2^(-e p) lane by lane for
  // their powers p (exact). B^6 takes two factors 2^(-3e): 2^(6e) alone
  // leaves the float range from e = 22 on.
  void scale_powers(const int* e, int count, int slots) {
    constexpr int kPower[4] = {1, 2, 3, 3};
    for (int k = 0; k < slots; ++k) {
      Lanes f = {};
      for (int w = 0; w < count; ++w) {
        f[w] = Real(exact_pow2(-e[w] * kPower[k]));
      }
      scale_by(slot_[1 + k], f);
      if (k == 3) {
        scale_by(slot_[1 + k], f);
      }
    }
  }

  static constexpr int precision() {
    return std::is_same_v<Real, double> ? expm::kDouble : expm::kSingle;
  }

  // The 1-norms of the lanes of m into norm[0 .. kLanes), NaN wins. Real
  // lanes all at once, in Real: column sums of N <= 8 exact magnitudes
  // (relative error <= 8u, far inside the thresholds' margins, as in the
  // CUDA tiny kernel); lane by lane these sums were a fifth of a 3x3 block's
  // time. Complex lanes one by one in double, where |z|^2 cannot overflow.
  static void lane_norms(const Mat& m, double* norm) {
    if constexpr (P == 1) {
      Lanes most = {};
      for (int j = 0; j < N; ++j) {
        Lanes col = {};
        for (int i = 0; i < N; ++i) {
          const Lanes v = m.v[0][i * N + j];
          col += v < Lanes{} ? -v : v;
        }
        most = ((col > most) | (col != col)) ? col : most;
      }
      for (int w = 0; w < kLanes; ++w) {
        norm[w] = double(most[w]);
      }
    } else {
      for (int w = 0; w < kLanes; ++w) {
        double most = 0.0;
        for (int j = 0; j < N; ++j) {
          double col = 0.0;
          for (int i = 0; i < N; ++i) {
            col += magnitude(
                complex64(m.v[0][i * N + j][w], m.v[1][i * N + j][w]));
          }
          most = (col > most || std::isnan(col)) ? col : most;
        }
        norm[w] = most;
      }
    }
  }

  // The lanes of m, entry by entry: row-major matrices in, lane rows out;
  // unused lanes hold zeros.
  static void load(const T* m, int count, const int64_t* index, Mat& out) {
    for (int w = 0; w < kLanes; ++w) {
      const T* src = w < count ? m + size_t(index[w]) * NN : nullptr;
      for (int i = 0; i < NN; ++i) {
        T v = src ? src[i] : T(0);
        out.v[0][i][w] = std::real(v);
        if constexpr (P == 2) {
          out.v[1][i][w] = std::imag(v);
        }
      }
    }
  }

  static void store(T* out, const Mat& m, int w) {
    for (int i = 0; i < NN; ++i) {
      if constexpr (P == 2) {
        out[i] = T(m.v[0][i][w], m.v[1][i][w]);
      } else {
        out[i] = m.v[0][i][w];
      }
    }
  }

  static void scale_by(Mat& m, const Lanes& f) {
    for (int p = 0; p < P; ++p) {
      for (int i = 0; i < NN; ++i) {
        m.v[p][i] *= f;
      }
    }
  }

  // c = l r (or c += l r), lane by lane.
  static void product(const Mat& l, const Mat& r, Mat& c, bool accumulate) {
    for (int i = 0; i < N; ++i) {
      for (int k = 0; k < N; ++k) {
        Lanes re = {}, im = {};
        if (accumulate) {
          re = c.v[0][i * N + k];
          if constexpr (P == 2) {
            im = c.v[1][i * N + k];
          }
        }
        for (int j = 0; j < N; ++j) {
          Lanes lr = l.v[0][i * N + j], rr = r.v[0][j * N + k];
          re += lr * rr;
          if constexpr (P == 2) {
            Lanes li = l.v[1][i * N + j], ri = r.v[1][j * N + k];
            re -= li * ri;
            im += lr * ri + li * rr;
          }
        }
        c.v[0][i * N + k] = re;
        if constexpr (P == 2) {
          c.v[1][i * N + k] = im;
        }
      }
    }
  }

  // sum_j c[j] slot_j (slot 0: the identity when `identity`, else nothing);
  // a lone slot with coefficient 1 is used in place.
  static const Mat* combine(
      const EXPM_REAL* c,
      int count,
      const Mat* const* slot,
      bool identity,
      Mat& scratch) {
    int lone = expm::lone_slot(c, count, identity);
    if (lone >= 1) {
      return slot[lone];
    }
    combine_into(c, count, slot, identity, scratch);
    return &scratch;
  }

  // Term by term in slot order, as the per-matrix path sums them.
  static void combine_into(
      const EXPM_REAL* c,
      int count,
      const Mat* const* slot,
      bool identity,
      Mat& dst) {
    bool first = true;
    for (int j = 1; j < count; ++j) {
      if (c[j] == 0) {
        continue;
      }
      Real cj = Real(c[j]);
      for (int p = 0; p < P; ++p) {
        for (int i = 0; i < NN; ++i) {
          Lanes t = cj * slot[j]->v[p][i];
          dst.v[p][i] = first ? t : dst.v[p][i] + t;
        }
      }
      first = false;
    }
    if (first) {
      dst = Mat{};
    }
    if (identity && c[0] != 0) {
      for (int i = 0; i < NN; i += N + 1) {
        dst.v[0][i] += Real(c[0]);
      }
    }
  }

  // x (and dx) times e^(mu 2^-s), lane by lane, the product in double.
  void rescale(const MatrixDecision<T>* lane, int count, bool frechet) {
    for (int w = 0; w < count; ++w) {
      if (lane[w].mu == T(0)) {
        continue;
      }
      double f = exact_pow2(-lane[w].squarings);
      if constexpr (P == 2) {
        std::complex<double> mu(lane[w].mu);
        std::complex<double> factor = std::exp(mu * f);
        for (Mat* m : {&x_, &dx_}) {
          if (m == &dx_ && !frechet) {
            continue;
          }
          for (int i = 0; i < NN; ++i) {
            std::complex<double> y =
                factor * std::complex<double>(m->v[0][i][w], m->v[1][i][w]);
            m->v[0][i][w] = Real(y.real());
            m->v[1][i][w] = Real(y.imag());
          }
        }
      } else {
        double factor = std::exp(double(lane[w].mu) * f);
        for (int i = 0; i < NN; ++i) {
          x_.v[0][i][w] = Real(factor * x_.v[0][i][w]);
          if (frechet) {
            dx_.v[0][i][w] = Real(factor * dx_.v[0][i][w]);
          }
        }
      }
    }
  }

  static void select(const Mask& take, const Mat& from, Mat& to) {
    for (int p = 0; p < P; ++p) {
      for (int i = 0; i < NN; ++i) {
        to.v[p][i] = take ? from.v[p][i] : to.v[p][i];
      }
    }
  }

  // Slot 0 (the identity) is never stored; slots 1 .. 6 are A and the
  // products. left_/right_ double as squaring scratch.
  Mat slot_[expm::kMaxSlots];
  Mat dslot_[expm::kMaxSlots];
  Mat left_, right_, dleft_, dright_, x_, dx_;
};

// x86-64: the same block again, compiled for AVX2 and FMA (flatten inlines
// every member into it; the plain members stay baseline code), chosen at run
// time: 2-3x the SSE2 baseline at n = 3 in a standalone loop (NOTES.md, CPU).
#if defined(__x86_64__) && defined(__GNUC__)
#define EXPM_TINY_AVX2 __attribute__((target("avx2,fma"), flatten))
inline bool tiny_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#else
#define EXPM_TINY_AVX2
inline bool tiny_has_avx2() {
  return false;
}
#endif

template <typename T, int N>
EXPM_TINY_AVX2 void run_tiny_avx2(
    TinyBlock<T, N>& block,
    int count,
    const int64_t* index,
    const T* a,
    const T* e,
    T* x,
    T* l,
    const MatrixDecision<T>* lanes) {
  block.run(count, index, a, e, x, l, lanes);
}

#undef EXPM_TINY_AVX2

} // namespace mlx_linalg_ext::cpu
