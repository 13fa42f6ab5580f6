// The Metal kernels on the CPU emulator behind eval_cpu (test builds only).
#include "metal_emulator/eval.h"

#include <stdexcept>

#include "launch_plan.h"
#include "launcher.h"

namespace mlx_linalg_ext::metal_emulator {

namespace mx = mlx::core;

void expm_batch(
    const mx::array& a,
    const mx::array* e,
    mx::array& x,
    mx::array* l) {
  using metal::Type;
  if (a.dtype() != mx::float32 && a.dtype() != mx::complex64) {
    throw std::runtime_error(
        "[matrix_exp] Internal error: the Metal emulator takes float32 and "
        "complex64 only.");
  }
  int n = a.shape(-1);
  int64_t batch = int64_t(a.size()) / (int64_t(n) * n);
  Type type = a.dtype() == mx::float32 ? Type::Float32 : Type::Complex64;
  metal::Plan plan = metal::make_plan(type, n, batch, e != nullptr);
  metal_emu::Bindings bind;
  bind.a = a.data<void>();
  bind.e = e ? e->data<void>() : nullptr;
  bind.x = x.data<void>();
  bind.l = l ? l->data<void>() : nullptr;
  metal_emu::run_plan(plan, bind, metal_emu::options_from_env());
}

} // namespace mlx_linalg_ext::metal_emulator
