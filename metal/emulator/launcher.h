// CPU emulator of the Metal kernels (test infrastructure): runs a launch plan
// (metal/launch_plan.h, the same one eval_gpu encodes) on CPU buffers.
#pragma once

#include <cstdint>
#include <string>

#include "launch_plan.h"
#include "registry.h"

namespace metal_emu {

// Fibers: the threads of a threadgroup run as fibers (ucontext) on one OS
// thread, switching at each barrier; between two barriers they run one after
// another, in an order reversed at every barrier so that a missing barrier
// shows up as a wrong result in either direction.
// Threads: one OS thread per GPU thread and a std::barrier per threadgroup;
// slow, but the model ThreadSanitizer can check.
enum class Mode { Fibers, Threads };

struct Options {
  Mode mode = Mode::Fibers;
  int workers = 1; // threadgroups of one dispatch run on this many OS threads
};

// METAL_EMU_MODE=fibers|threads, METAL_EMU_WORKERS=<n>.
Options options_from_env();

struct Bindings {
  const void* a = nullptr;
  const void* e = nullptr;
  void* x = nullptr;
  void* l = nullptr;
};

// Runs every dispatch of the plan in order, each to completion, with a fresh
// Work buffer and threadgroup memory filled with NaN bytes (reads of memory
// no kernel wrote surface as NaN). Throws std::runtime_error on a plan the
// kernels do not match (unknown kernel, wrong buffer count, limits).
void run_plan(
    const mlx_linalg_ext::metal::Plan& plan,
    const Bindings& bindings,
    const Options& options);

// Runs one kernel, not of the registry, over a grid of threadgroups with
// fresh threadgroup memory (NaN bytes) and the given buffers: the emulator's
// tests of its own Metal subset.
void run_kernel(
    KernelEntry kernel,
    const uint32_t groups[3],
    const uint32_t threads[3],
    uint32_t threadgroup_bytes,
    void* const* buffers,
    int nbuffers,
    const Options& options);

} // namespace metal_emu
