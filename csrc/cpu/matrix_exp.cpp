// CPU backend of MatrixExp and ExpmFrechet: each matrix of the batch runs the
// product program of its own degree (expm_numerics.h), then its own squarings.
#include <algorithm>
#include <cmath>
#include <complex>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

#include "cpu/gemm.h"
#include "cpu/tiny_batch.h"
#include "cpu/triangular.h"
#include "expm_numerics.h"
#include "primitives.h"
#ifdef MLX_LINALG_EXT_METAL_EMULATOR
#include "metal_emulator/eval.h"
#endif

namespace mlx_linalg_ext {

namespace mx = mlx::core;

namespace {

using cpu::complex64;
using cpu::gemm;

template <typename T>
struct RealOf {
  using type = T;
};
template <>
struct RealOf<complex64> {
  using type = float;
};

template <typename T>
constexpr int precision_of() {
  return std::is_same_v<T, double> ? expm::kDouble : expm::kSingle;
}

// The largest of n column sums; a NaN sum must win, which std::max does not
// ensure.
inline double largest_sum(const double* v, int n) {
  double m = 0.0;
  for (int j = 0; j < n; ++j) {
    m = (v[j] > m || std::isnan(v[j])) ? v[j] : m;
  }
  return m;
}

// The 1-norms (largest column sum of |a_ij|) of A and of A - mu I,
// accumulated in double so that a large finite matrix does not overflow.
// col and col_shifted hold n sums each (the caller's, reused per matrix).
template <typename T>
std::pair<double, double>
one_norms(const T* a, int n, T mu, double* col, double* col_shifted) {
  std::fill(col, col + n, 0.0);
  std::fill(col_shifted, col_shifted + n, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      T aij = a[size_t(i) * n + j];
      col[j] += cpu::magnitude(aij);
      col_shifted[j] += cpu::magnitude(i == j ? aij - mu : aij);
    }
  }
  return {largest_sum(col, n), largest_sum(col_shifted, n)};
}

// The 1-norm of the n x n matrix m; col holds n sums.
template <typename T>
double one_norm(const T* m, int n, double* col) {
  std::fill(col, col + n, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      col[j] += cpu::magnitude(m[size_t(i) * n + j]);
    }
  }
  return largest_sum(col, n);
}

// tr(A)/n, summed in double: a float32 trace of huge diagonal entries would
// overflow and lose the shift.
template <typename T>
T mean_diagonal(const T* a, int n) {
  using Wide = std::
      conditional_t<std::is_same_v<T, complex64>, std::complex<double>, double>;
  Wide sum(0);
  for (int i = 0; i < n; ++i) {
    sum += Wide(a[size_t(i) * n + i]);
  }
  return T(sum / double(n));
}

// expm::decide for the n x n matrix a; col and col_shifted hold n sums.
// kN > 0 fixes n at compile time (the tiny path): the loops unroll and the
// sums stay in registers; with a runtime n of 3 this call took a quarter of
// the time of 100,000 3x3 exponentials (perf).
template <int kN = 0, typename T>
cpu::MatrixDecision<T>
decide_matrix(const T* a, int n, double* col, double* col_shifted) {
  if constexpr (kN > 0) {
    n = kN;
  }
  T mu = mean_diagonal(a, n);
  auto [norm, shifted_norm] = one_norms(a, n, mu, col, col_shifted);
  expm::Decision d = expm::decide(norm, shifted_norm, precision_of<T>());
  return {d.degree, d.squarings, d.shift ? mu : T(0), cpu::triangle_of(a, n)};
}

// e^mu in double precision.
inline double exp_of(double mu) {
  return std::exp(mu);
}
inline std::complex<double> exp_of(complex64 mu) {
  return std::exp(std::complex<double>(mu));
}

// Scratch memory of the calling thread, kept between calls up to 64 MiB:
// fresh pages cost a page fault each, as much as the products at n ~ 1000.
// Larger scratch is owned by its caller and freed after the batch.
char* thread_scratch(size_t bytes, std::unique_ptr<char[]>& owned) {
  constexpr size_t kKeepBytes = size_t(64) << 20;
  thread_local std::unique_ptr<char[]> kept;
  thread_local size_t kept_bytes = 0;
  if (bytes > kKeepBytes) {
    owned.reset(new char[bytes]);
    return owned.get();
  }
  if (kept_bytes < bytes) {
    kept.reset(new char[bytes]);
    kept_bytes = bytes;
  }
  return kept.get();
}

// Evaluates exp(A) and, when asked, L(A, E) for one n x n matrix at a time,
// reusing its buffers across the matrices of a batch.
template <typename T>
class Evaluator {
  using Real = typename RealOf<T>::type;

 public:
  Evaluator(int n, bool with_frechet)
      : n_(n), nn_(size_t(n) * n), with_frechet_(with_frechet) {
    // Scaled A, five products, two operands (reused as the squaring
    // ping-pong); the same again for the derivative.
    size_t count = nn_ * (with_frechet ? 16 : 8);
    scratch_ = reinterpret_cast<T*>(thread_scratch(count * sizeof(T), owned_));
  }

  void run(const T* a, const T* e, T* out_x, T* out_l) {
    col_.resize(n_);
    col_shifted_.resize(n_);
    cpu::MatrixDecision<T> plan =
        decide_matrix(a, n_, col_.data(), col_shifted_.data());
    if (plan.degree == expm::kNoAnswer) {
      std::fill(out_x, out_x + nn_, nan());
      if (out_l) {
        std::fill(out_l, out_l + nn_, nan());
      }
      return;
    }
    T mu = plan.mu;
    bool shift = mu != T(0);
    int d = plan.degree;
    int s = plan.squarings;
    const bool refine = expm::refines_squarings({d, s, shift});

    T* free = scratch_;
    auto take = [&]() {
      T* p = free;
      free += nn_;
      return p;
    };
    const T* slot[expm::kMaxSlots] = {};
    const T* dslot[expm::kMaxSlots] = {};
    // Overscaling: B^2 and B^3 of the unscaled B give s
    // (expm::refine_squarings); B, B^2, B^3 scaled exactly; then B^6 of the
    // scaled B^3 may take squarings away (expm::refine_squarings_sixth).
    int formed = 0; // products made before the loop
    if (refine) {
      T* power[4] = {take(), take(), take(), take()}; // B, B^2, B^3, B^6
      scaled(a, mu, 0, power[0], /* copy= */ true);
      gemm(n_, power[0], power[0], power[1]);
      gemm(n_, power[1], power[0], power[2]);
      double norm2 = one_norm(power[1], n_, col_.data());
      double norm3 = one_norm(power[2], n_, col_.data());
      s = expm::refine_squarings(norm2, norm3, s, precision_of<T>());
      scale_powers(power, 3, s);
      gemm(n_, power[2], power[2], power[3]);
      int s6 = expm::refine_squarings_sixth(
          std::ldexp(norm2, -2 * s),
          std::ldexp(norm3, -3 * s),
          one_norm(power[3], n_, col_.data()),
          s,
          precision_of<T>());
      scale_powers(power, 4, s6 - s);
      s = s6;
      for (int k = 0; k < 4; ++k) {
        slot[1 + k] = power[k];
      }
      formed = 3;
    } else {
      slot[1] = scaled(a, mu, s, take());
    }
    if (with_frechet_) {
      dslot[1] = scaled(e, T(0), s, take());
    }
    T* left = take();
    T* right = take();
    T* dleft = with_frechet_ ? take() : nullptr;
    T* dright = with_frechet_ ? take() : nullptr;

    for (int k = 0; k < expm::kNumProducts[d]; ++k) {
      int step = expm::kFirstStep[d] + k;
      int count = 2 + k; // the slots made before this step
      const T* l = combine(expm::kStepLeft[step], count, slot, true, left);
      const T* r = combine(expm::kStepRight[step], count, slot, true, right);
      if (k >= formed) {
        T* p = take();
        gemm(n_, l, r, p);
        slot[2 + k] = p;
      }
      if (with_frechet_) {
        // d(LR) = dL R + L dR; the identity slot has no derivative.
        const T* dl =
            combine(expm::kStepLeft[step], count, dslot, false, dleft);
        const T* dr =
            combine(expm::kStepRight[step], count, dslot, false, dright);
        T* dp = take();
        gemm(n_, dl, r, dp);
        gemm(n_, l, dr, dp, /* accumulate= */ true);
        dslot[2 + k] = dp;
      }
    }

    // The approximant, then s squarings; the last one lands in the output.
    // The operand buffers are free now and serve as ping-pong buffers.
    T* sq[2] = {left, right};
    T* dsq[2] = {dleft, dright};
    int count = expm::num_slots(d);
    T* x = s == 0 ? out_x : sq[0];
    T* dx = s == 0 ? out_l : dsq[0];
    combine_into(expm::kFinal[d], count, slot, true, x);
    if (with_frechet_) {
      combine_into(expm::kFinal[d], count, dslot, false, dx);
    }
    if (shift) {
      // e^(mu 2^-s) before the squarings rather than e^mu after them: the
      // squarings then never leave the range of the result itself.
      auto factor = exp_of(mu * Real(std::ldexp(1.0, -s)));
      rescale(x, factor);
      if (with_frechet_) {
        rescale(dx, factor);
      }
    }
    // Triangular A: the exact diagonal and first off-diagonal before every
    // squaring and after the last (cpu/triangular.h).
    const cpu::Triangle triangle = s > 0 ? plan.triangle : cpu::kFull;
    auto put_band = [&](T* m, int k) {
      if (triangle != cpu::kFull) {
        cpu::exact_band(a, n_, triangle, k, [&](int i, int j, auto v) {
          m[size_t(i) * n_ + j] = T(v);
        });
      }
    };
    put_band(x, s);
    for (int i = 0; i < s; ++i) {
      bool last = i == s - 1;
      T* y = last ? out_x : sq[(i + 1) % 2];
      if (with_frechet_) {
        // d(X^2) = X dX + dX X.
        T* dy = last ? out_l : dsq[(i + 1) % 2];
        gemm(n_, x, dx, dy);
        gemm(n_, dx, x, dy, /* accumulate= */ true);
        dx = dy;
      }
      gemm(n_, x, x, y);
      x = y;
      put_band(x, s - 1 - i);
    }
  }

 private:
  static T nan() {
    return T(std::numeric_limits<Real>::quiet_NaN());
  }

  // (a - mu I) * 2^-s in p (the scaling is exact); a itself if there is
  // nothing to do, unless `copy`.
  const T* scaled(const T* a, T mu, int s, T* p, bool copy = false) const {
    if (s == 0 && mu == T(0) && !copy) {
      return a;
    }
    Real f = Real(std::ldexp(1.0, -s));
    for (size_t i = 0; i < nn_; ++i) {
      p[i] = a[i] * f;
    }
    for (int i = 0; i < n_; ++i) {
      p[size_t(i) * n_ + i] = (a[size_t(i) * n_ + i] - mu) * f;
    }
    return p;
  }

  // B, B^2, B^3, B^6 (the first `count`) times 2^(-e p) for their powers p
  // (exact). B^6 takes two factors 2^(-3e): 2^(6e) alone leaves the float
  // range from e = 22 on.
  void scale_powers(T* const* power, int count, int e) const {
    constexpr int kPower[4] = {1, 2, 3, 3};
    for (int k = 0; k < count; ++k) {
      const Real f = Real(cpu::exact_pow2(-e * kPower[k]));
      for (size_t i = 0; i < nn_; ++i) {
        power[k][i] *= f;
      }
      if (k == 3) {
        for (size_t i = 0; i < nn_; ++i) {
          power[k][i] *= f;
        }
      }
    }
  }

  // x *= factor, the product formed in double.
  template <typename Factor>
  void rescale(T* x, Factor factor) const {
    for (size_t i = 0; i < nn_; ++i) {
      x[i] = T(factor * Factor(x[i]));
    }
  }

  // sum_j c[j] slot_j for j < count, where slot 0 is the identity if
  // `identity` (the primal list) and has no part otherwise (the derivative's
  // list). A lone slot with coefficient 1 is used in place, without a copy.
  const T* combine(
      const EXPM_REAL* c,
      int count,
      const T* const* slot,
      bool identity,
      T* scratch) const {
    int lone = expm::lone_slot(c, count, identity);
    if (lone >= 1) {
      return slot[lone];
    }
    combine_into(c, count, slot, identity, scratch);
    return scratch;
  }

  // One pass over memory: each slot is read once and dst written once, chunk
  // by chunk, the chunk staying in L1 (at large n the combinations are
  // memory-bound).
  void combine_into(
      const EXPM_REAL* c,
      int count,
      const T* const* slot,
      bool identity,
      T* dst) const {
    constexpr size_t kChunk = 1024;
    Real coef[expm::kMaxSlots];
    const T* src[expm::kMaxSlots];
    int terms = 0;
    for (int j = 1; j < count; ++j) {
      if (c[j] != 0) {
        coef[terms] = Real(c[j]);
        src[terms++] = slot[j];
      }
    }
    for (size_t base = 0; base < nn_; base += kChunk) {
      size_t len = std::min(kChunk, nn_ - base);
      T* __restrict d = dst + base;
      if (terms == 0) {
        std::fill(d, d + len, T(0));
      }
      for (int t = 0; t < terms; ++t) {
        const T* __restrict in = src[t] + base;
        Real ct = coef[t];
        if (t == 0) {
          for (size_t i = 0; i < len; ++i) {
            d[i] = ct * in[i];
          }
        } else {
          for (size_t i = 0; i < len; ++i) {
            d[i] += ct * in[i];
          }
        }
      }
    }
    if (identity && c[0] != 0) {
      for (int i = 0; i < n_; ++i) {
        dst[size_t(i) * n_ + i] += Real(c[0]);
      }
    }
  }

  int n_;
  size_t nn_;
  bool with_frechet_;
  std::unique_ptr<char[]> owned_;
  T* scratch_;
  std::vector<double> col_, col_shifted_; // column sums of the 1-norms
};

// Runs body(begin, end) over [0, count) on up to the available cores when
// the work is large enough to pay for starting threads.
template <typename Body>
void parallel_for(int64_t count, double flops_per_item, Body body) {
  constexpr double kFlopsPerThread = 2e6; // ~0.2 ms of work
  int64_t hw = cpu::available_cores();
  int64_t by_work = int64_t(count * flops_per_item / kFlopsPerThread);
  int64_t workers = std::clamp<int64_t>(std::min(hw, by_work), 1, count);
  if (workers <= 1) {
    body(int64_t(0), count);
    return;
  }
  std::vector<std::thread> threads;
  int64_t chunk = (count + workers - 1) / workers;
  for (int64_t w = 1; w < workers; ++w) {
    int64_t begin = std::min(count, w * chunk);
    int64_t end = std::min(count, begin + chunk);
    threads.emplace_back(body, begin, end);
  }
  body(int64_t(0), std::min(count, chunk));
  for (auto& t : threads) {
    t.join();
  }
}

// n <= 8: every matrix decided on its own as in Evaluator::run, then the
// batch sorted by degree and evaluated in blocks of TinyBlock::kLanes
// matrices of one degree (cpu/tiny_batch.h).
template <typename T, int N>
void tiny_batch(const T* pa, const T* pe, T* px, T* pl, int64_t batch) {
  using Block = cpu::TinyBlock<T, N>;
  constexpr int kLanes = Block::kLanes;
  constexpr size_t kNN = size_t(N) * N;
  if (batch == 0) {
    return;
  }
  std::vector<cpu::MatrixDecision<T>> lanes(batch);
  parallel_for(batch, 20.0 * kNN, [&](int64_t begin, int64_t end) {
    double col[N], col_shifted[N];
    for (int64_t b = begin; b < end; ++b) {
      lanes[b] = decide_matrix<N>(pa + size_t(b) * kNN, N, col, col_shifted);
    }
  });

  // Counting sort by degree; a matrix without an answer is all NaN now.
  int64_t first[expm::kNumDegrees + 1] = {};
  for (const auto& lane : lanes) {
    if (lane.degree != expm::kNoAnswer) {
      ++first[lane.degree + 1];
    }
  }
  std::vector<int64_t> blocks; // start of each block in order
  for (int d = 0; d < expm::kNumDegrees; ++d) {
    for (int64_t k = first[d]; k < first[d] + first[d + 1]; k += kLanes) {
      blocks.push_back(k);
    }
    first[d + 1] += first[d];
  }
  std::vector<int64_t> order(first[expm::kNumDegrees]);
  int64_t next[expm::kNumDegrees];
  std::copy(first, first + expm::kNumDegrees, next);
  using Real = typename RealOf<T>::type;
  const T nan = T(std::numeric_limits<Real>::quiet_NaN());
  for (int64_t b = 0; b < batch; ++b) {
    int d = lanes[b].degree;
    if (d != expm::kNoAnswer) {
      order[next[d]++] = b;
      continue;
    }
    std::fill(px + b * kNN, px + (b + 1) * kNN, nan);
    if (pl) {
      std::fill(pl + b * kNN, pl + (b + 1) * kNN, nan);
    }
  }

  if (blocks.empty()) {
    return;
  }
  // Degree 18 and a few squarings: about 8 products a matrix.
  double flops = 2.0 * 8 * kLanes * double(kNN) * N * (pe ? 3 : 1) + 1e3;
  const bool avx2 = cpu::tiny_has_avx2();
  parallel_for(int64_t(blocks.size()), flops, [&](int64_t begin, int64_t end) {
    auto block = std::make_unique<Block>();
    for (int64_t k = begin; k < end; ++k) {
      int64_t start = blocks[k];
      int degree = lanes[order[start]].degree;
      int64_t stop = std::min(start + kLanes, first[degree + 1]);
      int count = int(stop - start);
      const int64_t* index = order.data() + start;
      if (avx2) {
        cpu::run_tiny_avx2(*block, count, index, pa, pe, px, pl, lanes.data());
      } else {
        block->run(count, index, pa, pe, px, pl, lanes.data());
      }
    }
  });
}

template <typename T>
bool tiny_batch(int n, const T* pa, const T* pe, T* px, T* pl, int64_t batch) {
  switch (n) {
#define EXPM_TINY_CASE(N)                    \
  case N:                                    \
    tiny_batch<T, N>(pa, pe, px, pl, batch); \
    return true;
    EXPM_TINY_CASE(1)
    EXPM_TINY_CASE(2)
    EXPM_TINY_CASE(3)
    EXPM_TINY_CASE(4)
    EXPM_TINY_CASE(5)
    EXPM_TINY_CASE(6)
    EXPM_TINY_CASE(7)
    EXPM_TINY_CASE(8)
#undef EXPM_TINY_CASE
    default:
      return false;
  }
}

template <typename T>
void expm_batch(
    const mx::array& a,
    const mx::array* e,
    mx::array& x,
    mx::array* l) {
  int n = a.shape(-1);
  size_t nn = size_t(n) * n;
  int64_t batch = a.size() / nn;
  const T* pa = reinterpret_cast<const T*>(a.data<void>());
  const T* pe = e ? reinterpret_cast<const T*>(e->data<void>()) : nullptr;
  T* px = reinterpret_cast<T*>(x.data<void>());
  T* pl = l ? reinterpret_cast<T*>(l->data<void>()) : nullptr;
  if (n <= cpu::kTinyMaxN && tiny_batch(n, pa, pe, px, pl, batch)) {
    return;
  }
  // Products from BLAS run on this thread only: OpenBLAS threads a product
  // itself, and concurrent callers contend for its workers (NOTES.md, CPU).
  // The tiny direct-loop sizes spread over the batch.
  bool blas = n >= cpu::kBlasMinSize;
  if (blas) {
    cpu::use_blas_threads(n, std::is_same_v<T, complex64>);
  }
  double flops = blas ? 0.0 : 2.0 * 8 * double(nn) * n * (e ? 3 : 1) + 1e3;
  parallel_for(batch, flops, [&](int64_t begin, int64_t end) {
    Evaluator<T> ev(n, e != nullptr);
    for (int64_t b = begin; b < end; ++b) {
      size_t off = size_t(b) * nn;
      ev.run(
          pa + off, pe ? pe + off : nullptr, px + off, pl ? pl + off : nullptr);
    }
  });
}

// Dispatches on dtype; the op has already cast inputs to a computed dtype and
// made them row-contiguous.
void eval_expm_cpu(
    mx::Stream stream,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  for (auto& out : outputs) {
    out.set_data(mx::allocator::malloc(out.nbytes()));
  }
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (const auto& in : inputs) {
    encoder.set_input_array(in);
  }
  for (auto& out : outputs) {
    encoder.set_output_array(out);
  }
  bool frechet = inputs.size() == 2;
  encoder.dispatch([a = mx::array::unsafe_weak_copy(inputs[0]),
                    e = frechet ? mx::array::unsafe_weak_copy(inputs[1])
                                : mx::array::unsafe_weak_copy(inputs[0]),
                    x = mx::array::unsafe_weak_copy(outputs[0]),
                    l = frechet ? mx::array::unsafe_weak_copy(outputs[1])
                                : mx::array::unsafe_weak_copy(outputs[0]),
                    frechet]() mutable {
    const mx::array* pe = frechet ? &e : nullptr;
    mx::array* pl = frechet ? &l : nullptr;
#ifdef MLX_LINALG_EXT_METAL_EMULATOR
    // Test build: float32 and complex64 run the Metal kernels.
    if (a.dtype() != mx::float64) {
      return metal_emulator::expm_batch(a, pe, x, pl);
    }
#endif
    switch (a.dtype()) {
      case mx::float32:
        return expm_batch<float>(a, pe, x, pl);
      case mx::float64:
        return expm_batch<double>(a, pe, x, pl);
      case mx::complex64:
        return expm_batch<complex64>(a, pe, x, pl);
      default:
        throw std::runtime_error(
            "[matrix_exp] Internal error: unexpected dtype on the CPU.");
    }
  });
}

} // namespace

void MatrixExp::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  std::vector<mx::array> outputs = {out};
  eval_expm_cpu(stream(), inputs, outputs);
}

void ExpmFrechet::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  eval_expm_cpu(stream(), inputs, outputs);
}

} // namespace mlx_linalg_ext
