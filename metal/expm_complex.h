// Element types of the Metal kernels: float and a complex64 aggregate with
// the few operations the exponential needs. An aggregate (no constructors)
// copies between the thread, threadgroup and device address spaces without
// address-space-qualified constructors.
#pragma once

#include <metal_stdlib>

using namespace metal;

namespace expm_metal {

struct complex64 {
  float re;
  float im;
};

inline complex64 operator+(complex64 a, complex64 b) {
  complex64 r = {a.re + b.re, a.im + b.im};
  return r;
}

inline complex64 operator-(complex64 a, complex64 b) {
  complex64 r = {a.re - b.re, a.im - b.im};
  return r;
}

inline complex64 operator*(complex64 a, complex64 b) {
  complex64 r = {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
  return r;
}

inline complex64 operator*(float a, complex64 b) {
  complex64 r = {a * b.re, a * b.im};
  return r;
}

inline complex64 operator/(complex64 a, float b) {
  complex64 r = {a.re / b, a.im / b};
  return r;
}

// c + a b with fused multiply-adds (one rounding per real product, as in
// BLAS kernels; Metal's fma is exact before its rounding).
inline float mul_add(float a, float b, float c) {
  return fma(a, b, c);
}

inline complex64 mul_add(float a, complex64 b, complex64 c) {
  complex64 r = {fma(a, b.re, c.re), fma(a, b.im, c.im)};
  return r;
}

inline complex64 mul_add(complex64 a, complex64 b, complex64 c) {
  complex64 r = {
      fma(a.re, b.re, fma(-a.im, b.im, c.re)),
      fma(a.re, b.im, fma(a.im, b.re, c.im))};
  return r;
}

// What the kernels need beyond + - *: construction from (re, im), the
// modulus of the 1-norm, NaN, and e^z.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static float make(float re, float) {
    return re;
  }
  static float magnitude(float x) {
    return fabs(x);
  }
  static float re(float x) {
    return x;
  }
  static float im(float) {
    return 0.0f;
  }
  static float exp_of(float re, float) {
    return exp(re);
  }
};

template <>
struct Elem<complex64> {
  static complex64 make(float re, float im) {
    complex64 r = {re, im};
    return r;
  }
  // Overflows to Inf only where |z| > 1e19, far past the norms decide()
  // answers (2^24).
  static float magnitude(complex64 z) {
    return sqrt(z.re * z.re + z.im * z.im);
  }
  static float re(complex64 z) {
    return z.re;
  }
  static float im(complex64 z) {
    return z.im;
  }
  static complex64 exp_of(float re, float im) {
    float m = exp(re);
    complex64 r = {m * cos(im), m * sin(im)};
    return r;
  }
};

} // namespace expm_metal
