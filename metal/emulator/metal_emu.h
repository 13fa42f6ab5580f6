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
// - The math functions are the C++ ones (Metal compiles without fast math).
//
// Every standard header the emulator needs is included here, before the
// address-space words become macros.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

namespace metal_emu {

// Reports a broken rule of the Metal execution model (or a kernel
// invariant) and aborts: the tests must not pass over it.
[[noreturn]] void fail(const char* what);

// The barrier of the calling GPU thread's threadgroup (launcher.cpp).
void threadgroup_barrier_here();

} // namespace metal_emu

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2 };

inline void threadgroup_barrier(mem_flags) {
  metal_emu::threadgroup_barrier_here();
}

using std::cos;
using std::exp;
using std::fabs;
using std::fma;
using std::isfinite;
using std::isnan;
using std::ldexp;
using std::sin;
using std::sqrt;

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
