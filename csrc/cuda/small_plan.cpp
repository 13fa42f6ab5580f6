// Host side of small_plan.h: the shared tables of expm_numerics.h (host
// qualifiers) turned into the fused kernel's plan.
#include "cuda/small_plan.h"

#include <stdexcept>

#include "expm_numerics.h"

namespace mlx_linalg_ext::cuda {

namespace {

// Whether step `step` (or the final combination, step = -1) of degree `d`
// reads slot j.
bool reads(int d, int step, int j) {
  if (step < 0) {
    return expm::kFinal[d][j] != 0;
  }
  return expm::kStepLeft[step][j] != 0 || expm::kStepRight[step][j] != 0;
}

// Buffers of one degree's slots and operands (see small_plan.h): the lowest
// buffer that holds nothing needed later.
void allocate(int d, SmallPlan& plan) {
  const int products = expm::kNumProducts[d];
  const int slots = expm::num_slots(d);
  // last[j]: the last step (0 .. products - 1, or `products` for the final
  // combination) that reads slot j.
  int last[expm::kMaxSlots] = {};
  for (int j = 1; j < slots; ++j) {
    last[j] = reads(d, -1, j) ? products : -1;
    for (int k = products - 1; last[j] < 0 && k >= 0; --k) {
      if (reads(d, expm::kFirstStep[d] + k, j)) {
        last[j] = k;
      }
    }
  }
  int holder[kPlanBuffers]; // the slot a buffer holds, or 0
  for (int& h : holder) {
    h = 0;
  }
  // Free for step k: holds no slot, or one that step k reads last.
  auto free_at = [&](int b, int k) {
    return holder[b] == 0 || last[holder[b]] <= k;
  };
  auto lowest = [&](int k, int skip0, int skip1) {
    for (int b = 0; b < kPlanBuffers; ++b) {
      if (b != skip0 && b != skip1 && free_at(b, k)) {
        return b;
      }
    }
    throw std::logic_error(
        "[matrix_exp] Fused-kernel plan needs more buffers.");
  };
  plan.slot[d][1] = 0;
  holder[0] = 1;
  for (int k = 0; k < products; ++k) {
    const int step = expm::kFirstStep[d] + k;
    const float* left = plan.step[step][0];
    const float* right = plan.step[step][1];
    const int lone_l = plan.lone[step][0];
    const int lone_r = plan.lone[step][1];
    bool same = lone_l < 0 && lone_r < 0;
    for (int j = 0; j < expm::kMaxSlots; ++j) {
      same = same && left[j] == right[j];
    }
    // Lone operands stay where their slot is; a formed one must not
    // overwrite them.
    int bl = lone_l > 0 ? plan.slot[d][lone_l] : -1;
    int br = lone_r > 0 ? plan.slot[d][lone_r] : -1;
    if (bl < 0) {
      bl = lowest(k, br, -1);
    }
    if (br < 0) {
      br = same ? bl : lowest(k, bl, -1);
    }
    plan.operand[step][0] = static_cast<signed char>(bl);
    plan.operand[step][1] = static_cast<signed char>(br);
    // The product, after the operands are consumed: the lowest buffer whose
    // slot is dead after this step (formed operands hold no slot).
    for (int b = 0; b < kPlanBuffers; ++b) {
      if (holder[b] != 0 && last[holder[b]] <= k) {
        holder[b] = 0;
      }
    }
    const int out = lowest(k, -1, -1);
    plan.slot[d][2 + k] = static_cast<signed char>(out);
    plan.overwrites[step] = out == bl || out == br;
    holder[out] = 2 + k;
  }
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
        plan.lone[step][side] = expm::lone_slot(c, count, true);
      }
    }
  }
  for (int d = 0; d < expm::kNumDegrees; ++d) {
    for (int j = 0; j < expm::kMaxSlots; ++j) {
      plan.fin[d][j] = j < expm::num_slots(d) ? float(expm::kFinal[d][j]) : 0;
    }
    allocate(d, plan);
  }
  return plan;
}

} // namespace

const SmallPlan& small_plan() {
  static const SmallPlan plan = build();
  return plan;
}

} // namespace mlx_linalg_ext::cuda
