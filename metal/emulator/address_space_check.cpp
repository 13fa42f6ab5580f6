// Compile-only check (clang): the kernels with `device`, `constant` and
// `threadgroup` as distinct address spaces, so that a pointer passed to the
// wrong space fails to compile as it would in Metal. Only the float kernels:
// clang's address spaces, unlike Metal's, give a struct no copy between
// spaces, and the complex64 kernels are the same templates.
//   clang++ -std=c++20 -fsyntax-only -DMETAL_EMU_ADDRESS_SPACES \
//     -Imetal -Imetal/emulator -Icsrc metal/emulator/address_space_check.cpp
#ifndef METAL_EMU_ADDRESS_SPACES
#error "compile with -DMETAL_EMU_ADDRESS_SPACES"
#endif
#include "metal_emu.h"

#define EXPM_TABLE static constexpr constant
#define EXPM_FN static inline
#include "expm_kernel_list.h"
#include "expm_kernels.h"
#include "expm_tiny.h"

#define EXPM_CHECK_INSTANTIATE(function, T, name) \
  template decltype(expm_metal::function<T>) expm_metal::function<T>;
EXPM_METAL_KERNELS_OF(EXPM_CHECK_INSTANTIATE, float, float32)
