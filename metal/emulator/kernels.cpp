// The kernels of metal/ compiled as C++ for the CPU emulator, and the
// registry of their host names (the same list matrix_exp.metal instantiates).
#include "metal_emu.h"

// Internal linkage: the host code of the extension includes expm_numerics.h
// with double tables in other translation units.
#define EXPM_TABLE static constexpr constant
#define EXPM_FN static inline
#include "expm_kernel_list.h"
#include "expm_kernels.h"
#include "expm_tiny.h"

#include "registry.h"

namespace metal_emu {

namespace {

// Pointer parameters of a kernel: its buffers, the int32 constants and the
// threadgroup memory if it takes any.
template <typename... P>
constexpr int count_pointers(void (*)(P...)) {
  return (0 + ... + int(std::is_pointer_v<P>));
}

// Kernel parameters in order: the plan's buffers, the int32 constants, the
// threadgroup memory if the kernel takes any, then the uint3 thread
// positions: in the threadgroup, of the threadgroup, and (if taken) threads
// per threadgroup; then (if taken) the uint simdgroup_index_in_threadgroup
// and thread_index_in_simdgroup, in that order.
template <typename P>
P kernel_arg(const LaunchArgs& c, int i, int np_pointers, int np_uint3) {
  if constexpr (std::is_pointer_v<P>) {
    void* p = nullptr;
    if (i < c.nbuffers) {
      p = c.buffers[i];
    } else if (i == c.nbuffers) {
      p = const_cast<int32_t*>(c.ints);
    } else if (i == c.nbuffers + 1) {
      p = c.smem;
    } else {
      fail("kernel signature does not match the plan's buffers");
    }
    return (P)p;
  } else if constexpr (std::is_same_v<P, uint3>) {
    int k = i - np_pointers;
    const uint32_t* v = k == 0 ? c.tid : k == 1 ? c.group : c.threads;
    return P{v[0], v[1], v[2]};
  } else {
    static_assert(std::is_same_v<P, uint>, "kernel parameter of no known kind");
    int k = i - np_pointers - np_uint3;
    return k == 0 ? c.simd_group : c.simd_lane;
  }
}

template <typename... P, size_t... I>
void invoke(void (*fn)(P...), const LaunchArgs& c, std::index_sequence<I...>) {
  constexpr int np = (0 + ... + int(std::is_pointer_v<P>));
  constexpr int nu = (0 + ... + int(std::is_same_v<P, uint3>));
  fn(kernel_arg<P>(c, int(I), np, nu)...);
}

template <typename... P>
void invoke(void (*fn)(P...), const LaunchArgs& c) {
  invoke(fn, c, std::index_sequence_for<P...>{});
}

struct Entry {
  KernelEntry run;
  int pointers;
};

using expm_metal::complex64;

#define EXPM_REGISTER(function, T, name)                              \
  {#function "_" #name,                                               \
   {[](const LaunchArgs& c) { invoke(&expm_metal::function<T>, c); }, \
    count_pointers(&expm_metal::function<T>)}},

const std::map<std::string, Entry>& registry() {
  static const std::map<std::string, Entry> entries = {
      EXPM_METAL_KERNELS(EXPM_REGISTER)};
  return entries;
}

} // namespace

KernelEntry find_kernel(const std::string& name) {
  auto it = registry().find(name);
  return it == registry().end() ? nullptr : it->second.run;
}

bool kernel_takes_threadgroup_memory(const std::string& name, int nbuffers) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    return false;
  }
  int extra = it->second.pointers - nbuffers - 1;
  if (extra != 0 && extra != 1) {
    throw std::runtime_error(
        "[metal emulator] " + name + " takes " +
        std::to_string(it->second.pointers) + " pointers, not " +
        std::to_string(nbuffers) + " buffers + constants (+ memory)");
  }
  return extra == 1;
}

} // namespace metal_emu
