// Triangular matrices: the diagonal and the first off-diagonal of
// exp(2^-k A) in closed form, written over the squared values after every
// squaring (Al-Mohy & Higham 2009, Code Fragment 2.1; Higham, "Functions of
// Matrices", 2008, (10.42)). Squaring doubles the relative error of every
// diagonal entry, so s squarings alone leave 2^s u there, and the
// off-diagonal entries inherit it; with the exact band the error stays near
// u whatever s (NOTES.md, "Overscaling").
#pragma once

#include <cmath>
#include <complex>
#include <cstddef>
#include <type_traits>

namespace mlx_linalg_ext::cpu {

enum Triangle : int { kFull = 0, kUpper = 1, kLower = 2 };

// Which triangle the row-major n x n matrix a is (exact zeros only; a
// diagonal matrix counts as upper).
template <typename T>
Triangle triangle_of(const T* a, int n) {
  bool upper = true, lower = true;
  for (int i = 0; i < n && (upper || lower); ++i) {
    for (int j = 0; j < n; ++j) {
      if (a[size_t(i) * n + j] != T(0)) {
        upper = upper && j >= i;
        lower = lower && j <= i;
      }
    }
  }
  return upper ? kUpper : lower ? kLower : kFull;
}

// sinh(x) / x, 1 at 0.
template <typename C>
C sinch(C x) {
  return x == C(0) ? C(1) : std::sinh(x) / x;
}

// For triangle t of a, calls put(i, j, v) with v = exp(2^-k A)_ij for the
// diagonal and the first off-diagonal, in double (complex<double> for
// complex a): e^(h a_ii), and h a_ij e^((l_i + l_j) / 2) sinch((l_i - l_j) / 2)
// with l = h a_ii, h = 2^-k, which has no cancellation when l_i ~ l_j.
template <typename T, typename Put>
void exact_band(const T* a, int n, Triangle t, int k, Put put) {
  using Wide = std::
      conditional_t<std::is_floating_point_v<T>, double, std::complex<double>>;
  const double h = std::ldexp(1.0, -k);
  auto at = [&](int i, int j) { return Wide(a[size_t(i) * n + j]) * h; };
  for (int i = 0; i < n; ++i) {
    put(i, i, std::exp(at(i, i)));
  }
  for (int i = 0; i + 1 < n; ++i) {
    int r = t == kUpper ? i : i + 1;
    int c = t == kUpper ? i + 1 : i;
    Wide li = at(i, i), lj = at(i + 1, i + 1);
    put(r, c, at(r, c) * std::exp((li + lj) * 0.5) * sinch((li - lj) * 0.5));
  }
}

} // namespace mlx_linalg_ext::cpu
