// The product programs of expm_numerics.h in the form the fused small-matrix
// CUDA kernel reads them: float coefficients and, per step, operand and list,
// the slot that the combination is on its own (or -1). Built once on the host
// (small_plan.cpp, from the shared tables) and passed to the kernel as a
// __grid_constant__ parameter: reading the __constant__ tables through
// pointers inside the steps, or copying them to shared memory in every
// block, cost instructions and dependent loads in every block.
#pragma once

namespace mlx_linalg_ext::cuda {

enum : int { kPlanSteps = 15, kPlanDegrees = 6, kPlanSlots = 7 };

struct SmallPlan {
  float step[kPlanSteps][2][kPlanSlots]; // [step][left, right][slot]
  float fin[kPlanDegrees][kPlanSlots];
  signed char lone[kPlanSteps][2][2]; // [step][left, right][primal, dual]
};

// Built on first use from expm_numerics.h (host code).
const SmallPlan& small_plan();

} // namespace mlx_linalg_ext::cuda
