// Device memory for results and workspaces, the way MLX's own CUDA ops get
// it, without MLX's unexported allocator entry point.
//
// MLX's CUDA ops allocate with cu::malloc_async: device memory from the
// device's stream-ordered pool (cudaMallocAsync), recycled through MLX's
// buffer cache. libmlx.so (0.32) does not export it. What an extension can
// call, mx::allocator::malloc, returns managed memory, and when MLX's cache
// holds a device buffer of about the requested size (any MLX GPU op leaves
// those behind) it hands that one over after moving it to managed memory:
// cudaMallocManaged plus a synchronous copy (move_to_unified_memory), on the
// critical path of every such call (NOTES.md).
//
// So the buffers here come from the same pool as MLX's (its out-of-memory
// guard watches that pool's reserved memory), wrapped in MLX's CudaBuffer
// record: gpu_ptr reads CudaBuffer::data, and a host read moves the buffer
// to managed memory exactly as it does MLX's own device buffers.
//
// When a buffer's array goes, the free must come after the GPU's last use
// and must not land in a stream that MLX is capturing into a graph (it
// captures cuBLAS calls on a stream, from the thread encoding it):
// - A workspace lives in an MLX temporary, which MLX releases on its
//   completion thread after the GPU ran the work: it is freed at once, on a
//   stream of ours that nothing captures.
// - A result may be dropped while its work still runs (after async_eval),
//   from any thread. It is queued, and the next allocation here for the same
//   stream frees it on that stream (after all work already sent there)
//   before allocating, so the pool can hand the same memory straight back.
//   Until then a dropped result still holds its memory.
// The costs: MLX's memory counters leave these buffers out (see
// gpu_active_memory), and a following MLX op cannot reuse them in place
// (MLX donates only memory it owns).

#include "cuda/device_buffers.h"
#include "matrix_exp.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mlx/backend/cuda/allocator.h"
#include "mlx/memory.h"

namespace mlx_linalg_ext::cuda {

namespace mx = mlx::core;

namespace {

using mx::cu::CudaBuffer;

// Bytes allocated here and not yet freed (gpu_active_memory).
std::atomic<size_t> held_bytes{0};

struct Queued {
  CudaBuffer* buffer;
  cudaStream_t stream;
};

// Never destroyed: MLX may free arrays during interpreter exit.
struct State {
  std::mutex mutex;
  std::vector<Queued> queued; // dropped results
  std::map<int, cudaStream_t> free_streams; // per device, never captured
};
State& state() {
  static auto* s = new State;
  return *s;
}

// Frees one buffer. CUDA errors here are dropped (and cleared): a failed
// free must not fail an unrelated evaluation or MLX's completion thread.
void free_buffer(CudaBuffer* buf, cudaStream_t stream) {
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

// Frees the queued results made for `stream`, the stream this thread is
// encoding: no other thread can be capturing it now (MLX uses a stream from
// one thread at a time), where another stream might be mid-capture.
void free_queued(cudaStream_t stream) {
  std::vector<Queued> batch;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    auto& queued = state().queued;
    auto mine = std::stable_partition(
        queued.begin(), queued.end(), [&](const Queued& q) {
          return q.stream != stream;
        });
    batch.assign(mine, queued.end());
    queued.erase(mine, queued.end());
  }
  for (auto& [buf, s] : batch) {
    free_buffer(buf, s);
  }
}

// Our stream for workspace frees on `device` (the current device).
cudaStream_t free_stream(int device) {
  std::lock_guard<std::mutex> lock(state().mutex);
  auto& stream = state().free_streams[device];
  if (!stream &&
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) !=
          cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("[matrix_exp] Unable to create a CUDA stream.");
  }
  return stream;
}

} // namespace

mx::allocator::Data device_data(size_t bytes, cudaStream_t stream, Use use) {
  int device = 0;
  int pools = 0;
  if (bytes == 0 || cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) !=
          cudaSuccess ||
      !pools) {
    cudaGetLastError();
    return mx::allocator::malloc(bytes);
  }
  free_queued(stream);
  cudaStream_t own = use == Use::kWorkspace ? free_stream(device) : nullptr;
  void* data = nullptr;
  cudaError_t err = cudaMallocAsync(&data, bytes, stream);
  if (err == cudaErrorMemoryAllocation) {
    // MLX's buffer cache may hold the memory (as its own allocator does
    // under pressure, give the cache back to the pool and try once more).
    cudaGetLastError();
    mx::clear_cache();
    err = cudaMallocAsync(&data, bytes, stream);
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(
        "[matrix_exp] Unable to allocate " + std::to_string(bytes) +
        " bytes of GPU memory: " + cudaGetErrorString(err));
  }
  held_bytes += bytes;
  auto* buf = new CudaBuffer{data, bytes, device};
  if (use == Use::kWorkspace) {
    return mx::allocator::Data(
        mx::allocator::Buffer(buf), [own](mx::allocator::Buffer b) {
          free_buffer(static_cast<CudaBuffer*>(b.ptr()), own);
        });
  }
  return mx::allocator::Data(
      mx::allocator::Buffer(buf), [stream](mx::allocator::Buffer b) {
        std::lock_guard<std::mutex> lock(state().mutex);
        state().queued.push_back({static_cast<CudaBuffer*>(b.ptr()), stream});
      });
}

} // namespace mlx_linalg_ext::cuda

size_t mlx_linalg_ext::gpu_active_memory() {
  return cuda::held_bytes;
}
