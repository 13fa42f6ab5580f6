// The product programs of expm_numerics.h in the form the fused small-matrix
// CUDA kernel reads them: float coefficients, per step and operand the slot
// that the combination is on its own (or -1), and where every matrix lives
// among the kernel's shared-memory buffers. Built once on the host
// (small_plan.cpp, from the shared tables) and passed to the kernel as a
// __grid_constant__ parameter, so that no block reads the __constant__
// tables through pointers or copies them to shared memory.
#pragma once

// A .cu file includes it after kernel_utils.cuh, which sets the CUDA
// qualifiers of the tables.
#include "expm_numerics.h"

namespace mlx_linalg_ext::cuda {

// Shared-memory matrices of the fused kernel (per evaluation: the
// derivative has as many again). Degree 18 needs them all.
enum : int { kPlanBuffers = 6 };

// Buffer allocation (small_plan.cpp): a slot keeps one buffer from its
// product to its last use. A step forms its operands in one elementwise pass
// (each element of every source read before any is written), so an operand
// may overwrite a slot that this step reads for the last time; the product
// is held in registers until every thread is done reading (a barrier), so it
// may overwrite its own operands.
struct SmallPlan {
  float step[expm::kNumSteps][2][expm::kMaxSlots]; // [step][left, right][slot]
  float fin[expm::kNumDegrees][expm::kMaxSlots];
  // The slot that operand [left, right] of each step is on its own (or -1:
  // the kernel forms it). The derivative's operand is then formed too.
  signed char lone[expm::kNumSteps][2];
  // Buffer of operand [left, right] of each step (its lone slot's buffer,
  // or where the combination is formed; the same for both when they are
  // the same combination).
  signed char operand[expm::kNumSteps][2];
  // Buffer of slot j (1 = A, 2 + k = product k) for each degree.
  signed char slot[expm::kNumDegrees][expm::kMaxSlots];
  // Whether the product of a step overwrites a buffer its operands are in
  // (it then waits for every thread before storing).
  signed char overwrites[expm::kNumSteps];
};

// Built on first use from expm_numerics.h (host code).
const SmallPlan& small_plan();

} // namespace mlx_linalg_ext::cuda
