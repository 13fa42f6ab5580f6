// The emulator's kernels by host name (kernels.cpp), apart from the launch
// plan: kernels.cpp compiles expm_numerics.h with float tables.
#pragma once

#include <cstdint>
#include <string>

namespace metal_emu {

// What the launcher passes to a kernel (kernels.cpp adapts it to the
// kernel's own signature).
struct LaunchArgs {
  void* buffers[8];
  int nbuffers;
  const int32_t* ints;
  char* smem;
  uint32_t tid[3], group[3], threads[3];
  uint32_t simd_group, simd_lane; // SIMD groups: 32 consecutive threads
};

using KernelEntry = void (*)(const LaunchArgs&);

// The kernel of a host name, or nullptr (kernels.cpp).
KernelEntry find_kernel(const std::string& name);

// Whether the kernel takes threadgroup memory (kernels.cpp).
bool kernel_takes_threadgroup_memory(const std::string& name, int nbuffers);

} // namespace metal_emu
