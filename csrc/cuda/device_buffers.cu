// Device memory for outputs and workspaces, the way MLX's own CUDA ops get
// it, without MLX's unexported allocator entry point.
//
// MLX's CUDA ops allocate with cu::malloc_async: device memory from the
// device's stream-ordered pool (cudaMallocAsync), recycled through MLX's
// buffer cache. libmlx.so (0.32) does not export it. What an extension can
// call, mx::allocator::malloc, returns managed memory, and when MLX's cache
// holds a device buffer of about the requested size (any MLX GPU op leaves
// those behind) it hands that one over after moving it to managed memory:
// cudaMallocManaged plus a synchronous copy (move_to_unified_memory). In the
// benchmark that made a call after the MLX-ops version 3-5x slower, once per
// cached buffer (csrc/cuda/NOTES.md).
//
// So the buffers here come from the same pool as MLX's (its out-of-memory
// guard watches that pool's reserved memory), wrapped in MLX's CudaBuffer
// record: gpu_ptr reads CudaBuffer::data, and a host read moves the buffer
// to managed memory exactly as it does MLX's own device buffers.
//
// Freeing is deferred. An array's deleter may run on MLX's completion thread
// or while MLX captures a stream into a graph, so it only queues the buffer;
// the next allocation frees the queue, each buffer in order on the stream it
// was made for (after all work already sent to that stream), and then
// allocates, so the pool can hand the same memory straight back. The costs:
// MLX's memory counters leave these buffers out, and a following MLX op
// cannot reuse them in place (MLX donates only memory it owns).

#include "cuda/device_buffers.h"
#include "matrix_exp.h"

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mlx/backend/cuda/allocator.h"

namespace mlx_linalg_ext::cuda {

namespace mx = mlx::core;

namespace {

struct Released {
  mx::cu::CudaBuffer* buffer;
  cudaStream_t stream;
};

// Bytes allocated here and not yet freed (gpu_active_memory).
std::atomic<size_t> held_bytes{0};

// Never destroyed: MLX may free arrays during interpreter exit.
struct ReleasedQueue {
  std::mutex mutex;
  std::vector<Released> buffers;
};
ReleasedQueue& released() {
  static auto* queue = new ReleasedQueue;
  return *queue;
}

// Frees what the deleters queued. CUDA errors here are dropped (and
// cleared): a failed free must not fail an unrelated evaluation.
void free_released() {
  std::vector<Released> batch;
  {
    auto& queue = released();
    std::lock_guard<std::mutex> lock(queue.mutex);
    batch.swap(queue.buffers);
  }
  for (auto& [buf, stream] : batch) {
    if (buf->device >= 0) {
      cudaFreeAsync(buf->data, stream);
    } else {
      // Moved to unified memory by a host read: managed memory, or pinned
      // host memory where the GPU has no concurrent managed access.
      cudaPointerAttributes attr{};
      if (cudaPointerGetAttributes(&attr, buf->data) == cudaSuccess &&
          attr.type == cudaMemoryTypeHost) {
        cudaFreeHost(buf->data);
      } else {
        cudaFree(buf->data);
      }
    }
    cudaGetLastError();
    held_bytes -= buf->size;
    delete buf;
  }
}

} // namespace

mx::allocator::Data device_data(size_t bytes, cudaStream_t stream) {
  int device = 0;
  int pools = 0;
  if (bytes == 0 || cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) !=
          cudaSuccess ||
      !pools) {
    cudaGetLastError();
    return mx::allocator::malloc(bytes);
  }
  free_released();
  void* data = nullptr;
  cudaError_t err = cudaMallocAsync(&data, bytes, stream);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(
        "[matrix_exp] Unable to allocate " + std::to_string(bytes) +
        " bytes of GPU memory: " + cudaGetErrorString(err));
  }
  held_bytes += bytes;
  auto* buf = new mx::cu::CudaBuffer{data, bytes, device};
  return mx::allocator::Data(
      mx::allocator::Buffer(buf), [stream](mx::allocator::Buffer b) {
        auto* cb = static_cast<mx::cu::CudaBuffer*>(b.ptr());
        auto& queue = released();
        std::lock_guard<std::mutex> lock(queue.mutex);
        queue.buffers.push_back({cb, stream});
      });
}

} // namespace mlx_linalg_ext::cuda

size_t mlx_linalg_ext::gpu_active_memory() {
  return cuda::held_bytes;
}
