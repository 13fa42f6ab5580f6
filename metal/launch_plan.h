// The launch plan of the Metal kernels: which kernels run, on which grids and
// buffers, for a batch of n x n matrices. eval_gpu (csrc/metal) encodes it;
// the CPU emulator of the kernels (metal/emulator) runs the same plan.
// Everything that depends on the data (norms, trace shift, degree, squarings)
// is decided by the kernels on the device, per matrix; the plan depends only
// on (type, n, batch, frechet).
//
// Plain C++17 with no MLX or Metal headers; needs csrc/ and metal/ on the
// include path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "expm_layout.h"
#include "expm_numerics.h"

namespace mlx_linalg_ext::metal {

enum class Type : int { Float32, Complex64 };

// Device buffers: inputs A and E (the Frechet direction), outputs X = exp(A)
// and L = L(A, E), and a workspace of Plan::work_bytes.
enum class Arg : int { A, E, X, L, Work };

struct Dispatch {
  std::string kernel; // the [[host_name]] of the kernel in the metallib
  uint32_t groups[3]; // threadgroups per grid (dispatch_threadgroups)
  uint32_t threads[3]; // threads per threadgroup
  uint32_t threadgroup_bytes; // threadgroup memory at index 0 (0: none)
  std::vector<Arg> buffers; // bound at [[buffer(0..k-1)]] in this order
  // Then bound as one constant int32 array at [[buffer(k)]] (set_bytes);
  // nothing is bound when empty.
  std::vector<int32_t> ints;
};

struct Plan {
  std::vector<Dispatch> steps;
  size_t work_bytes; // size of the Work buffer (0: none)
};

namespace detail {

// The refinement after the third product reads B^6 = B^3 B^3: both operands
// of that step are slot 3 as it is, in both passes, so the combine kernel
// (which does not know which matrices refine) writes nothing for it.
static_assert(
    expm::kStepLeft[expm::kFirstStep[expm::kLastDegree] + 2][3] == 1 &&
    expm::kStepRight[expm::kFirstStep[expm::kLastDegree] + 2][3] == 1 &&
    expm::kStepLeft[expm::kFirstStep[expm::kLastDegree] + 2][0] == 0 &&
    expm::kStepRight[expm::kFirstStep[expm::kLastDegree] + 2][0] == 0);

inline const char* type_name(Type type) {
  return type == Type::Float32 ? "float32" : "complex64";
}

inline int elem_bytes(Type type) {
  return type == Type::Float32 ? 4 : 8;
}

inline uint32_t ceil_div(int64_t a, int64_t b) {
  return uint32_t((a + b - 1) / b);
}

// Whether some degree forms an operand at product position k (its step
// kFirstStep[d] + k) as a combination of slots rather than using one slot
// as it is: the combine dispatch of that position is left out otherwise.
inline bool position_combines(int k, bool frechet) {
  for (int d = 0; d < expm::kNumDegrees; ++d) {
    if (k >= expm::kNumProducts[d]) {
      continue;
    }
    int step = expm::kFirstStep[d] + k;
    for (const double* c : {expm::kStepLeft[step], expm::kStepRight[step]}) {
      if (expm::lone_slot(c, 2 + k, true) < 0) {
        return true;
      }
      if (frechet && expm::lone_slot(c, 2 + k, false) < 0) {
        return true;
      }
    }
  }
  return false;
}

// Grid and threadgroup of the product and squaring kernels: float32 on
// simdgroup_matrix tiles (kSimdTile, kSimdThreads), complex64 on the scalar
// tile (kTile, kGemmThreads); both stage two operand slices.
struct ProductShape {
  int tile; // output tile of a threadgroup: tile x tile
  uint32_t threads;
  uint32_t threadgroup_bytes;
};

inline ProductShape product_shape(Type type) {
  using namespace expm_metal;
  if (type == Type::Float32) {
    return {
        kSimdTile, kSimdThreads, uint32_t(simd_product_threadgroup_bytes())};
  }
  return {kTile, kGemmThreads, uint32_t(2 * kTile * kTileK * elem_bytes(type))};
}

} // namespace detail

// Whether (type, n, frechet) runs on the tiny kernel (one thread per matrix,
// many matrices per threadgroup) with the given threadgroup memory.
inline bool uses_tiny_kernel(
    Type type,
    int n,
    bool frechet,
    size_t max_threadgroup_memory = 32768) {
  return n <= expm_metal::kTinyMaxN &&
      size_t(
          expm_metal::tiny_threadgroup_bytes(
              n, detail::elem_bytes(type), frechet)) <= max_threadgroup_memory;
}

// Whether (type, n, frechet) runs on the fused one-threadgroup-per-matrix
// kernel with the given threadgroup memory: beyond the tiny kernel, while the
// matrix and its buffers fit.
inline bool uses_small_kernel(
    Type type,
    int n,
    bool frechet,
    size_t max_threadgroup_memory = 32768) {
  return !uses_tiny_kernel(type, n, frechet, max_threadgroup_memory) &&
      n <= expm_metal::kSmallMaxN &&
      size_t(
          expm_metal::small_threadgroup_bytes(
              n, detail::elem_bytes(type), frechet)) <= max_threadgroup_memory;
}

// Inputs are row-contiguous batches (batch, n, n) of float32 or complex64.
// frechet: ExpmFrechet (outputs X and L) rather than MatrixExp (X only).
inline Plan make_plan(
    Type type,
    int n,
    int64_t batch,
    bool frechet,
    size_t max_threadgroup_memory = 32768) {
  using namespace expm_metal;
  if (n < 1 || batch < 1 || batch > int64_t(INT32_MAX)) {
    throw std::invalid_argument(
        "[matrix_exp] Internal error: no Metal plan for this shape.");
  }
  Plan plan{{}, 0};
  const std::string t = detail::type_name(type);
  const std::string f = frechet ? "expm_frechet_" : "expm_";
  std::vector<Arg> io = frechet
      ? std::vector<Arg>{Arg::A, Arg::E, Arg::X, Arg::L}
      : std::vector<Arg>{Arg::A, Arg::X};
  const uint32_t b = uint32_t(batch);

  if (uses_tiny_kernel(type, n, frechet, max_threadgroup_memory)) {
    // One thread per matrix; the last threadgroup masks the tail.
    const int e = detail::elem_bytes(type);
    const uint32_t m = uint32_t(tiny_matrices(n, e, frechet));
    plan.steps.push_back(
        {f + "tiny_" + std::to_string(n) + "_" + t,
         {detail::ceil_div(batch, m), 1, 1},
         {m, 1, 1},
         uint32_t(tiny_threadgroup_bytes(n, e, frechet)),
         io,
         {n, int32_t(batch)}});
    return plan;
  }
  if (uses_small_kernel(type, n, frechet, max_threadgroup_memory)) {
    uint32_t threads = std::min<uint32_t>(
        kSmallThreads, detail::ceil_div(int64_t(n) * n, 32) * 32);
    plan.steps.push_back(
        {f + "small_" + t,
         {b, 1, 1},
         {threads, 1, 1},
         uint32_t(
             small_threadgroup_bytes(n, detail::elem_bytes(type), frechet)),
         io,
         {n}});
    return plan;
  }

  // Predicated path: every dispatch below is enqueued for every batch; a
  // threadgroup whose matrix does not need its step returns at once.
  const int64_t nn = int64_t(n) * n;
  const int32_t fr = frechet ? 1 : 0;
  const int outputs = frechet ? 2 : 1;
  plan.work_bytes = size_t(params_bytes(batch)) +
      size_t(batch) * large_buffers(frechet) * nn * detail::elem_bytes(type);
  const detail::ProductShape product = detail::product_shape(type);
  const uint32_t tiles = detail::ceil_div(n, product.tile);
  const uint32_t elem_groups = detail::ceil_div(nn, kElemPerGroup);
  auto with_work = [](std::vector<Arg> v) {
    v.push_back(Arg::Work);
    return v;
  };
  std::vector<Arg> outs =
      frechet ? std::vector<Arg>{Arg::X, Arg::L} : std::vector<Arg>{Arg::X};
  const std::vector<int32_t> ints = {n, int32_t(batch), 0, fr};
  auto at = [&](int32_t index) {
    std::vector<int32_t> v = ints;
    v[2] = index;
    return v;
  };

  // 1-norms, decision and e^(mu 2^-s) per matrix.
  plan.steps.push_back(
      {"expm_params_" + t,
       {b, 1, 1},
       {kElemThreads, 1, 1},
       kParamsThreadgroupBytes,
       {Arg::A, Arg::Work},
       ints});
  // (A - mu I) 2^-s (and E 2^-s) into slot A; all-NaN outputs where there
  // is no answer. Unscaled where the squarings are refined below.
  plan.steps.push_back(
      {f + "scale_" + t,
       {elem_groups, 1, b},
       {kElemThreads, 1, 1},
       0,
       with_work(io),
       ints});
  // The product kernel's fifth int: 1 for the derivatives of the first three
  // products of the refined matrices (one pass per matrix).
  auto product_at = [&](int32_t k, int32_t late) {
    std::vector<int32_t> v = at(k);
    v.push_back(late);
    return v;
  };
  for (int k = 0; k < expm::kNumProducts[expm::kLastDegree]; ++k) {
    if (detail::position_combines(k, frechet)) {
      plan.steps.push_back(
          {"expm_combine_" + t,
           {elem_groups, 1, b},
           {kElemThreads, 1, 1},
           0,
           {Arg::Work},
           at(k)});
    }
    plan.steps.push_back(
        {"expm_product_" + t,
         {tiles, tiles, b * outputs},
         {product.threads, 1, 1},
         product.threadgroup_bytes,
         {Arg::Work},
         product_at(k, 0)});
    if (k != 1 && k != 2) {
      continue;
    }
    // Matrices at the last degree with squarings (kParamRefine): after k = 1
    // they have B^2 and B^3 of the unscaled B, whose 1-norms give s
    // (expm::refine_squarings), and B, B^2, B^3 are scaled with it; after
    // k = 2, B^6 of the scaled B^3 may take squarings away
    // (expm::refine_squarings_sixth): B .. B^6 are scaled back up, E scaled
    // with the final s, and the derivatives of the three products formed
    // from the scaled slots.
    const int32_t sixth = k == 2 ? 1 : 0;
    plan.steps.push_back(
        {"expm_refine_" + t,
         {b, 1, 1},
         {kElemThreads, 1, 1},
         kParamsThreadgroupBytes,
         {Arg::Work},
         at(sixth)});
    plan.steps.push_back(
        {f + "rescale_" + t,
         {elem_groups, 1, b},
         {kElemThreads, 1, 1},
         0,
         frechet ? std::vector<Arg>{Arg::E, Arg::Work}
                 : std::vector<Arg>{Arg::Work},
         at(sixth)});
    for (int32_t j = 0; frechet && sixth && j < 3; ++j) {
      plan.steps.push_back(
          {"expm_product_" + t,
           {tiles, tiles, b},
           {product.threads, 1, 1},
           product.threadgroup_bytes,
           {Arg::Work},
           product_at(j, 1)});
    }
  }
  // The approximant times e^(mu 2^-s); lands in the outputs when s = 0.
  plan.steps.push_back(
      {f + "final_" + t,
       {elem_groups, 1, b},
       {kElemThreads, 1, 1},
       0,
       with_work(outs),
       ints});
  for (int i = 0; i < expm::kMaxSquaringsSingle; ++i) {
    plan.steps.push_back(
        {f + "square_" + t,
         {tiles, tiles, b * outputs},
         {product.threads, 1, 1},
         product.threadgroup_bytes,
         with_work(outs),
         at(i)});
  }
  return plan;
}

} // namespace mlx_linalg_ext::metal
