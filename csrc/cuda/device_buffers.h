// Device memory for the CUDA backend's outputs and workspaces
// (device_buffers.cu says why not mx::allocator::malloc).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "mlx/allocator.h"

namespace mlx_linalg_ext::cuda {

// What a buffer is for, which decides how it is freed (device_buffers.cu).
enum class Use {
  kResult, // an output array
  kWorkspace, // an MLX temporary of the evaluation
              // (CommandEncoder::add_temporary)
};

// `bytes` of device memory, allocated in stream order on `stream` (the
// stream of the MLX command encoder that will use it), as MLX data for
// array::set_data or an array's constructor. Kernels read it through
// gpu_ptr; a host read moves it to unified memory as MLX does for its own
// device buffers. Without stream-ordered memory pools on the device it is
// mx::allocator::malloc's memory.
mlx::core::allocator::Data
device_data(size_t bytes, cudaStream_t stream, Use use);

} // namespace mlx_linalg_ext::cuda
