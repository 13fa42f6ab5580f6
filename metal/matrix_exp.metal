// The metallib's kernels: every entry of expm_kernel_list.h, instantiated
// under its host name (launch_plan.h names them). Compiled with csrc/ and
// metal/ on the include path and without fast math (NaN and Inf handling
// relies on it).
#include "expm_kernel_list.h"
#include "expm_kernels.h"
#include "expm_tiny.h"

using namespace expm_metal;

#ifdef __METAL__
// Qualified names: an explicit instantiation outside the template's
// namespace must name it so.
#define EXPM_INSTANTIATE(function, T, name)   \
  template [[host_name(#function "_" #name)]] \
  [[kernel]] decltype(expm_metal::function<T>) expm_metal::function<T>;
EXPM_METAL_KERNELS(EXPM_INSTANTIATE)
#endif
