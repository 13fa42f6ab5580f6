// The primitives behind matrix_exp and expm_frechet. Each backend defines
// eval_cpu / eval_gpu in its own folder; the transforms live in matrix_exp.cpp.
#pragma once

#include "mlx/primitives.h"

namespace mlx_linalg_ext {

namespace mx = mlx::core;
// MLX's DEFINE_* macros name these types unqualified.
using mx::array;
using mx::Primitive;
using mx::Shape;

// exp(A) per matrix of a batch (..., n, n). The Taylor degree and the number
// of squarings are chosen per matrix inside the evaluation, on the device
// that runs it: nothing is read back to the host.
class MatrixExp : public mx::UnaryPrimitive {
 public:
  explicit MatrixExp(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  DEFINE_VMAP()
  DEFINE_GRADS()

  DEFINE_NAME(MatrixExp)
  DEFINE_DEFAULT_IS_EQUIVALENT()
  DEFINE_INPUT_OUTPUT_SHAPE()
};

// (exp(A), L(A, E)) per matrix of a batch: the exponential and its Frechet
// derivative, computed together by differentiating the same Taylor evaluation
// and squarings (Al-Mohy & Higham 2009).
class ExpmFrechet : public mx::Primitive {
 public:
  explicit ExpmFrechet(mx::Stream stream) : mx::Primitive(stream) {}

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;
  void eval_gpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override;

  DEFINE_VMAP()
  DEFINE_GRADS()

  DEFINE_NAME(ExpmFrechet)
  DEFINE_DEFAULT_IS_EQUIVALENT()
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[0].shape()};
  }
};

} // namespace mlx_linalg_ext
