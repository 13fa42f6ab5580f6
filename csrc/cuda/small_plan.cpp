// Host side of small_plan.h: the shared tables of expm_numerics.h (host
// qualifiers) turned into the fused kernel's plan.
#include "cuda/small_plan.h"

#include "expm_numerics.h"

namespace mlx_linalg_ext::cuda {

static_assert(int(kPlanSteps) == int(expm::kNumSteps));
static_assert(int(kPlanDegrees) == int(expm::kNumDegrees));
static_assert(int(kPlanSlots) == int(expm::kMaxSlots));

namespace {

// As Evaluator::combine on the CPU (and lone_slot in matrix_exp.cu): the slot
// j >= 1 that sum_j c[j] slot_j is on its own (one nonzero coefficient, equal
// to 1; slot 0, the identity, only in the primal list), or -1.
int lone_slot(const double* c, int count, bool identity) {
  int lone = -1;
  for (int j = identity ? 0 : 1; j < count; ++j) {
    if (c[j] != 0) {
      if (lone != -1 || j == 0 || c[j] != 1) {
        return -1;
      }
      lone = j;
    }
  }
  return lone;
}

SmallPlan build() {
  SmallPlan plan{};
  for (int d = 1; d < expm::kNumDegrees; ++d) {
    for (int k = 0; k < expm::kNumProducts[d]; ++k) {
      int step = expm::kFirstStep[d] + k;
      int count = 2 + k; // the slots made before this step
      for (int side = 0; side < 2; ++side) {
        const double* c =
            side == 0 ? expm::kStepLeft[step] : expm::kStepRight[step];
        for (int j = 0; j < expm::kMaxSlots; ++j) {
          plan.step[step][side][j] = j < count ? float(c[j]) : 0.0f;
        }
        plan.lone[step][side][0] = lone_slot(c, count, true);
        plan.lone[step][side][1] = lone_slot(c, count, false);
      }
    }
  }
  for (int d = 0; d < expm::kNumDegrees; ++d) {
    for (int j = 0; j < expm::kMaxSlots; ++j) {
      plan.fin[d][j] = j < expm::num_slots(d) ? float(expm::kFinal[d][j]) : 0;
    }
  }
  return plan;
}

} // namespace

const SmallPlan& small_plan() {
  static const SmallPlan plan = build();
  return plan;
}

} // namespace mlx_linalg_ext::cuda
