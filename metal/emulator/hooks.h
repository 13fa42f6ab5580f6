// What the metal_stdlib shim (metal_emu.h) calls in the launcher
// (launcher.cpp): the rules of the execution model that need the threadgroup
// in flight. Plain C++, free of the shim's address-space macros.
#pragma once

#include <cstdint>

namespace metal_emu {

// Reports a broken rule of the Metal execution model (or a kernel
// invariant) and aborts: the tests must not pass over it.
[[noreturn]] void fail(const char* what);

// The barrier of the calling GPU thread's threadgroup (launcher.cpp).
void threadgroup_barrier_here();

// The barrier of the calling GPU thread's SIMD group (launcher.cpp).
void simdgroup_barrier_here();

// A collective operation of a SIMD group on 8 x 8 float matrices (row-major,
// 64 values). Memory layouts: element (r, c) at memory[r * elements_per_row
// + c], or at memory[c * elements_per_row + r] when transposed.
enum class SimdOp : int { Load, Store, Multiply, MultiplyAccumulate };

struct SimdCall {
  SimdOp op;
  const void* memory; // Load: the source; Store: the destination
  uint64_t elements_per_row;
  bool transpose;
  // The calling lane's matrices: Store: the stored one; Multiply: a, b;
  // MultiplyAccumulate: a, b, c.
  const float* operands[3];
};

// Runs call for the SIMD group of the calling GPU thread (launcher.cpp).
// The operation runs once, in full, when the group's first lane reaches it;
// every other lane must make the same call at the same point of its own
// sequence of collective operations (checked) and receives the same result
// (64 values into result, unless it is null). So the group's collective
// operations happen in lockstep, in program order, while the lanes' own
// loads and stores are ordered with them only by a barrier.
void simdgroup_operation(const SimdCall& call, float* result);

} // namespace metal_emu
