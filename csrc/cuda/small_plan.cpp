// Host side of small_plan.h: the shared tables of expm_numerics.h (host
// qualifiers) turned into the fused kernel's plan.
#include "cuda/small_plan.h"

#include "expm_numerics.h"

namespace mlx_linalg_ext::cuda {

static_assert(int(kPlanSteps) == int(expm::kNumSteps));
static_assert(int(kPlanDegrees) == int(expm::kNumDegrees));
static_assert(int(kPlanSlots) == int(expm::kMaxSlots));

namespace {

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
        plan.lone[step][side][0] = expm::lone_slot(c, count, true);
        plan.lone[step][side][1] = expm::lone_slot(c, count, false);
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
