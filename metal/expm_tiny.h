// Tiny-matrix kernels of MatrixExp and ExpmFrechet (n <= kTinyMaxN): one
// thread per matrix and many matrices per threadgroup, for large batches of
// small matrices (rotations, rigid motions), where one threadgroup per
// matrix (expm_small) would leave most of each SIMD group idle and meet a
// barrier every few flops.
//
// Each thread runs expm_program (expm_kernels.h), the fused kernel's own
// evaluator, on its matrix with no barrier inside: the numerics are the
// fused kernel's, operation for operation. The matrix's buffers are a slice
// of threadgroup memory; the product results are registers (T p[n * n]).
// Why threadgroup memory and not thread arrays for the buffers: the product
// program hands buffers out at run time from each matrix's own degree, and a
// thread array indexed at run time lives in device-backed thread memory.
//
// Memory: element idx of buffer q of the threadgroup's matrix m sits at
// (q * n * n + idx) * S + m, S = tiny_stride (matrices + 1), so that the
// threads of a SIMD group, one per matrix, touch consecutive words.
// Loads and stores are staged: the threadgroup's matrices are one contiguous
// run of device memory, copied in and out by consecutive threads reading
// consecutive words; the padding of the stride spreads those copies over the
// banks.
#pragma once

#include "expm_kernels.h"

namespace expm_metal {

// One thread's matrix: its buffers start at element `tid` of each buffer
// row; A and E are staged in buffer 0 of each pass, where the results go too.
template <typename T, int S>
struct TinyMatrix {
  int n;
  threadgroup T* bufs;
  threadgroup T* dbufs;

  int owned(int r) const {
    return r;
  }
  T a_at(int idx) const {
    return bufs[idx * S];
  }
  T e_at(int idx) const {
    return dbufs[idx * S];
  }
  void barrier() const {}
  // Buffer 0 holds slot A (and dA) from the start, and is read for the last
  // time by the step that stores the results: the final combination reads
  // element idx only before writing it, and a squaring reads its registers.
  void store(int idx, T xv, T lv, bool frechet) const {
    bufs[idx * S] = xv;
    if (frechet) {
      dbufs[idx * S] = lv;
    }
  }
  // The same sums, in the same order, as the fused kernel's threads.
  void norms(T mu, thread float& norm, thread float& shifted_norm) const {
    norm = 0.0f;
    shifted_norm = 0.0f;
    for (int j = 0; j < n; ++j) {
      float c;
      float cs;
      column_sums(*this, j, mu, c, cs);
      norm = nan_max(norm, c);
      shifted_norm = nan_max(shifted_norm, cs);
    }
  }
  void buffer_norms(
      const threadgroup T* x,
      const threadgroup T* y,
      thread float& nx,
      thread float& ny) const {
    nx = 0.0f;
    ny = 0.0f;
    for (int j = 0; j < n; ++j) {
      float cx;
      float cy;
      buffer_column_sums<S>(x, y, n, j, cx, cy);
      nx = nan_max(nx, cx);
      ny = nan_max(ny, cy);
    }
  }
};

// Matrices first .. first + count - 1 of the batch, count <= M (the last
// threadgroup takes the tail). N is the order: the loops over a matrix
// unroll and the product results stay in registers.
template <typename T, bool Frechet, int N>
void expm_tiny_body(
    const device T* a_all,
    const device T* e_all,
    device T* x_all,
    device T* l_all,
    int batch,
    threadgroup char* smem,
    uint tid,
    uint threads,
    uint group) {
  constexpr int M = tiny_matrices(N, int(sizeof(T)), Frechet);
  constexpr int S = tiny_stride(N, int(sizeof(T)), Frechet);
  constexpr int nn = N * N;
  EXPM_METAL_ASSERT(int(threads) == M);
  threadgroup T* bufs = (threadgroup T*)smem;
  threadgroup T* dbufs = bufs + kSmallBuffers * nn * S;
  const int first = int(group) * M;
  const int count = batch - first < M ? batch - first : M;
  const ulong base = ulong(first) * ulong(nn);

  // Through a register: no copy of the complex struct between two memory
  // address spaces (the fused kernel has none either).
  for (int g = int(tid); g < count * nn; g += M) {
    const int at = (g % nn) * S + g / nn;
    T v = a_all[base + g];
    bufs[at] = v;
    if (Frechet) {
      T w = e_all[base + g];
      dbufs[at] = w;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (int(tid) < count) {
    TinyMatrix<T, S> v = {N, bufs + tid, dbufs + tid};
    expm_program<T, Frechet, nn, S>(v);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (int g = int(tid); g < count * nn; g += M) {
    const int at = (g % nn) * S + g / nn;
    T v = bufs[at];
    x_all[base + g] = v;
    if (Frechet) {
      T w = dbufs[at];
      l_all[base + g] = w;
    }
  }
}

// One kernel per order rather than a switch in one: a pipeline's registers,
// and with them how many threads a core holds, are those of its largest
// path, which would be n = 8's for every n. ints: {n, batch};
// tiny_matrices(n, ...) threads (one per matrix) per threadgroup and
// ceil(batch / that) threadgroups.
#define EXPM_TINY_KERNELS(N)                                   \
  template <typename T>                                        \
  [[kernel]] void expm_tiny_##N(                               \
      const device T* a [[buffer(0)]],                         \
      device T* x [[buffer(1)]],                               \
      constant int* ints [[buffer(2)]],                        \
      threadgroup char* smem EXPM_THREADGROUP_MEMORY,          \
      uint3 tid [[thread_position_in_threadgroup]],            \
      uint3 group [[threadgroup_position_in_grid]],            \
      uint3 threads [[threads_per_threadgroup]]) {             \
    EXPM_METAL_ASSERT(ints[0] == N);                           \
    expm_tiny_body<T, false, N>(                               \
        a, a, x, x, ints[1], smem, tid.x, threads.x, group.x); \
  }                                                            \
  template <typename T>                                        \
  [[kernel]] void expm_frechet_tiny_##N(                       \
      const device T* a [[buffer(0)]],                         \
      const device T* e [[buffer(1)]],                         \
      device T* x [[buffer(2)]],                               \
      device T* l [[buffer(3)]],                               \
      constant int* ints [[buffer(4)]],                        \
      threadgroup char* smem EXPM_THREADGROUP_MEMORY,          \
      uint3 tid [[thread_position_in_threadgroup]],            \
      uint3 group [[threadgroup_position_in_grid]],            \
      uint3 threads [[threads_per_threadgroup]]) {             \
    EXPM_METAL_ASSERT(ints[0] == N);                           \
    expm_tiny_body<T, true, N>(                                \
        a, e, x, l, ints[1], smem, tid.x, threads.x, group.x); \
  }

EXPM_TINY_KERNELS(1)
EXPM_TINY_KERNELS(2)
EXPM_TINY_KERNELS(3)
EXPM_TINY_KERNELS(4)
EXPM_TINY_KERNELS(5)
EXPM_TINY_KERNELS(6)
EXPM_TINY_KERNELS(7)
EXPM_TINY_KERNELS(8)
#undef EXPM_TINY_KERNELS

} // namespace expm_metal
