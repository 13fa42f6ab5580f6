// Standalone check of the Metal kernels on the CPU emulator, without Python:
// runs launch plans for a few sizes of each path (fused, predicated, the
// latter at the edges of its product tiles), forward and Frechet, float32
// and complex64, and compares with a double-precision reference (Taylor
// series with scaling and squaring; the Frechet derivative as the
// upper-right block of exp([[A, E], [0, A]])). Built with
// -fsanitize=thread and run with METAL_EMU_MODE=threads by
// scripts/check-metal.sh.
//
// Also the emulator's own SIMD-group matrix operations and the broken rules
// it must report (simdgroup_check.cpp).
//
// Usage: metal_emu_selftest [quick | simd | fault <name>]
//   quick: fewer sizes; simd: the SIMD-group checks alone; fault: runs one
//   broken rule (the SIMD-group checks start it in a child process).
#include <cmath>
#include <complex>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "launcher.h"

namespace {

using cd = std::complex<double>;
using mlx_linalg_ext::metal::Type;
using Mat = std::vector<cd>;

// The reference is the test's own single-threaded arithmetic: not worth
// ThreadSanitizer's instrumentation, which made it a large part of the run.
__attribute__((no_sanitize("thread"))) Mat
matmul(const Mat& a, const Mat& b, int n) {
  Mat c(size_t(n) * n);
  for (int i = 0; i < n; ++i) {
    for (int k = 0; k < n; ++k) {
      cd aik = a[size_t(i) * n + k];
      for (int j = 0; j < n; ++j) {
        c[size_t(i) * n + j] += aik * b[size_t(k) * n + j];
      }
    }
  }
  return c;
}

// exp(A) by 2^-s scaling, a degree-24 Taylor series and s squarings.
Mat expm_reference(const Mat& a, int n) {
  double norm = 0;
  for (int j = 0; j < n; ++j) {
    double c = 0;
    for (int i = 0; i < n; ++i) {
      c += std::abs(a[size_t(i) * n + j]);
    }
    norm = std::max(norm, c);
  }
  int s = norm > 0.25 ? int(std::ceil(std::log2(norm / 0.25))) : 0;
  Mat x(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    x[i] = std::ldexp(1.0, -s) * a[i];
  }
  Mat sum(a.size());
  Mat term(a.size());
  for (int i = 0; i < n; ++i) {
    sum[size_t(i) * n + i] = term[size_t(i) * n + i] = 1;
  }
  for (int k = 1; k <= 24; ++k) {
    term = matmul(term, x, n);
    for (size_t i = 0; i < term.size(); ++i) {
      term[i] /= double(k);
      sum[i] += term[i];
    }
  }
  for (int i = 0; i < s; ++i) {
    sum = matmul(sum, sum, n);
  }
  return sum;
}

// L(A, E): the upper-right block of exp([[A, E], [0, A]]).
Mat frechet_reference(const Mat& a, const Mat& e, int n) {
  int m = 2 * n;
  Mat big(size_t(m) * m);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      big[size_t(i) * m + j] = a[size_t(i) * n + j];
      big[size_t(i) * m + n + j] = e[size_t(i) * n + j];
      big[size_t(n + i) * m + n + j] = a[size_t(i) * n + j];
    }
  }
  Mat x = expm_reference(big, m);
  Mat l(size_t(n) * n);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      l[size_t(i) * n + j] = x[size_t(i) * m + n + j];
    }
  }
  return l;
}

double relerr(const Mat& got, const Mat& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += std::norm(got[i] - want[i]);
    den += std::norm(want[i]);
  }
  return std::sqrt(num / den);
}

int failures = 0;

// Runs one batch through the plan of (type, n, batch, frechet) and checks
// each matrix. scales[b] sets the 1-norm band of matrix b; a NaN scale plants
// a NaN, whose matrix must come back all NaN without touching the others; a
// negative one -b makes blocks [[0, b], [1/b, 0]] (B^2 = I), whose squarings
// both overscaling rules lower, the second one after the first.
void check(Type type, int n, bool frechet, const std::vector<double>& scales) {
  const bool cplx = type == Type::Complex64;
  const int64_t batch = int64_t(scales.size());
  const size_t nn = size_t(n) * n;
  std::mt19937 gen(unsigned(n * 131 + batch * 7 + frechet * 3 + cplx));
  std::normal_distribution<double> normal;
  std::vector<Mat> as(batch), es(batch);
  std::vector<float> in_a(nn * batch * (cplx ? 2 : 1));
  std::vector<float> in_e(in_a.size());
  for (int64_t b = 0; b < batch; ++b) {
    as[b].resize(nn);
    es[b].resize(nn);
    double scale = std::isnan(scales[b]) ? 1.0 : scales[b];
    for (size_t i = 0; i < nn; ++i) {
      cd v(normal(gen), cplx ? normal(gen) : 0.0);
      cd w(normal(gen), cplx ? normal(gen) : 0.0);
      v *= scale / std::sqrt(double(n) * (cplx ? 2 : 1));
      if (scale < 0) {
        const int r = int(i) / n, c = int(i) % n;
        v = r % 2 == 0 && c == r + 1   ? cd(-scale)
            : r % 2 == 1 && c == r - 1 ? cd(-1.0 / scale)
                                       : cd(0);
      }
      // The inputs the kernels see are float: the reference takes them too.
      v = cd(float(v.real()), float(v.imag()));
      w = cd(float(w.real()), float(w.imag()));
      if (std::isnan(scales[b]) && i == nn / 2) {
        v = cd(NAN, 0);
      }
      as[b][i] = v;
      es[b][i] = w;
      size_t k = b * nn + i;
      if (cplx) {
        in_a[2 * k] = float(v.real());
        in_a[2 * k + 1] = float(v.imag());
        in_e[2 * k] = float(w.real());
        in_e[2 * k + 1] = float(w.imag());
      } else {
        in_a[k] = float(v.real());
        in_e[k] = float(w.real());
      }
    }
  }
  std::vector<float> out_x(in_a.size(), 12345.0f), out_l(in_a.size(), 12345.0f);
  auto plan = mlx_linalg_ext::metal::make_plan(type, n, batch, frechet);
  metal_emu::Bindings bind;
  bind.a = in_a.data();
  bind.e = frechet ? in_e.data() : nullptr;
  bind.x = out_x.data();
  bind.l = frechet ? out_l.data() : nullptr;
  metal_emu::run_plan(plan, bind, metal_emu::options_from_env());
  // The tiny kernel runs the fused kernel's evaluator: the fused kernel
  // (what a device with less threadgroup memory would run) must give the
  // same bits.
  bool same_bits = true;
  if (plan.steps[0].kernel.find("_tiny_") != std::string::npos) {
    std::vector<float> fx(in_a.size(), 54321.0f), fl(in_a.size(), 54321.0f);
    auto fused = mlx_linalg_ext::metal::make_plan(
        type,
        n,
        batch,
        frechet,
        expm_metal::small_threadgroup_bytes(n, cplx ? 8 : 4, frechet));
    metal_emu::Bindings fb = bind;
    fb.x = fx.data();
    fb.l = frechet ? fl.data() : nullptr;
    metal_emu::run_plan(fused, fb, metal_emu::options_from_env());
    same_bits = fused.steps[0].kernel.find("_small_") != std::string::npos &&
        std::memcmp(fx.data(), out_x.data(), fx.size() * 4) == 0 &&
        (!frechet || std::memcmp(fl.data(), out_l.data(), fl.size() * 4) == 0);
  }

  auto read = [&](const std::vector<float>& v, int64_t b) {
    Mat m(nn);
    for (size_t i = 0; i < nn; ++i) {
      size_t k = b * nn + i;
      m[i] = cplx ? cd(v[2 * k], v[2 * k + 1]) : cd(v[k], 0);
    }
    return m;
  };
  const std::string where = std::string(cplx ? "complex64" : "float32") +
      " n=" + std::to_string(n) + (frechet ? " frechet" : " forward") +
      " path=" + (plan.steps.size() == 1 ? plan.steps[0].kernel : "predicated");
  int failed = 0;
  double max_ex = 0, max_el = 0;
  for (int64_t b = 0; b < batch; ++b) {
    Mat x = read(out_x, b);
    Mat l = read(out_l, b);
    std::string what = where + " scale=" + std::to_string(scales[b]) +
        " b=" + std::to_string(b);
    bool ok;
    double ex = 0, el = 0;
    if (std::isnan(scales[b])) {
      ok = true;
      for (size_t i = 0; i < nn; ++i) {
        ok = ok && std::isnan(x[i].real()) &&
            (!frechet || std::isnan(l[i].real()));
      }
    } else {
      ex = relerr(x, expm_reference(as[b], n));
      ok = ex < 2e-5 * std::max(1.0, scales[b]);
      if (frechet) {
        el = relerr(l, frechet_reference(as[b], es[b], n));
        ok = ok && el < 5e-5 * std::max(1.0, scales[b]);
      }
    }
    if (!ok) {
      ++failures;
      ++failed;
    }
    max_ex = std::max(max_ex, ex);
    max_el = std::max(max_el, el);
    // Large batches (the tiny kernel's) print their failures and a summary.
    if (!ok || batch <= 16) {
      std::printf(
          "%s %-70s relerr X %.2e L %.2e\n",
          ok ? "ok  " : "FAIL",
          what.c_str(),
          ex,
          el);
    }
  }
  if (!same_bits) {
    ++failures;
    std::printf("FAIL %s: not the fused kernel's bits\n", where.c_str());
  }
  if (batch > 16) {
    std::string what = where + " batch=" + std::to_string(batch);
    std::printf(
        "%s %-70s max relerr X %.2e L %.2e\n",
        failed || !same_bits ? "FAIL" : "ok  ",
        what.c_str(),
        max_ex,
        max_el);
  }
}

} // namespace

// simdgroup_check.cpp
int check_simdgroup_emulation();
int run_simdgroup_fault(const char* name);

int main(int argc, char** argv) {
  using mlx_linalg_ext::metal::uses_small_kernel;
  using mlx_linalg_ext::metal::uses_tiny_kernel;
  // A line at a time into CI logs, whose stdout is a pipe.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc > 2 && std::strcmp(argv[1], "fault") == 0) {
    return run_simdgroup_fault(argv[2]);
  }
  failures += check_simdgroup_emulation();
  if (argc > 1 && std::strcmp(argv[1], "simd") == 0) {
    std::printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
  }
  bool quick = argc > 1 && std::strcmp(argv[1], "quick") == 0;
  // 1-norm bands: degree 1..18 without squarings, then with 2 and 7
  // squarings (e^60 still fits float32); a NaN matrix in the batch; blocks
  // [[0, 1024], [1/1024, 0]] (first rule: s = 2, second: fewer).
  std::vector<double> mixed = {
      1e-8, 3e-4, 0.03, 0.4, 1.2, 2.5, 10, NAN, 60, -1024};
  std::vector<double> few = {0.4, NAN, 40, -1024};
  // The tiny sizes' batches cycle through these: at n = 3 a scale of 60
  // reaches 1-norms past 100, where exp(A) overflows float32.
  std::vector<double> cycle = {
      1e-8, 3e-4, 0.03, 0.4, 1.2, 2.5, 10, NAN, 25, -1024};
  // Predicated sizes at the edges of the product tiles (64 for float32, in
  // fragments of 8; 32 for complex64): 33 and 65 one past a multiple of 32
  // and 64, 40 whole fragments in a partial tile, 100 a partial fragment in
  // a partial tile.
  const std::vector<int> edges = {33, 40, 65, 100};
  for (Type type : {Type::Float32, Type::Complex64}) {
    for (bool frechet : {false, true}) {
      // Every path: tiny sizes, the first fused one, then the predicated
      // path; quick takes one size of each.
      int fused = 1;
      while (uses_tiny_kernel(type, fused, frechet)) {
        ++fused;
      }
      int past = fused;
      while (uses_small_kernel(type, past, frechet)) {
        ++past;
      }
      std::vector<int> sizes = quick
          ? std::vector<int>{3, fused, past}
          : std::vector<int>{1, 3, 5, 8, fused, 16, past, 70};
      for (int n : edges) {
        if (n != past) {
          sizes.push_back(n);
        }
      }
      for (int n : sizes) {
        std::vector<double> scales = quick || n > 40 ? few : mixed;
        if (uses_tiny_kernel(type, n, frechet)) {
          // One threadgroup's matrices and a tail of 3: the bands mixed
          // within each SIMD group, and the last threadgroup masked.
          int matrices = expm_metal::tiny_matrices(
              n, type == Type::Complex64 ? 8 : 4, frechet);
          scales.clear();
          for (int b = 0; b < matrices + 3; ++b) {
            scales.push_back(cycle[b % cycle.size()]);
          }
        }
        check(type, n, frechet, scales);
      }
    }
  }
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
