// Host side of kernel_utils.cuh.
#include "cuda/kernel_utils.cuh"

#include <memory>

#include "mlx/backend/cuda/utils.h"

namespace mlx_linalg_ext::cuda {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(
        std::string("[matrix_exp] ") + what + ": " + cudaGetErrorString(err));
  }
}

int current_device() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

int device_attr(cudaDeviceAttr attr) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, int> cache;
  int dev = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  auto [it, fresh] = cache.try_emplace({dev, int(attr)}, 0);
  if (fresh) {
    check_cuda(
        cudaDeviceGetAttribute(&it->second, attr, dev),
        "cudaDeviceGetAttribute");
  }
  return it->second;
}

mx::allocator::Data Launcher::memory(size_t bytes, Use use) {
  return device_data(bytes, encoder_.stream(), use);
}

char* Launcher::workspace(size_t bytes) {
  size_t words = (bytes + 3) / 4;
  mx::Shape shape = words < (size_t(1) << 30)
      ? mx::Shape{int(words)}
      : mx::Shape{int((words + (1 << 20) - 1) >> 20), 1 << 20};
  mx::array ws(
      memory(
          size_t(4) * shape[0] * (shape.size() > 1 ? shape[1] : 1),
          Use::kWorkspace),
      shape,
      mx::float32);
  encoder_.add_temporary(ws);
  temps_.push_back(ws);
  return gpu_ptr<char>(ws);
}

void Launcher::declare_arrays() {
  for (const auto& in : inputs_) {
    encoder_.set_input_array(in);
  }
  for (const auto& t : temps_) {
    encoder_.set_input_array(t);
    encoder_.set_output_array(t);
  }
  for (const auto& out : outputs_) {
    encoder_.set_output_array(out);
  }
}

void Launcher::add_cluster_node(
    const void* kernel,
    dim3 grid,
    dim3 block,
    dim3 cluster,
    uint32_t smem,
    void** args) {
  declare_arrays();
  cudaKernelNodeParams params = {};
  params.func = const_cast<void*>(kernel);
  params.gridDim = grid;
  params.blockDim = block;
  params.sharedMemBytes = smem;
  params.kernelParams = args;
  cudaGraph_t graph = nullptr;
  check_cuda(cudaGraphCreate(&graph, 0), "cudaGraphCreate");
  std::unique_ptr<CUgraph_st, cudaError_t (*)(cudaGraph_t)> child(
      graph, cudaGraphDestroy);
  cudaGraphNode_t node;
  check_cuda(
      cudaGraphAddKernelNode(&node, graph, nullptr, 0, &params),
      "cudaGraphAddKernelNode");
  cudaKernelNodeAttrValue attr = {};
  attr.clusterDim.x = cluster.x;
  attr.clusterDim.y = cluster.y;
  attr.clusterDim.z = cluster.z;
  check_cuda(
      cudaGraphKernelNodeSetAttribute(
          node, cudaLaunchAttributeClusterDimension, &attr),
      "cudaGraphKernelNodeSetAttribute");
  encoder_.add_graph_node(graph); // copies it
}

} // namespace mlx_linalg_ext::cuda
