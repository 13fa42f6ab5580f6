// Python bindings (nanobind, in MLX's domain so that mx.array passes through).
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/variant.h>

#include "expm_numerics.h"
#include "matrix_exp.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_ext, m) {
  m.doc() = "Matrix exponential for MLX (C++ core of mlx_linalg_ext).";

#ifdef MLX_LINALG_EXT_GPU
  m.attr("has_gpu_kernels") = true;
#else
  m.attr("has_gpu_kernels") = false;
#endif

  // What evaluates float32/complex64: a test build's Metal emulator (on the
  // CPU stream), or the build's GPU kernels beside the CPU evaluator.
#if defined(MLX_LINALG_EXT_METAL_EMULATOR)
  m.attr("backend") = "metal-emulator";
#elif defined(MLX_LINALG_EXT_METAL)
  m.attr("backend") = "metal";
#elif defined(MLX_LINALG_EXT_GPU)
  m.attr("backend") = "cuda";
#else
  m.attr("backend") = "cpu";
#endif

  m.def(
      "matrix_exp",
      &mlx_linalg_ext::matrix_exp,
      "a"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "exp(a) per matrix; wrapped and documented by mlx_linalg_ext.");

  m.def(
      "expm_frechet",
      &mlx_linalg_ext::expm_frechet,
      "a"_a,
      "e"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "(exp(a), L(a, e)); wrapped and documented by mlx_linalg_ext.");

  // The per-matrix decision of every backend, for the benchmarks' product
  // counts (the tests keep their own references).
  m.def(
      "decide",
      [](double norm, double shifted_norm, bool double_precision) {
        auto d = expm::decide(
            norm,
            shifted_norm,
            double_precision ? expm::kDouble : expm::kSingle);
        int products = d.degree == expm::kNoAnswer
            ? 0
            : expm::kNumProducts[d.degree] + d.squarings;
        return std::make_tuple(d.shift, d.degree, d.squarings, products);
      },
      "norm"_a,
      "shifted_norm"_a,
      "double_precision"_a,
      "(shift, degree index or -1 for no answer, squarings, products) of one "
      "matrix from the 1-norms of A and A - tr(A)/n I.");

  m.def(
      "refine_squarings",
      [](double norm2, double norm3, int squarings, bool double_precision) {
        return expm::refine_squarings(
            norm2,
            norm3,
            squarings,
            double_precision ? expm::kDouble : expm::kSingle);
      },
      "norm2"_a,
      "norm3"_a,
      "squarings"_a,
      "double_precision"_a,
      "The squarings of a degree-18 matrix from the 1-norms of B^2 and B^3 "
      "(B the shifted matrix), at most `squarings` (its 1-norm's choice).");

  m.def(
      "refine_squarings_sixth",
      [](double norm2,
         double norm3,
         double norm6,
         int squarings,
         bool double_precision) {
        return expm::refine_squarings_sixth(
            norm2,
            norm3,
            norm6,
            squarings,
            double_precision ? expm::kDouble : expm::kSingle);
      },
      "norm2"_a,
      "norm3"_a,
      "norm6"_a,
      "squarings"_a,
      "double_precision"_a,
      "The squarings after the second refinement, from the 1-norms of B^2, "
      "B^3 and B^6 scaled for `squarings` (refine_squarings's choice).");

  m.def(
      "get_active_memory",
      &mlx_linalg_ext::gpu_active_memory,
      "Bytes of GPU memory held by this package's own buffers.");
}
