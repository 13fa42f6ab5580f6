// The ops matrix_exp / expm_frechet and the transforms of their primitives.
// Backend code lives in csrc/cpu, csrc/cuda and csrc/metal (kernels in metal/).
#include "matrix_exp.h"

#include <optional>
#include <sstream>
#include <stdexcept>

#include "mlx/ops.h"
#include "mlx/stream.h"
#include "primitives.h"

namespace mlx_linalg_ext {

namespace mx = mlx::core;

namespace {

std::string shape_str(const mx::array& a) {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < a.ndim(); ++i) {
    os << (i ? ", " : "") << a.shape(i);
  }
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}

void check_square(const mx::array& a, const char* op, const char* arg) {
  if (a.ndim() < 2) {
    throw std::invalid_argument(
        std::string("[") + op + "] Expected " + arg +
        " with at least 2 dimensions (..., n, n), got shape " + shape_str(a) +
        ".");
  }
  if (a.shape(-1) != a.shape(-2)) {
    throw std::invalid_argument(
        std::string("[") + op + "] Expected " + arg +
        " with square trailing dimensions (..., n, n), got shape " +
        shape_str(a) + ".");
  }
}

// The dtype the primitive computes in: half types in float32 (their range and
// precision cannot carry the squarings), integers and bools promote to
// float32 like mx.exp.
mx::Dtype compute_dtype(mx::Dtype t) {
  if (t == mx::float64 || t == mx::complex64) {
    return t;
  }
  return mx::float32;
}

// The dtype returned to the caller: floating inputs keep theirs.
mx::Dtype result_dtype(mx::Dtype t) {
  return mx::issubdtype(t, mx::inexact) ? t : mx::float32;
}

// Builds without GPU kernels run the op on the CPU stream (documented in the
// README), so a GPU stream never fails for lack of a kernel.
mx::Stream resolve_stream(mx::StreamOrDevice s, mx::Dtype t, const char* op) {
  mx::Stream stream = mx::to_stream(s);
  if (stream.device == mx::Device::gpu) {
    if (t == mx::float64) {
      throw std::invalid_argument(
          std::string("[") + op +
          "] float64 is not supported on the GPU; use a CPU stream "
          "(stream=mx.cpu).");
    }
#ifndef MLX_LINALG_EXT_GPU
    stream = mx::default_stream(mx::Device::cpu);
#endif
  }
  return stream;
}

// [[top_left, top_right], [0, bottom_right]] for batches of n x n blocks.
mx::array block_upper(
    const mx::array& top_left,
    const mx::array& top_right,
    const mx::array& bottom_right,
    mx::Stream s) {
  auto top = mx::concatenate({top_left, top_right}, -1, s);
  auto bottom =
      mx::concatenate({mx::zeros_like(bottom_right, s), bottom_right}, -1, s);
  return mx::concatenate({top, bottom}, -2, s);
}

// [[top_left, 0], [bottom_left, bottom_right]].
mx::array block_lower(
    const mx::array& top_left,
    const mx::array& bottom_left,
    const mx::array& bottom_right,
    mx::Stream s) {
  auto top = mx::concatenate({top_left, mx::zeros_like(top_left, s)}, -1, s);
  auto bottom = mx::concatenate({bottom_left, bottom_right}, -1, s);
  return mx::concatenate({top, bottom}, -2, s);
}

// Block (r, c) of size n x n of a batch of 2n x 2n matrices.
mx::array block(const mx::array& m, int r, int c, int n, mx::Stream s) {
  mx::Shape start(m.ndim(), 0);
  mx::Shape stop = m.shape();
  start[m.ndim() - 2] = r * n;
  stop[m.ndim() - 2] = (r + 1) * n;
  start[m.ndim() - 1] = c * n;
  stop[m.ndim() - 1] = (c + 1) * n;
  return mx::slice(m, start, stop, s);
}

// A^H, the adjoint MLX's vjps use (Matmul::vjp conjugates complex operands).
mx::array adjoint(const mx::array& a, mx::Stream s) {
  auto t = mx::swapaxes(a, -1, -2, s);
  return mx::issubdtype(a.dtype(), mx::complexfloating) ? mx::conjugate(t, s)
                                                        : t;
}

// x as the primitives take it: row-contiguous. An evaluated array that
// already is goes in as it is: a Contiguous node costs a graph node even
// when it copies nothing.
mx::array row_contiguous(const mx::array& x, mx::Stream s) {
  if (x.is_available() && x.flags().row_contiguous) {
    return x;
  }
  return mx::contiguous(x, false, s);
}

} // namespace

mx::array matrix_exp(const mx::array& a, mx::StreamOrDevice s_) {
  constexpr const char* op = "matrix_exp";
  check_square(a, op, "a");
  auto out_dtype = result_dtype(a.dtype());
  auto dtype = compute_dtype(a.dtype());
  auto s = resolve_stream(s_, dtype, op);
  auto x = mx::astype(a, dtype, s);
  if (x.size() == 0) {
    return mx::astype(x, out_dtype, s);
  }
  x = row_contiguous(x, s);
  auto out = mx::array(x.shape(), dtype, std::make_shared<MatrixExp>(s), {x});
  return mx::astype(out, out_dtype, s);
}

std::pair<mx::array, mx::array>
expm_frechet(const mx::array& a, const mx::array& e, mx::StreamOrDevice s_) {
  constexpr const char* op = "expm_frechet";
  check_square(a, op, "a");
  check_square(e, op, "e");
  if (a.shape(-1) != e.shape(-1)) {
    throw std::invalid_argument(
        std::string(
            "[expm_frechet] a and e must hold matrices of the same "
            "size, got shapes ") +
        shape_str(a) + " and " + shape_str(e) + ".");
  }
  auto promoted = mx::promote_types(a.dtype(), e.dtype());
  auto out_dtype = result_dtype(promoted);
  auto dtype = compute_dtype(promoted);
  auto s = resolve_stream(s_, dtype, op);
  auto inputs = mx::broadcast_arrays(
      {mx::astype(a, dtype, s), mx::astype(e, dtype, s)}, s);
  auto& x = inputs[0];
  auto& y = inputs[1];
  if (x.size() == 0) {
    return {mx::astype(x, out_dtype, s), mx::astype(y, out_dtype, s)};
  }
  x = row_contiguous(x, s);
  y = row_contiguous(y, s);
  auto outs = mx::array::make_arrays(
      {x.shape(), x.shape()},
      {dtype, dtype},
      std::make_shared<ExpmFrechet>(s),
      {x, y});
  return {mx::astype(outs[0], out_dtype, s), mx::astype(outs[1], out_dtype, s)};
}

// d exp(A)[T] = L(A, T).
std::vector<mx::array> MatrixExp::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>&) {
  return {expm_frechet(primals[0], tangents[0], stream()).second};
}

// The adjoint of E -> L(A, E) is G -> L(A^H, G).
std::vector<mx::array> MatrixExp::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  auto s = stream();
  return {expm_frechet(adjoint(primals[0], s), cotangents[0], s).second};
}

std::pair<std::vector<mx::array>, std::vector<int>> MatrixExp::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto a = mx::moveaxis(inputs[0], axes[0], 0, stream());
  return {{matrix_exp(a, stream())}, {0}};
}

// exp(A) and L(A, E) are the blocks (0,0) and (0,1) of exp(M) with
// M = [[A, E], [0, A]], so their derivatives are blocks of the Frechet
// derivative of exp at M (Mathias 1996; Al-Mohy & Higham 2009, eq. (3.6)).
std::vector<mx::array> ExpmFrechet::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>& argnums) {
  auto s = stream();
  const auto& a = primals[0];
  const auto& e = primals[1];
  int n = a.shape(-1);
  std::optional<mx::array> da, de;
  for (size_t i = 0; i < argnums.size(); ++i) {
    (argnums[i] == 0 ? da : de) = tangents[i];
  }
  if (!da) {
    // E enters linearly: d exp(A) = 0, d L(A, E)[dE] = L(A, dE).
    return {mx::zeros_like(a, s), expm_frechet(a, *de, s).second};
  }
  if (!de) {
    de = mx::zeros_like(e, s);
  }
  auto m = block_upper(a, e, a, s);
  auto dm = block_upper(*da, *de, *da, s);
  auto dexp_m = expm_frechet(m, dm, s).second;
  return {block(dexp_m, 0, 0, n, s), block(dexp_m, 0, 1, n, s)};
}

std::vector<mx::array> ExpmFrechet::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  auto s = stream();
  const auto& a = primals[0];
  const auto& e = primals[1];
  int n = a.shape(-1);
  // Cotangent of exp(M) is [[G_X, G_L], [0, 0]]; its vjp is L(M^H, .), and M
  // holds A twice (diagonal blocks) and E once (block (0, 1)).
  auto ah = adjoint(a, s);
  auto mh = block_lower(ah, adjoint(e, s), ah, s);
  auto zero = mx::zeros_like(cotangents[0], s);
  auto g = block_upper(cotangents[0], cotangents[1], zero, s);
  auto w = expm_frechet(mh, g, s).second;
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    if (arg == 0) {
      grads.push_back(mx::add(block(w, 0, 0, n, s), block(w, 1, 1, n, s), s));
    } else {
      grads.push_back(block(w, 0, 1, n, s));
    }
  }
  return grads;
}

std::pair<std::vector<mx::array>, std::vector<int>> ExpmFrechet::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto s = stream();
  // Move each mapped axis to the front; an unmapped input gets a size-1 axis
  // that expm_frechet broadcasts.
  auto front = [&](const mx::array& x, int axis) {
    return axis >= 0 ? mx::moveaxis(x, axis, 0, s) : mx::expand_dims(x, 0, s);
  };
  auto [x, l] =
      expm_frechet(front(inputs[0], axes[0]), front(inputs[1], axes[1]), s);
  return {{x, l}, {0, 0}};
}

} // namespace mlx_linalg_ext
