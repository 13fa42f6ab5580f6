// CPU emulator of the Metal subset the kernels of metal/ use (test
// infrastructure; never part of a Metal build).
//
// - Address spaces: `device`, `constant`, `threadgroup` are distinct clang
//   address spaces when METAL_EMU_ADDRESS_SPACES is defined (a compile-only
//   check: passing a pointer to the wrong space is an error, as in Metal),
//   and nothing otherwise; `thread` is always nothing.
// - Kernel attributes ([[kernel]], [[buffer(i)]], [[thread_position_in_...]])
//   are ignored; the launcher passes buffers, the int32 constants, the
//   threadgroup memory and the thread positions as plain arguments.
// - threadgroup_barrier is a real barrier between the threads of one
//   threadgroup (fibers, or OS threads for ThreadSanitizer: launcher.h).
// - simdgroup_matrix<float, 8, 8> and its operations, simdgroup_barrier: a
//   SIMD group is 32 consecutive threads (below).
// - The math functions are the C++ ones (Metal compiles without fast math).
//
// Every standard header the emulator needs is included here, before the
// address-space words become macros.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#pragma GCC diagnostic ignored "-Wattributes"
#ifdef __clang__
#pragma clang diagnostic ignored "-Wunknown-attributes"
#endif

typedef unsigned int uint;
typedef uint64_t ulong;

struct uint3 {
  uint x, y, z;
};

#include "hooks.h"

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2 };

inline void threadgroup_barrier(mem_flags) {
  metal_emu::threadgroup_barrier_here();
}

using std::clamp;
using std::cos;
using std::exp;
using std::fabs;
using std::fma;
using std::isfinite;
using std::isnan;
using std::ldexp;
using std::sin;
using std::sqrt;

inline void simdgroup_barrier(mem_flags) {
  metal_emu::simdgroup_barrier_here();
}

// ulong2 for simdgroup_load/store's matrix_origin.
struct ulong2 {
  ulong x, y;
  ulong2(ulong v = 0) : x(v), y(v) {}
  ulong2(ulong x_, ulong y_) : x(x_), y(y_) {}
};

// Each lane holds a copy of the whole matrix (on the GPU it holds 2 of the
// 64 elements); the collective operations keep the copies equal and check
// that they are. A matrix that no operation wrote holds NaN, as uninitialised
// memory does in the emulator.
template <typename T, int Cols, int Rows>
struct simdgroup_matrix {
  static_assert(
      std::is_same_v<T, float> && Cols == 8 && Rows == 8,
      "the emulator has simdgroup_matrix<float, 8, 8> only");
  float e[64];
  simdgroup_matrix() {
    for (float& v : e) {
      v = std::numeric_limits<float>::quiet_NaN();
    }
  }
  // Metal: a diagonal matrix with the given value.
  explicit simdgroup_matrix(T diagonal) {
    for (int i = 0; i < 64; ++i) {
      e[i] = i / 8 == i % 8 ? diagonal : 0.0f;
    }
  }
};

typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;

template <typename T, int Cols, int Rows>
simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value) {
  simdgroup_matrix<T, Cols, Rows> m;
  for (float& v : m.e) {
    v = value;
  }
  return m;
}

template <typename T, int Cols, int Rows>
void simdgroup_multiply_accumulate(
    simdgroup_matrix<T, Cols, Rows>& d,
    const simdgroup_matrix<T, Cols, Rows>& a,
    const simdgroup_matrix<T, Cols, Rows>& b,
    const simdgroup_matrix<T, Cols, Rows>& c) {
  metal_emu::simdgroup_operation(
      {metal_emu::SimdOp::MultiplyAccumulate,
       nullptr,
       0,
       false,
       {a.e, b.e, c.e}},
      d.e);
}

template <typename T, int Cols, int Rows>
void simdgroup_multiply(
    simdgroup_matrix<T, Cols, Rows>& d,
    const simdgroup_matrix<T, Cols, Rows>& a,
    const simdgroup_matrix<T, Cols, Rows>& b) {
  metal_emu::simdgroup_operation(
      {metal_emu::SimdOp::Multiply, nullptr, 0, false, {a.e, b.e}}, d.e);
}

namespace simdgroup_detail {

// The spec leaves the layout of a non-zero origin open (with a transpose in
// particular): the kernels offset the pointer instead.
inline void check_origin(ulong2 origin) {
  if (origin.x != 0 || origin.y != 0) {
    metal_emu::fail("simdgroup_load/store: matrix_origin other than 0");
  }
}

template <typename T, int Cols, int Rows>
void load(
    simdgroup_matrix<T, Cols, Rows>& d,
    const void* src,
    ulong elements_per_row,
    ulong2 origin,
    bool transpose) {
  check_origin(origin);
  metal_emu::simdgroup_operation(
      {metal_emu::SimdOp::Load, src, elements_per_row, transpose, {}}, d.e);
}

template <typename T, int Cols, int Rows>
void store(
    const simdgroup_matrix<T, Cols, Rows>& a,
    const void* dst,
    ulong elements_per_row,
    ulong2 origin,
    bool transpose) {
  check_origin(origin);
  metal_emu::simdgroup_operation(
      {metal_emu::SimdOp::Store, dst, elements_per_row, transpose, {a.e}},
      nullptr);
}

} // namespace simdgroup_detail

} // namespace metal

#define EXPM_METAL_ASSERT(cond) \
  ((cond) ? (void)0 : metal_emu::fail("kernel invariant broken: " #cond))

#define EXPM_THREADGROUP_MEMORY

#ifdef METAL_EMU_ADDRESS_SPACES
#define device __attribute__((address_space(1)))
#define constant __attribute__((address_space(2)))
#define threadgroup __attribute__((address_space(3)))
#else
#define device
#define constant
#define threadgroup
#endif
#define thread

// simdgroup_load/store take device or threadgroup pointers (Metal has one
// overload per address space); with distinct address spaces any other
// pointer does not compile.
namespace metal {

#ifdef METAL_EMU_ADDRESS_SPACES
#define METAL_EMU_SIMD_SPACES(X) X(device) X(threadgroup)
#else
#define METAL_EMU_SIMD_SPACES(X) X()
#endif

#define METAL_EMU_SIMD_MEMORY(space)        \
  template <typename T, int Cols, int Rows> \
  void simdgroup_load(                      \
      simdgroup_matrix<T, Cols, Rows>& d,   \
      const space T* src,                   \
      ulong elements_per_row = Cols,        \
      ulong2 matrix_origin = 0,             \
      bool transpose_matrix = false) {      \
    simdgroup_detail::load(                 \
        d,                                  \
        (const void*)src,                   \
        elements_per_row,                   \
        matrix_origin,                      \
        transpose_matrix);                  \
  }                                         \
  template <typename T, int Cols, int Rows> \
  void simdgroup_store(                     \
      simdgroup_matrix<T, Cols, Rows> a,    \
      space T* dst,                         \
      ulong elements_per_row = Cols,        \
      ulong2 matrix_origin = 0,             \
      bool transpose_matrix = false) {      \
    simdgroup_detail::store(                \
        a,                                  \
        (const void*)dst,                   \
        elements_per_row,                   \
        matrix_origin,                      \
        transpose_matrix);                  \
  }
METAL_EMU_SIMD_SPACES(METAL_EMU_SIMD_MEMORY)
#undef METAL_EMU_SIMD_MEMORY
#undef METAL_EMU_SIMD_SPACES

} // namespace metal
