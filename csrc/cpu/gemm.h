// Square matrix products for the CPU backend: C = A B or C += A B, row-major
// n x n. Small matrices use a direct loop (a BLAS call costs more than the
// arithmetic there); larger ones go to the platform BLAS: Accelerate on
// macOS, OpenBLAS from the scipy-openblas32 wheel elsewhere.
#pragma once

#include <algorithm>
#include <atomic>
#include <complex>
#include <cstddef>
#include <cstdlib>
#include <thread>

#ifdef __linux__
#include <sched.h>
#endif

#ifdef __APPLE__
#ifndef ACCELERATE_NEW_LAPACK
#define ACCELERATE_NEW_LAPACK
#endif
#include <Accelerate/Accelerate.h>
#define EXPM_CBLAS(name) cblas_##name
#ifdef __LAPACK_float_complex
using blas_complex = __LAPACK_float_complex; // Accelerate's new-LAPACK type
#else
using blas_complex = void;
#endif
#else
// scipy-openblas32 prefixes every symbol with scipy_ so that it cannot clash
// with another BLAS loaded in the same process.
#include <cblas.h>
#define EXPM_CBLAS(name) scipy_cblas_##name
using blas_complex = void;
#endif

namespace mlx_linalg_ext::cpu {

using complex64 = std::complex<float>;

// Below this size the direct loop beats a BLAS call; from n = 4 on OpenBLAS
// is faster even for one small product (NOTES.md, CPU).
constexpr int kBlasMinSize = 4;

// c += a * b without std::complex's NaN-recovery branches, which block
// vectorisation; NaNs still propagate.
inline void fma_into(float& c, float a, float b) {
  c += a * b;
}
inline void fma_into(double& c, double a, double b) {
  c += a * b;
}
inline void fma_into(complex64& c, complex64 a, complex64 b) {
  c = complex64(
      c.real() + a.real() * b.real() - a.imag() * b.imag(),
      c.imag() + a.real() * b.imag() + a.imag() * b.real());
}

template <typename T>
void small_gemm(int n, const T* a, const T* b, T* c, bool accumulate) {
  for (int i = 0; i < n; ++i) {
    T* __restrict crow = c + size_t(i) * n;
    if (!accumulate) {
      for (int j = 0; j < n; ++j) {
        crow[j] = T(0);
      }
    }
    for (int k = 0; k < n; ++k) {
      const T aik = a[size_t(i) * n + k];
      const T* __restrict brow = b + size_t(k) * n;
      for (int j = 0; j < n; ++j) {
        fma_into(crow[j], aik, brow[j]);
      }
    }
  }
}

inline void
blas_gemm(int n, const float* a, const float* b, float* c, bool accumulate) {
  EXPM_CBLAS(sgemm)
  (CblasRowMajor,
   CblasNoTrans,
   CblasNoTrans,
   n,
   n,
   n,
   1.0f,
   a,
   n,
   b,
   n,
   accumulate ? 1.0f : 0.0f,
   c,
   n);
}

inline void
blas_gemm(int n, const double* a, const double* b, double* c, bool accumulate) {
  EXPM_CBLAS(dgemm)
  (CblasRowMajor,
   CblasNoTrans,
   CblasNoTrans,
   n,
   n,
   n,
   1.0,
   a,
   n,
   b,
   n,
   accumulate ? 1.0 : 0.0,
   c,
   n);
}

inline void blas_gemm(
    int n,
    const complex64* a,
    const complex64* b,
    complex64* c,
    bool accumulate) {
  const complex64 one(1.0f), beta(accumulate ? 1.0f : 0.0f);
  auto ptr = [](const complex64* p) {
    return reinterpret_cast<const blas_complex*>(p);
  };
  EXPM_CBLAS(cgemm)
  (CblasRowMajor,
   CblasNoTrans,
   CblasNoTrans,
   n,
   n,
   n,
   ptr(&one),
   ptr(a),
   n,
   ptr(b),
   n,
   ptr(&beta),
   reinterpret_cast<blas_complex*>(c),
   n);
}

// CPU cores this process may run on (its affinity mask, e.g. under taskset or
// a container's cpuset), not the machine's.
inline int available_cores() {
  static const int cores = [] {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      return std::max(1, CPU_COUNT(&set));
    }
#endif
    return std::max(1, int(std::thread::hardware_concurrency()));
  }();
  return cores;
}

// Products below this many real flops (2 n^3, 8 n^3 for complex) run on one
// OpenBLAS thread: real n < 794, complex n < 500. OpenBLAS's workers wait for
// each other, so when other processes keep the cores busy a threaded product
// waits a scheduler time slice for a descheduled worker; below this size that
// costs far more than a second thread saves on idle cores
// (bench/results/cpu-blas-threads-20261201.txt).
constexpr double kThreadedMinFlops = 1e9;

// OpenBLAS threads for one n x n product: OPENBLAS_NUM_THREADS when the user
// set it, else one below kThreadedMinFlops and every available core above;
// never more than the available cores.
inline int blas_threads_for(int n, bool complex) {
  static const int user = [] {
    const char* env = std::getenv("OPENBLAS_NUM_THREADS");
    return env ? std::max(0, std::atoi(env)) : 0;
  }();
  if (user > 0) {
    return std::min(user, available_cores());
  }
  double flops = 2.0 * n * double(n) * n * (complex ? 4 : 1);
  return flops < kThreadedMinFlops ? 1 : available_cores();
}

// Sets the OpenBLAS thread count (process-wide) when it differs from the
// last one set here. Accelerate schedules its own threads.
inline void use_blas_threads(int n, bool complex) {
#ifndef __APPLE__
  static std::atomic<int> current{0};
  int threads = blas_threads_for(n, complex);
  if (current.exchange(threads) != threads) {
    scipy_openblas_set_num_threads(threads);
  }
#else
  (void)n;
  (void)complex;
#endif
}

template <typename T>
void gemm(int n, const T* a, const T* b, T* c, bool accumulate = false) {
  if (n < kBlasMinSize) {
    small_gemm(n, a, b, c, accumulate);
  } else {
    blas_gemm(n, a, b, c, accumulate);
  }
}

} // namespace mlx_linalg_ext::cpu
