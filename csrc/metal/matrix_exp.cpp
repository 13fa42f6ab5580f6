// Metal backend of MatrixExp and ExpmFrechet: the host encodes the fixed
// list of dispatches of metal/launch_plan.h. The kernels read each matrix's
// degree and squaring count from device memory (written by the first
// dispatch; the count refined after the second and third products) and
// skip what a matrix does not need, so nothing is read back.
#include <dlfcn.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/metal/device.h"

#include "metal/launch_plan.h"
#include "primitives.h"

namespace mlx_linalg_ext {

namespace mx = mlx::core;

namespace {

// mlx_linalg_ext.metallib is installed next to this module (CMakeLists.txt).
const std::string& module_dir() {
  static const std::string dir = [] {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(&module_dir), &info)) {
      throw std::runtime_error(
          "[matrix_exp] Cannot locate the extension module to load "
          "mlx_linalg_ext.metallib.");
    }
    return std::filesystem::path(info.dli_fname).parent_path().string();
  }();
  return dir;
}

// Threadgroup memory a kernel may use on this device (32 KiB on Apple GPUs);
// the plan keeps a matrix in threadgroup memory only where it fits.
size_t max_threadgroup_memory(mx::metal::Device& d) {
  size_t bytes = d.mtl_device()->maxThreadgroupMemoryLength();
  return bytes > 0 ? bytes : 32768;
}

// Encodes every dispatch of the plan for A (and E) into X (and L). a, e, x,
// l are row-contiguous batches of n x n matrices; e and l are null for
// exp(A) alone. op names the op in errors.
void encode(
    const char* op,
    const mx::Stream& s,
    const mx::array& a,
    const mx::array* e,
    mx::array& x,
    mx::array* l) {
  int n = a.shape(-1);
  int64_t batch = a.size() / (int64_t(n) * n);
  auto type = a.dtype() == mx::complex64 ? metal::Type::Complex64
                                         : metal::Type::Float32;
  auto& d = mx::metal::device(s.device);
  auto plan =
      metal::make_plan(type, n, batch, e != nullptr, max_threadgroup_memory(d));

  auto& enc = mx::metal::get_command_encoder(s);
  // The workspace (per-matrix decisions, intermediate products) lives until
  // the command buffer completes. Counted in 4-byte words: an MLX shape is
  // int32.
  std::optional<mx::array> work;
  if (plan.work_bytes > 0) {
    size_t words = (plan.work_bytes + 3) / 4;
    if (words > size_t(std::numeric_limits<int>::max())) {
      throw std::invalid_argument(
          std::string("[") + op +
          "] The batch needs a workspace above 8 GiB; split it.");
    }
    work = mx::array({int(words)}, mx::uint32, nullptr, {});
    work->set_data(mx::allocator::malloc(work->nbytes()));
    enc.add_temporary(*work);
  }

  auto lib = d.get_library("mlx_linalg_ext", module_dir());
  for (const auto& step : plan.steps) {
    enc.set_compute_pipeline_state(d.get_kernel(step.kernel, lib));
    int index = 0;
    for (auto arg : step.buffers) {
      switch (arg) {
        case metal::Arg::A:
          enc.set_input_array(a, index);
          break;
        case metal::Arg::E:
          enc.set_input_array(*e, index);
          break;
        // Written buffers are bound as outputs so that MLX's encoder puts a
        // barrier between a step and the next one that reads them.
        case metal::Arg::X:
          enc.set_output_array(x, index);
          break;
        case metal::Arg::L:
          enc.set_output_array(*l, index);
          break;
        case metal::Arg::Work:
          enc.set_output_array(*work, index);
          break;
      }
      ++index;
    }
    if (!step.ints.empty()) {
      enc.set_bytes(step.ints.data(), int(step.ints.size()), index);
    }
    if (step.threadgroup_bytes > 0) {
      enc.set_threadgroup_memory_length(step.threadgroup_bytes, 0);
    }
    enc.dispatch_threadgroups(
        MTL::Size(step.groups[0], step.groups[1], step.groups[2]),
        MTL::Size(step.threads[0], step.threads[1], step.threads[2]));
  }
}

} // namespace

void MatrixExp::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  encode("matrix_exp", stream(), inputs[0], nullptr, out, nullptr);
}

void ExpmFrechet::eval_gpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  for (auto& out : outputs) {
    out.set_data(mx::allocator::malloc(out.nbytes()));
  }
  if (outputs[0].size() == 0) {
    return;
  }
  encode(
      "expm_frechet", stream(), inputs[0], &inputs[1], outputs[0], &outputs[1]);
}

// Results and workspaces are MLX allocations, which MLX's counters include.
size_t gpu_active_memory() {
  return 0;
}

} // namespace mlx_linalg_ext
