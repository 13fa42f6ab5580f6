// Metal kernels of MatrixExp and ExpmFrechet, as templates over the element
// type (float, complex64). matrix_exp.metal instantiates them for the
// metallib; the CPU emulator (metal/emulator) instantiates the same code for
// the tests. metal/launch_plan.h says which of them run, on which grids.
//
// Per matrix, on the device: the 1-norms of A and A - mu I (mu = tr(A) / n),
// expm::decide, the product program of the chosen degree (expm_numerics.h),
// the factor e^(mu 2^-s), and s squarings. Where the decision is the last
// degree with squarings, the first two products B^2, B^3 are formed from the
// unscaled B = A - mu I and their 1-norms refine s
// (expm::refine_squarings) before the scaling; the third, B^6 of the scaled
// B^3, may refine it again (expm::refine_squarings_sixth), the slots scaled
// exactly to the final s. The Frechet kernels carry the derivative through
// the same program, from E scaled by the final s: dP = dL R + L dR for each
// product and d(X^2) = X dX + dX X for each squaring.
#pragma once

#include <metal_stdlib>

#ifndef EXPM_TABLE
#define EXPM_TABLE constant
#endif
#define EXPM_REAL float
#include "expm_numerics.h"

#include "expm_complex.h"
#include "expm_layout.h"
#include "expm_simd_product.h"

// Checks of the kernels' own invariants: the emulator reports them, Metal
// compiles them away.
#ifndef EXPM_METAL_ASSERT
#define EXPM_METAL_ASSERT(cond)
#endif

// Metal's attribute of the threadgroup memory argument; the emulator, whose
// `threadgroup` is a macro, defines it away.
#ifndef EXPM_THREADGROUP_MEMORY
#define EXPM_THREADGROUP_MEMORY [[threadgroup(0)]]
#endif

using namespace metal;

namespace expm_metal {

typedef const constant float* Coefs;

// Column maximum in which NaN wins (max() and fmax() drop it).
inline float nan_max(float m, float x) {
  return (x > m || isnan(x)) ? x : m;
}

// ---------------------------------------------------------------------------
// The evaluator of one matrix in threadgroup memory: norms, decision, product
// program, factor and squarings. Two paths run it:
// - fused (expm_small below): one threadgroup per matrix (n <= kSmallMaxN);
//   its threads share the elements and meet at barriers between the steps;
// - tiny (expm_tiny.h): one thread per matrix (n <= kTinyMaxN), many
//   matrices per threadgroup, no barrier inside the evaluation.
// A view V says what differs (SmallMatrix, TinyMatrix):
//   n, bufs, dbufs    the order and the buffers of the primal and derivative
//                     passes, kSmallBuffers n x n buffers each
//   owned(r)          the element a thread computes in its r-th register (r <
//                     Own; those >= n * n are skipped)
//   a_at, e_at        elements of A and E
//   norms             the 1-norms of A and A - mu I
//   buffer_norms      the 1-norms of two of the buffers
//   barrier           between one step's writes and the next step's reads
//   store             the results
// Element idx of buffer q sits at bufs[(q * n * n + idx) * S]: S = 1 for one
// matrix per threadgroup; S > 1 interleaves the matrices of a threadgroup so
// that its threads, one per matrix, read consecutive words.
// ---------------------------------------------------------------------------

// Full unrolling of the loops over a thread's registers: a register array
// indexed by a loop counter would otherwise live in (device-backed) thread
// memory. Only Metal's compiler is asked; the emulator needs no registers.
#if defined(__METAL__)
#define EXPM_UNROLL _Pragma("clang loop unroll(full)")
#else
#define EXPM_UNROLL
#endif

// The buffers of one pass (primal or derivative) are handed out from a bit
// mask. Every thread runs the same bookkeeping on the same decision, so all
// agree on it without communicating.
inline int take_buffer(thread uint& used) {
  for (int q = 0; q < kSmallBuffers; ++q) {
    if ((used & (1u << q)) == 0) {
      used |= 1u << q;
      return q;
    }
  }
  EXPM_METAL_ASSERT(false);
  return 0;
}

inline void free_buffer(thread uint& used, int q) {
  used &= ~(1u << q);
}

// mu = tr(A) / n in float, as close as the CPU and CUDA backends form it in
// double: each a_ii scaled by 2^-k <= 1 / n (exact, and the sum cannot
// overflow), summed with its rounding errors carried (TwoSum), divided once.
// Summing a_ii / n rounds every term: for -I + cN, n = 12, mu misses -1 by an
// ulp, B = A - mu I is no longer nilpotent and ||B^6|| ~ 6 |delta| c^5 keeps
// the squarings that the B^6 rule removes on the other backends.
struct MeanPart {
  float hi;
  float lo;
  void add(float x) {
    const float sum = hi + x;
    const float back = sum - hi;
    lo += (hi - (sum - back)) + (x - back);
    hi = sum;
  }
  // (hi + lo) / n times 2^k, the quotient corrected by its exact remainder.
  float mean(int n, int k) const {
    const float q = hi / float(n);
    const float r = fma(-q, float(n), hi);
    return ldexp(q + (r + lo) / float(n), k);
  }
};

template <typename T>
struct DiagonalMean {
  int k;
  MeanPart re;
  MeanPart im;
  static DiagonalMean start(int n) {
    int k = 0;
    while ((1 << k) < n) {
      ++k;
    }
    DiagonalMean m = {k, {0.0f, 0.0f}, {0.0f, 0.0f}};
    return m;
  }
  void add(T x) {
    re.add(ldexp(Elem<T>::re(x), -k));
    im.add(ldexp(Elem<T>::im(x), -k));
  }
  T mean(int n) const {
    return Elem<T>::make(re.mean(n, k), im.mean(n, k));
  }
};

// The sums of |a_ij| over column j of A and of A - mu I.
template <typename T, typename V>
void column_sums(
    thread const V& v,
    int j,
    T mu,
    thread float& c,
    thread float& cs) {
  const int n = v.n;
  c = 0.0f;
  cs = 0.0f;
  for (int i = 0; i < n; ++i) {
    T x = v.a_at(i * n + j);
    c += Elem<T>::magnitude(x);
    cs += Elem<T>::magnitude(i == j ? x - mu : x);
  }
}

// sum_j c[j] slot_j at element idx (row i, column j) for 1 <= j < count, plus
// c[0] on the diagonal when the identity takes part (the primal pass).
template <int S, typename T>
T small_combination_at(
    Coefs c,
    int count,
    thread const int* slot,
    const threadgroup T* bufs,
    int nn,
    int idx,
    bool diagonal,
    bool identity) {
  // With FMAs in slot order, as the CUDA kernels; the identity term last, as
  // the CPU evaluator adds it.
  T v = Elem<T>::make(0.0f, 0.0f);
  for (int j = 1; j < count; ++j) {
    if (c[j] != 0.0f) {
      v = mul_add(c[j], bufs[(slot[j] * nn + idx) * S], v);
    }
  }
  if (identity && diagonal) {
    v = v + Elem<T>::make(c[0], 0.0f);
  }
  return v;
}

// The operand sum_j c[j] slot_j of a product: the slot's buffer where the
// combination is one slot on its own, else a fresh buffer that this call
// fills (the caller's barrier publishes it). *scratch says which.
template <int Own, int S, typename T, typename V>
int small_operand(
    Coefs c,
    int count,
    thread const int* slot,
    threadgroup T* bufs,
    thread uint& used,
    bool identity,
    thread const V& v,
    thread bool& scratch) {
  int lone = expm::lone_slot(c, count, identity);
  scratch = lone < 1;
  if (!scratch) {
    return slot[lone];
  }
  int q = take_buffer(used);
  const int n = v.n;
  const int nn = n * n;
  EXPM_UNROLL
  for (int r = 0; r < Own; ++r) {
    int idx = v.owned(r);
    if (idx < nn) {
      bufs[(q * nn + idx) * S] = small_combination_at<S>(
          c, count, slot, bufs, nn, idx, idx / n == idx % n, identity);
    }
  }
  return q;
}

// Where a product's result goes: into its left operand's buffer if that one
// was made for the product, else into the right one's, else a fresh one.
inline int small_destination(
    thread uint& used,
    int left,
    bool left_scratch,
    int right,
    bool right_scratch) {
  if (left_scratch) {
    if (right_scratch && right != left) {
      free_buffer(used, right);
    }
    return left;
  }
  if (right_scratch) {
    return right;
  }
  return take_buffer(used);
}

// What a product step computes: the primal product L R, the derivative
// dL R + L dR, or both. A refined decision (expm::refines_squarings) forms
// its first three primal products before the final scaling is known, and
// their derivatives after.
enum : int { kPrimal = 1, kDerivative = 2, kBoth = 3 };

// The entries this thread owns of L R and/or dL R + L dR (Mode), into
// registers: a product may then overwrite its operands once every thread is
// done reading them. A squaring is L = R = X, dL = dR = dX.
template <int Mode, int Own, int S, typename T, typename V>
void small_product(
    thread const V& v,
    const threadgroup T* lb,
    const threadgroup T* rb,
    const threadgroup T* dlb,
    const threadgroup T* drb,
    thread T* p,
    thread T* dp) {
  const int n = v.n;
  const int nn = n * n;
  EXPM_UNROLL
  for (int r = 0; r < Own; ++r) {
    int idx = v.owned(r);
    if (idx < nn) {
      int i = idx / n;
      int j = idx % n;
      T acc = Elem<T>::make(0.0f, 0.0f);
      T dacc = acc;
      for (int m = 0; m < n; ++m) {
        T l = lb[(i * n + m) * S];
        T rt = rb[(m * n + j) * S];
        if (Mode & kPrimal) {
          acc = mul_add(l, rt, acc);
        }
        if (Mode & kDerivative) {
          dacc = mul_add(dlb[(i * n + m) * S], rt, dacc);
          dacc = mul_add(l, drb[(m * n + j) * S], dacc);
        }
      }
      p[r] = acc;
      dp[r] = dacc;
    }
  }
}

// Product position k of degree d (Mode: which passes), from the slots made
// before it into slot 2 + k. Operand buffers made for the product are
// reused for its result or freed.
template <int Mode, int Own, int S, typename T, typename V>
void small_step(
    thread const V& v,
    int d,
    int k,
    thread int* slot,
    thread int* dslot,
    thread uint& used,
    thread uint& dused) {
  const int n = v.n;
  const int nn = n * n;
  threadgroup T* bufs = v.bufs;
  threadgroup T* dbufs = v.dbufs;
  const int step = expm::kFirstStep[d] + k;
  const int count = 2 + k;
  Coefs cl = expm::kStepLeft[step];
  Coefs cr = expm::kStepRight[step];
  // The primal operands are read by both passes.
  bool ls, rs, dls = false, drs = false;
  int lq = small_operand<Own, S>(cl, count, slot, bufs, used, true, v, ls);
  int rq = small_operand<Own, S>(cr, count, slot, bufs, used, true, v, rs);
  int dlq = 0;
  int drq = 0;
  if (Mode & kDerivative) {
    dlq = small_operand<Own, S>(cl, count, dslot, dbufs, dused, false, v, dls);
    drq = small_operand<Own, S>(cr, count, dslot, dbufs, dused, false, v, drs);
  }
  v.barrier();

  T p[Own];
  T dp[Own];
  small_product<Mode, Own, S>(
      v,
      bufs + lq * nn * S,
      bufs + rq * nn * S,
      dbufs + dlq * nn * S,
      dbufs + drq * nn * S,
      p,
      dp);
  v.barrier();

  int pq = 0;
  if (Mode & kPrimal) {
    pq = small_destination(used, lq, ls, rq, rs);
    slot[2 + k] = pq;
  } else {
    if (ls) {
      free_buffer(used, lq);
    }
    if (rs && rq != lq) {
      free_buffer(used, rq);
    }
  }
  int dpq = 0;
  if (Mode & kDerivative) {
    dpq = small_destination(dused, dlq, dls, drq, drs);
    dslot[2 + k] = dpq;
  }
  EXPM_UNROLL
  for (int r = 0; r < Own; ++r) {
    int idx = v.owned(r);
    if (idx < nn) {
      if (Mode & kPrimal) {
        bufs[(pq * nn + idx) * S] = p[r];
      }
      if (Mode & kDerivative) {
        dbufs[(dpq * nn + idx) * S] = dp[r];
      }
    }
  }
  v.barrier();
}

// The sums of |x_ij| over column j of the buffers x and y (element idx at
// [idx * S]).
template <int S, typename T>
void buffer_column_sums(
    const threadgroup T* x,
    const threadgroup T* y,
    int n,
    int j,
    thread float& cx,
    thread float& cy) {
  cx = 0.0f;
  cy = 0.0f;
  for (int i = 0; i < n; ++i) {
    cx += Elem<T>::magnitude(x[(i * n + j) * S]);
    cy += Elem<T>::magnitude(y[(i * n + j) * S]);
  }
}

// The last degree's slots B, B^2, B^3 (and B^6 when sixth) times 2^e, 4^e,
// 8^e (64^e): powers of two, exact. 64^e as 8^e twice: 2^(6e) overflows
// float beyond e = 21, while the scaled B^6 stays below theta^6. Each thread
// scales the elements it owns; the barrier publishes them.
template <int Own, int S, typename T, typename V>
void scale_powers(
    thread const V& v,
    thread const int* slot,
    bool sixth,
    int e) {
  const int nn = v.n * v.n;
  const float f1 = ldexp(1.0f, e);
  const float f2 = f1 * f1;
  const float f3 = f2 * f1;
  EXPM_UNROLL
  for (int r = 0; r < Own; ++r) {
    int idx = v.owned(r);
    if (idx < nn) {
      threadgroup T* b1 = v.bufs + (slot[1] * nn + idx) * S;
      threadgroup T* b2 = v.bufs + (slot[2] * nn + idx) * S;
      threadgroup T* b3 = v.bufs + (slot[3] * nn + idx) * S;
      *b1 = f1 * *b1;
      *b2 = f2 * *b2;
      *b3 = f3 * *b3;
      if (sixth) {
        threadgroup T* b6 = v.bufs + (slot[4] * nn + idx) * S;
        *b6 = f3 * (f3 * *b6);
      }
    }
  }
  v.barrier();
}

// The whole evaluation of the view's matrix; see the top of this section.
template <typename T, bool Frechet, int Own, int S, typename V>
void expm_program(thread const V& v) {
  const int n = v.n;
  const int nn = n * n;
  threadgroup T* bufs = v.bufs;
  threadgroup T* dbufs = v.dbufs;

  // mu formed by every thread in the same order (the same value).
  DiagonalMean<T> trace = DiagonalMean<T>::start(n);
  for (int i = 0; i < n; ++i) {
    trace.add(v.a_at(i * n + i));
  }
  T mu = trace.mean(n);
  float norm;
  float shifted_norm;
  v.norms(mu, norm, shifted_norm);
  const expm::Decision dec = expm::decide(norm, shifted_norm, expm::kSingle);

  if (dec.degree == expm::kNoAnswer) {
    T nan_value = Elem<T>::make(NAN, NAN);
    EXPM_UNROLL
    for (int r = 0; r < Own; ++r) {
      int idx = v.owned(r);
      if (idx < nn) {
        v.store(idx, nan_value, nan_value, Frechet);
      }
    }
    return;
  }
  if (!dec.shift) {
    mu = Elem<T>::make(0.0f, 0.0f);
  }
  const int d = dec.degree;
  // A refined decision starts from the unscaled matrix: its squarings are
  // known after the first two products (expm::refine_squarings).
  const bool refine = expm::refines_squarings(dec);
  int s = dec.squarings;
  float scale = refine ? 1.0f : ldexp(1.0f, -s);

  // Slot j >= 1 lives in buffer slot[j] (dslot[j] for the derivative).
  uint used = 0;
  uint dused = 0;
  int slot[expm::kMaxSlots];
  int dslot[expm::kMaxSlots];
  slot[1] = take_buffer(used);
  dslot[1] = Frechet ? take_buffer(dused) : 0;
  EXPM_UNROLL
  for (int r = 0; r < Own; ++r) {
    int idx = v.owned(r);
    if (idx < nn) {
      T x = v.a_at(idx);
      if (idx / n == idx % n) {
        x = x - mu;
      }
      bufs[(slot[1] * nn + idx) * S] = scale * x;
      if (Frechet && !refine) {
        dbufs[(dslot[1] * nn + idx) * S] = scale * v.e_at(idx);
      }
    }
  }
  v.barrier();

  int first = 0;
  if (refine) {
    // B^2 and B^3 of the unscaled B give s (expm::refine_squarings); B, B^2,
    // B^3 scaled by 2^-s, 4^-s, 8^-s, exactly; then B^6 (the third product)
    // of the scaled B^3 may take squarings away
    // (expm::refine_squarings_sixth), B .. B^6 scaled back up by 2^d .. 64^d.
    // The slots are those of scaling B by the final 2^-s first; E gets that
    // scale and the derivatives of the three products come from the slots.
    small_step<kPrimal, Own, S, T>(v, d, 0, slot, dslot, used, dused);
    small_step<kPrimal, Own, S, T>(v, d, 1, slot, dslot, used, dused);
    float norm2;
    float norm3;
    v.buffer_norms(
        bufs + slot[2] * nn * S, bufs + slot[3] * nn * S, norm2, norm3);
    const int s3 = expm::refine_squarings(norm2, norm3, s, expm::kSingle);
    scale_powers<Own, S, T>(v, slot, false, -s3);
    small_step<kPrimal, Own, S, T>(v, d, 2, slot, dslot, used, dused);
    float norm6;
    float unused;
    const threadgroup T* b6 = bufs + slot[4] * nn * S;
    v.buffer_norms(b6, b6, norm6, unused);
    s = expm::refine_squarings_sixth(
        ldexp(norm2, -2 * s3), ldexp(norm3, -3 * s3), norm6, s3, expm::kSingle);
    scale = ldexp(1.0f, -s);
    // The same s in every thread (same norms): a uniform branch.
    if (s != s3) {
      scale_powers<Own, S, T>(v, slot, true, s3 - s);
    }
    if (Frechet) {
      // Published by the first barrier of the step below, before any read.
      EXPM_UNROLL
      for (int r = 0; r < Own; ++r) {
        int idx = v.owned(r);
        if (idx < nn) {
          dbufs[(dslot[1] * nn + idx) * S] = scale * v.e_at(idx);
        }
      }
      for (int k = 0; k < 3; ++k) {
        small_step<kDerivative, Own, S, T>(v, d, k, slot, dslot, used, dused);
      }
    }
    first = 3;
  }
  for (int k = first; k < expm::kNumProducts[d]; ++k) {
    small_step<Frechet ? kBoth : kPrimal, Own, S, T>(
        v, d, k, slot, dslot, used, dused);
  }

  // The approximant times e^(mu 2^-s) (the squarings then stay in the range
  // of the result); straight to the outputs when there is no squaring.
  T factor = dec.shift
      ? Elem<T>::exp_of(Elem<T>::re(mu) * scale, Elem<T>::im(mu) * scale)
      : Elem<T>::make(1.0f, 0.0f);
  const int count = expm::num_slots(d);
  Coefs cf = expm::kFinal[d];
  const int xq = take_buffer(used);
  const int dxq = Frechet ? take_buffer(dused) : 0;
  threadgroup T* xb = bufs + xq * nn * S;
  threadgroup T* dxb = dbufs + dxq * nn * S;
  EXPM_UNROLL
  for (int r = 0; r < Own; ++r) {
    int idx = v.owned(r);
    if (idx < nn) {
      bool diagonal = idx / n == idx % n;
      T x = factor *
          small_combination_at<S>(
                cf, count, slot, bufs, nn, idx, diagonal, true);
      T dx = x;
      if (Frechet) {
        dx = factor *
            small_combination_at<S>(
                 cf, count, dslot, dbufs, nn, idx, diagonal, false);
      }
      if (s == 0) {
        v.store(idx, x, dx, Frechet);
      } else {
        xb[idx * S] = x;
        if (Frechet) {
          dxb[idx * S] = dx;
        }
      }
    }
  }
  if (s == 0) {
    return;
  }
  v.barrier();

  for (int q = 0; q < s; ++q) {
    const bool last = q == s - 1;
    T y[Own];
    T dy[Own];
    small_product<Frechet ? kBoth : kPrimal, Own, S>(
        v, xb, xb, dxb, dxb, y, dy);
    if (!last) {
      v.barrier();
    }
    EXPM_UNROLL
    for (int r = 0; r < Own; ++r) {
      int idx = v.owned(r);
      if (idx < nn) {
        if (last) {
          v.store(idx, y[r], dy[r], Frechet);
        } else {
          xb[idx * S] = y[r];
          if (Frechet) {
            dxb[idx * S] = dy[r];
          }
        }
      }
    }
    if (!last) {
      v.barrier();
    }
  }
}

// Fused path: one threadgroup per matrix. Each thread owns the elements tid +
// r * threads (r < kSmallOwn) of every result; the inputs are read from and
// the results written to device memory directly.
template <typename T>
struct SmallMatrix {
  int n;
  threadgroup T* bufs;
  threadgroup T* dbufs;
  const device T* a;
  const device T* e;
  device T* x;
  device T* l;
  threadgroup float* colsum; // kSmallMaxN sums for A, then for A - mu I
  uint tid;
  uint threads;

  int owned(int r) const {
    return int(tid) + r * int(threads);
  }
  T a_at(int idx) const {
    return a[idx];
  }
  T e_at(int idx) const {
    return e[idx];
  }
  void barrier() const {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  void store(int idx, T xv, T lv, bool frechet) const {
    x[idx] = xv;
    if (frechet) {
      l[idx] = lv;
    }
  }
  // Thread j < n sums column j; every thread then takes the maxima in the
  // same order.
  void norms(T mu, thread float& norm, thread float& shifted_norm) const {
    if (int(tid) < n) {
      float c;
      float cs;
      column_sums(*this, int(tid), mu, c, cs);
      colsum[tid] = c;
      colsum[kSmallMaxN + tid] = cs;
    }
    barrier();
    norm = 0.0f;
    shifted_norm = 0.0f;
    for (int j = 0; j < n; ++j) {
      norm = nan_max(norm, colsum[j]);
      shifted_norm = nan_max(shifted_norm, colsum[kSmallMaxN + j]);
    }
  }
  // The same for two buffers (after a barrier that published them); the
  // column sums reuse the scratch, whose last reads precede that barrier.
  void buffer_norms(
      const threadgroup T* x,
      const threadgroup T* y,
      thread float& nx,
      thread float& ny) const {
    if (int(tid) < n) {
      float cx;
      float cy;
      buffer_column_sums<1>(x, y, n, int(tid), cx, cy);
      colsum[tid] = cx;
      colsum[kSmallMaxN + tid] = cy;
    }
    barrier();
    nx = 0.0f;
    ny = 0.0f;
    for (int j = 0; j < n; ++j) {
      nx = nan_max(nx, colsum[j]);
      ny = nan_max(ny, colsum[kSmallMaxN + j]);
    }
  }
};

template <typename T, bool Frechet>
void expm_small_body(
    const device T* a_all,
    const device T* e_all,
    device T* x_all,
    device T* l_all,
    int n,
    threadgroup char* smem,
    uint tid,
    uint threads,
    uint group) {
  const int nn = n * n;
  const ulong base = ulong(group) * ulong(nn);
  threadgroup T* bufs = (threadgroup T*)(smem + kSmallScratchBytes);
  SmallMatrix<T> v = {
      n,
      bufs,
      bufs + kSmallBuffers * nn,
      a_all + base,
      e_all + base,
      x_all + base,
      l_all + base,
      (threadgroup float*)smem,
      tid,
      threads};
  expm_program<T, Frechet, kSmallOwn, 1>(v);
}

// ints: {n}. One threadgroup per matrix.
template <typename T>
[[kernel]] void expm_small(
    const device T* a [[buffer(0)]],
    device T* x [[buffer(1)]],
    constant int* ints [[buffer(2)]],
    threadgroup char* smem EXPM_THREADGROUP_MEMORY,
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]],
    uint3 threads [[threads_per_threadgroup]]) {
  expm_small_body<T, false>(
      a, a, x, x, ints[0], smem, tid.x, threads.x, group.x);
}

template <typename T>
[[kernel]] void expm_frechet_small(
    const device T* a [[buffer(0)]],
    const device T* e [[buffer(1)]],
    device T* x [[buffer(2)]],
    device T* l [[buffer(3)]],
    constant int* ints [[buffer(4)]],
    threadgroup char* smem EXPM_THREADGROUP_MEMORY,
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]],
    uint3 threads [[threads_per_threadgroup]]) {
  expm_small_body<T, true>(
      a, e, x, l, ints[0], smem, tid.x, threads.x, group.x);
}

// ---------------------------------------------------------------------------
// Predicated path: a fixed list of dispatches (launch_plan.h) over Work, which
// holds the per-matrix parameters and then kLargeBuffers n x n buffers per
// matrix and pass. Each threadgroup reads its matrix's parameters and returns
// at once when the matrix does not need its step. ints: {n, batch, index of
// the step (product position or squaring), frechet}; the product kernel
// takes a fifth int (see there).
// ---------------------------------------------------------------------------

inline device float* matrix_params(device char* work, int b) {
  return (device float*)work + long(b) * kParamWords;
}

// Buffer q of matrix b (q >= kLargeBuffers: the derivative pass).
template <typename T>
device T*
matrix_buffer(device char* work, int n, int batch, bool frechet, int b, int q) {
  long nn = long(n) * n;
  device T* mats = (device T*)(work + params_bytes(batch));
  return mats + (long(b) * large_buffers(frechet) + q) * nn;
}

// The buffer of slot j >= 1 (slot 1 = A in buffer 0, P_k in buffer k - 1).
inline int slot_buffer(int j) {
  return j - 1;
}

// Operand of a product step: its lone slot, else the scratch buffer the
// combine kernel filled.
inline int large_operand(Coefs c, int count, bool identity, int scratch) {
  int lone = expm::lone_slot(c, count, identity);
  return lone >= 1 ? slot_buffer(lone) : scratch;
}

// The column sums of A and of A - mu I (expm_params).
template <typename T>
struct ShiftedColumns {
  const device T* a;
  int n;
  T mu;
  void sums(int j, thread float& c, thread float& cs) const {
    c = 0.0f;
    cs = 0.0f;
    for (int i = 0; i < n; ++i) {
      T v = a[long(i) * n + j];
      c += Elem<T>::magnitude(v);
      cs += Elem<T>::magnitude(i == j ? v - mu : v);
    }
  }
};

// The column sums of x and, when pair, of y (else 0; expm_refine).
template <typename T>
struct BufferColumns {
  const device T* x;
  const device T* y;
  int n;
  bool pair;
  void sums(int j, thread float& cx, thread float& cy) const {
    cx = 0.0f;
    cy = 0.0f;
    for (int i = 0; i < n; ++i) {
      cx += Elem<T>::magnitude(x[long(i) * n + j]);
      if (pair) {
        cy += Elem<T>::magnitude(y[long(i) * n + j]);
      }
    }
  }
};

// Two 1-norms of a threadgroup's matrix, the maxima of the column sums
// cols.sums(j, ...) gives: thread tid takes the columns tid, tid + threads,
// ... (a row's elements are read by consecutive threads). The maxima, in
// which NaN wins, reach thread 0. part: 2 * threads floats.
template <typename C>
void group_norms(
    thread const C& cols,
    int n,
    int tid,
    int threads,
    threadgroup float* part,
    thread float& n1,
    thread float& n2) {
  n1 = 0.0f;
  n2 = 0.0f;
  for (int j = tid; j < n; j += threads) {
    float c1;
    float c2;
    cols.sums(j, c1, c2);
    n1 = nan_max(n1, c1);
    n2 = nan_max(n2, c2);
  }
  part[tid] = n1;
  part[threads + tid] = n2;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (tid == 0) {
    for (int t = 1; t < threads; ++t) {
      n1 = nan_max(n1, part[t]);
      n2 = nan_max(n2, part[threads + t]);
    }
  }
}

// 1-norms, decision and factor per matrix; one threadgroup per matrix.
template <typename T>
[[kernel]] void expm_params(
    const device T* a_all [[buffer(0)]],
    device char* work [[buffer(1)]],
    constant int* ints [[buffer(2)]],
    threadgroup char* smem EXPM_THREADGROUP_MEMORY,
    uint3 tid3 [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]],
    uint3 threads3 [[threads_per_threadgroup]]) {
  const int n = ints[0];
  const int b = int(group.x);
  const int tid = int(tid3.x);
  const int threads = int(threads3.x);
  const device T* a = a_all + ulong(b) * ulong(n) * ulong(n);
  threadgroup float* part = (threadgroup float*)smem;

  // mu by every thread (n loads, against the n^3 work of the matrix).
  DiagonalMean<T> trace = DiagonalMean<T>::start(n);
  for (int i = 0; i < n; ++i) {
    trace.add(a[long(i) * n + i]);
  }
  const T mu = trace.mean(n);

  float norm;
  float shifted_norm;
  const ShiftedColumns<T> cols = {a, n, mu};
  group_norms(cols, n, tid, threads, part, norm, shifted_norm);
  if (tid == 0) {
    const expm::Decision dec = expm::decide(norm, shifted_norm, expm::kSingle);
    const int s = dec.degree == expm::kNoAnswer ? 0 : dec.squarings;
    const float scale = ldexp(1.0f, -s);
    T factor = dec.shift
        ? Elem<T>::exp_of(Elem<T>::re(mu) * scale, Elem<T>::im(mu) * scale)
        : Elem<T>::make(1.0f, 0.0f);
    device float* p = matrix_params(work, b);
    p[kParamDegree] = float(dec.degree);
    p[kParamSquarings] = float(s);
    p[kParamShift] = dec.shift ? 1.0f : 0.0f;
    p[kParamMuRe] = dec.shift ? Elem<T>::re(mu) : 0.0f;
    p[kParamMuIm] = dec.shift ? Elem<T>::im(mu) : 0.0f;
    p[kParamFactorRe] = Elem<T>::re(factor);
    p[kParamFactorIm] = Elem<T>::im(factor);
    p[kParamRefine] = expm::refines_squarings(dec) ? 1.0f : 0.0f;
  }
}

// (A - mu I) 2^-s into slot A and E 2^-s into its derivative; all-NaN
// outputs where there is no answer. A matrix whose squarings expm_refine
// refines gets A - mu I unscaled, and its E from expm_rescale.
template <typename T, bool Frechet>
void expm_scale_body(
    const device T* a_all,
    const device T* e_all,
    device T* x_all,
    device T* l_all,
    device char* work,
    constant int* ints,
    uint tid,
    uint3 group) {
  const int n = ints[0];
  const int batch = ints[1];
  const int b = int(group.z);
  const long nn = long(n) * n;
  const ulong base = ulong(b) * ulong(nn);
  const device float* p = matrix_params(work, b);
  const int d = int(p[kParamDegree]);
  const bool refine = p[kParamRefine] != 0.0f;
  const float scale = refine ? 1.0f : ldexp(1.0f, -int(p[kParamSquarings]));
  const T mu = Elem<T>::make(p[kParamMuRe], p[kParamMuIm]);
  device T* sa = matrix_buffer<T>(work, n, batch, Frechet, b, slot_buffer(1));
  device T* se = matrix_buffer<T>(
      work, n, batch, Frechet, b, kLargeBuffers + slot_buffer(1));
  for (int r = 0; r < kElemPerGroup / kElemThreads; ++r) {
    long idx = long(group.x) * kElemPerGroup + r * kElemThreads + tid;
    if (idx >= nn) {
      break;
    }
    if (d == expm::kNoAnswer) {
      x_all[base + idx] = Elem<T>::make(NAN, NAN);
      if (Frechet) {
        l_all[base + idx] = Elem<T>::make(NAN, NAN);
      }
      continue;
    }
    T v = a_all[base + idx];
    if (idx / n == idx % n) {
      v = v - mu;
    }
    sa[idx] = scale * v;
    if (Frechet && !refine) {
      se[idx] = scale * e_all[base + idx];
    }
  }
}

template <typename T>
[[kernel]] void expm_scale(
    const device T* a [[buffer(0)]],
    device T* x [[buffer(1)]],
    device char* work [[buffer(2)]],
    constant int* ints [[buffer(3)]],
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]]) {
  expm_scale_body<T, false>(a, a, x, x, work, ints, tid.x, group);
}

template <typename T>
[[kernel]] void expm_frechet_scale(
    const device T* a [[buffer(0)]],
    const device T* e [[buffer(1)]],
    device T* x [[buffer(2)]],
    device T* l [[buffer(3)]],
    device char* work [[buffer(4)]],
    constant int* ints [[buffer(5)]],
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]]) {
  expm_scale_body<T, true>(a, e, x, l, work, ints, tid.x, group);
}

// dst = sum_j c[j] slot_j (j < count) at the elements of this threadgroup,
// plus c[0] on the diagonal when the identity takes part.
template <typename T>
void large_combination(
    Coefs c,
    int count,
    bool identity,
    device char* work,
    int n,
    int batch,
    bool frechet,
    int b,
    int pass, // 0: primal buffers, kLargeBuffers: derivative buffers
    device T* dst,
    uint tid,
    uint group_x) {
  const long nn = long(n) * n;
  for (int r = 0; r < kElemPerGroup / kElemThreads; ++r) {
    long idx = long(group_x) * kElemPerGroup + r * kElemThreads + tid;
    if (idx >= nn) {
      break;
    }
    T v = Elem<T>::make(0.0f, 0.0f);
    for (int j = 1; j < count; ++j) {
      if (c[j] != 0.0f) {
        device T* src =
            matrix_buffer<T>(work, n, batch, frechet, b, pass + slot_buffer(j));
        v = mul_add(c[j], src[idx], v);
      }
    }
    if (identity && idx / n == idx % n) {
      v = v + Elem<T>::make(c[0], 0.0f);
    }
    dst[idx] = v;
  }
}

// The operands of product position k that are combinations of slots.
template <typename T>
[[kernel]] void expm_combine(
    device char* work [[buffer(0)]],
    constant int* ints [[buffer(1)]],
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]]) {
  const int n = ints[0];
  const int batch = ints[1];
  const int k = ints[2];
  const bool frechet = ints[3] != 0;
  const int b = int(group.z);
  const int d = int(matrix_params(work, b)[kParamDegree]);
  if (d == expm::kNoAnswer || k >= expm::kNumProducts[d]) {
    return;
  }
  const int step = expm::kFirstStep[d] + k;
  const int count = 2 + k;
  const int passes = frechet ? 2 : 1;
  for (int pass = 0; pass < passes; ++pass) {
    const bool identity = pass == 0;
    const int offset = pass * kLargeBuffers;
    for (int side = 0; side < 2; ++side) {
      Coefs c = side == 0 ? expm::kStepLeft[step] : expm::kStepRight[step];
      const int scratch = side == 0 ? kLargeLeft : kLargeRight;
      if (large_operand(c, count, identity, scratch) == scratch) {
        large_combination<T>(
            c,
            count,
            identity,
            work,
            n,
            batch,
            frechet,
            b,
            offset,
            matrix_buffer<T>(work, n, batch, frechet, b, offset + scratch),
            tid.x,
            group.x);
      }
    }
  }
}

// One kTile x kTile tile of C = X0 Y0 (+ X1 Y1 when terms == 2), staged
// through threadgroup memory in kTileK-deep slices. Thread (tx, ty) of a
// 16 x 16 grid owns the outputs (ty + 16 r, tx + 16 c), r, c in {0, 1}.
template <typename T>
void tile_product(
    const device T* x0,
    const device T* y0,
    const device T* x1,
    const device T* y1,
    int terms,
    int n,
    uint tile_row,
    uint tile_col,
    threadgroup char* smem,
    uint tid,
    device T* out) {
  threadgroup T* xs = (threadgroup T*)smem;
  threadgroup T* ys = xs + kTile * kTileK;
  const int tx = int(tid) % 16;
  const int ty = int(tid) / 16;
  const int row0 = int(tile_row) * kTile;
  const int col0 = int(tile_col) * kTile;
  T acc[4];
  for (int r = 0; r < 4; ++r) {
    acc[r] = Elem<T>::make(0.0f, 0.0f);
  }
  for (int t = 0; t < terms; ++t) {
    const device T* x = t == 0 ? x0 : x1;
    const device T* y = t == 0 ? y0 : y1;
    for (int k0 = 0; k0 < n; k0 += kTileK) {
      for (int r = 0; r < kTile * kTileK / kGemmThreads; ++r) {
        int e = int(tid) + r * kGemmThreads;
        int er = e / kTileK;
        int ec = e % kTileK;
        int xr = row0 + er;
        int xc = k0 + ec;
        xs[e] =
            xr < n && xc < n ? x[long(xr) * n + xc] : Elem<T>::make(0.0f, 0.0f);
        // The y slice is kTileK rows by kTile columns.
        int yr = k0 + e / kTile;
        int yc = col0 + e % kTile;
        ys[e] =
            yr < n && yc < n ? y[long(yr) * n + yc] : Elem<T>::make(0.0f, 0.0f);
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int m = 0; m < kTileK; ++m) {
        T xa = xs[ty * kTileK + m];
        T xb = xs[(ty + 16) * kTileK + m];
        T ya = ys[m * kTile + tx];
        T yb = ys[m * kTile + tx + 16];
        acc[0] = mul_add(xa, ya, acc[0]);
        acc[1] = mul_add(xa, yb, acc[1]);
        acc[2] = mul_add(xb, ya, acc[2]);
        acc[3] = mul_add(xb, yb, acc[3]);
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
    }
  }
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 2; ++c) {
      int row = row0 + ty + 16 * r;
      int col = col0 + tx + 16 * c;
      if (row < n && col < n) {
        out[long(row) * n + col] = acc[2 * r + c];
      }
    }
  }
}

// The tile product of the element type: scalar for complex64, on
// simdgroup_matrix for float32 (the overload below; launch_plan.h sizes the
// grid and the threadgroup for each).
template <typename T>
void product_tile(
    const device T* x0,
    const device T* y0,
    const device T* x1,
    const device T* y1,
    int terms,
    int n,
    uint3 group,
    threadgroup char* smem,
    uint tid,
    uint,
    uint,
    device T* out) {
  tile_product<T>(x0, y0, x1, y1, terms, n, group.y, group.x, smem, tid, out);
}

inline void product_tile(
    const device float* x0,
    const device float* y0,
    const device float* x1,
    const device float* y1,
    int terms,
    int n,
    uint3 group,
    threadgroup char* smem,
    uint tid,
    uint sg,
    uint lane,
    device float* out) {
  simd_tile_product(
      x0, y0, x1, y1, terms, n, group.y, group.x, smem, tid, sg, lane, out);
}

// Product position k: P = L R into slot 2 + k (group.z = b * passes + 0) and
// dP = dL R + L dR into its derivative (group.z = b * passes + 1). A refined
// matrix (kParamRefine) takes the derivatives of its first three products
// from a later dispatch of its own (ints[4] = 1, group.z = b), after
// expm_rescale's second pass.
template <typename T>
[[kernel]] void expm_product(
    device char* work [[buffer(0)]],
    constant int* ints [[buffer(1)]],
    threadgroup char* smem EXPM_THREADGROUP_MEMORY,
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  const int n = ints[0];
  const int batch = ints[1];
  const int k = ints[2];
  const bool frechet = ints[3] != 0;
  const bool late = ints[4] != 0;
  const int passes = frechet && !late ? 2 : 1;
  const int b = int(group.z) / passes;
  const int pass = late ? 1 : int(group.z) % passes;
  const device float* params = matrix_params(work, b);
  const int d = int(params[kParamDegree]);
  if (d == expm::kNoAnswer || k >= expm::kNumProducts[d]) {
    return;
  }
  const bool refine = params[kParamRefine] != 0.0f;
  if (late ? !refine : refine && k < 3 && pass == 1) {
    return;
  }
  const int step = expm::kFirstStep[d] + k;
  const int count = 2 + k;
  Coefs cl = expm::kStepLeft[step];
  Coefs cr = expm::kStepRight[step];
  device T* l = matrix_buffer<T>(
      work, n, batch, frechet, b, large_operand(cl, count, true, kLargeLeft));
  device T* r = matrix_buffer<T>(
      work, n, batch, frechet, b, large_operand(cr, count, true, kLargeRight));
  if (pass == 0) {
    device T* p =
        matrix_buffer<T>(work, n, batch, frechet, b, slot_buffer(2 + k));
    product_tile(l, r, l, r, 1, n, group, smem, tid.x, sg, lane, p);
    return;
  }
  device T* dl = matrix_buffer<T>(
      work,
      n,
      batch,
      frechet,
      b,
      kLargeBuffers + large_operand(cl, count, false, kLargeLeft));
  device T* dr = matrix_buffer<T>(
      work,
      n,
      batch,
      frechet,
      b,
      kLargeBuffers + large_operand(cr, count, false, kLargeRight));
  device T* dp = matrix_buffer<T>(
      work, n, batch, frechet, b, kLargeBuffers + slot_buffer(2 + k));
  product_tile(dl, r, l, dr, 2, n, group, smem, tid.x, sg, lane, dp);
}

// The squarings of the matrices with kParamRefine, in two passes (ints[2]),
// one threadgroup per matrix. Pass 0, after the first two products: s from
// the 1-norms of B^2 and B^3 of the unscaled B (expm::refine_squarings),
// kept with those norms scaled for it. Pass 1, after the third product (B^6
// of the B^3 that expm_rescale scaled): s from the 1-norm of B^6 too
// (expm::refine_squarings_sixth), and the factor e^(mu 2^-s).
template <typename T>
[[kernel]] void expm_refine(
    device char* work [[buffer(0)]],
    constant int* ints [[buffer(1)]],
    threadgroup char* smem EXPM_THREADGROUP_MEMORY,
    uint3 tid3 [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]],
    uint3 threads3 [[threads_per_threadgroup]]) {
  const int n = ints[0];
  const int batch = ints[1];
  const bool sixth = ints[2] != 0;
  const bool frechet = ints[3] != 0;
  const int b = int(group.x);
  const int tid = int(tid3.x);
  const int threads = int(threads3.x);
  device float* p = matrix_params(work, b);
  if (p[kParamRefine] == 0.0f) {
    return;
  }
  const BufferColumns<T> cols = {
      matrix_buffer<T>(work, n, batch, frechet, b, slot_buffer(sixth ? 4 : 2)),
      matrix_buffer<T>(work, n, batch, frechet, b, slot_buffer(3)),
      n,
      !sixth};
  float norm;
  float norm3;
  group_norms(cols, n, tid, threads, (threadgroup float*)smem, norm, norm3);
  if (tid != 0) {
    return;
  }
  if (!sixth) {
    const int s = expm::refine_squarings(
        norm, norm3, int(p[kParamSquarings]), expm::kSingle);
    p[kParamSquarings] = float(s);
    p[kParamFirstSquarings] = float(s);
    p[kParamNorm2] = ldexp(norm, -2 * s);
    p[kParamNorm3] = ldexp(norm3, -3 * s);
    return;
  }
  const int s = expm::refine_squarings_sixth(
      p[kParamNorm2],
      p[kParamNorm3],
      norm,
      int(p[kParamFirstSquarings]),
      expm::kSingle);
  const float scale = ldexp(1.0f, -s);
  T factor = p[kParamShift] != 0.0f
      ? Elem<T>::exp_of(p[kParamMuRe] * scale, p[kParamMuIm] * scale)
      : Elem<T>::make(1.0f, 0.0f);
  p[kParamSquarings] = float(s);
  p[kParamFactorRe] = Elem<T>::re(factor);
  p[kParamFactorIm] = Elem<T>::im(factor);
}

// The slots of the matrices with kParamRefine, scaled exactly as if B had
// been scaled first, in expm_refine's two passes (ints[2]). Pass 0: B 2^-s,
// B^2 4^-s, B^3 8^-s of the first s. Pass 1: B, B^2, B^3, B^6 times 2^e,
// 4^e, 8^e, 64^e, e the squarings the second s took away, and E 2^-s.
template <typename T, bool Frechet>
void expm_rescale_body(
    const device T* e_all,
    device char* work,
    constant int* ints,
    uint tid,
    uint3 group) {
  const int n = ints[0];
  const int batch = ints[1];
  const bool sixth = ints[2] != 0;
  const int b = int(group.z);
  const device float* p = matrix_params(work, b);
  if (p[kParamRefine] == 0.0f) {
    return;
  }
  const int s = int(p[kParamSquarings]);
  const int e = sixth ? int(p[kParamFirstSquarings]) - s : -s;
  const bool powers = e != 0;
  if (!powers && !(sixth && Frechet)) {
    return;
  }
  // 64^e as 8^e twice: 2^(6e) overflows float beyond e = 21, while the
  // scaled B^6 stays below theta^6.
  const float f1 = ldexp(1.0f, e);
  const float f2 = f1 * f1;
  const float f3 = f2 * f1;
  const float scale = ldexp(1.0f, -s);
  const long nn = long(n) * n;
  const ulong base = ulong(b) * ulong(nn);
  device T* s1 = matrix_buffer<T>(work, n, batch, Frechet, b, slot_buffer(1));
  device T* s2 = matrix_buffer<T>(work, n, batch, Frechet, b, slot_buffer(2));
  device T* s3 = matrix_buffer<T>(work, n, batch, Frechet, b, slot_buffer(3));
  device T* s6 = matrix_buffer<T>(work, n, batch, Frechet, b, slot_buffer(4));
  device T* se = Frechet
      ? matrix_buffer<T>(
            work, n, batch, Frechet, b, kLargeBuffers + slot_buffer(1))
      : s1;
  for (int r = 0; r < kElemPerGroup / kElemThreads; ++r) {
    long idx = long(group.x) * kElemPerGroup + r * kElemThreads + tid;
    if (idx >= nn) {
      break;
    }
    if (powers) {
      s1[idx] = f1 * s1[idx];
      s2[idx] = f2 * s2[idx];
      s3[idx] = f3 * s3[idx];
      if (sixth) {
        s6[idx] = f3 * (f3 * s6[idx]);
      }
    }
    if (Frechet && sixth) {
      se[idx] = scale * e_all[base + idx];
    }
  }
}

template <typename T>
[[kernel]] void expm_rescale(
    device char* work [[buffer(0)]],
    constant int* ints [[buffer(1)]],
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]]) {
  expm_rescale_body<T, false>(nullptr, work, ints, tid.x, group);
}

template <typename T>
[[kernel]] void expm_frechet_rescale(
    const device T* e [[buffer(0)]],
    device char* work [[buffer(1)]],
    constant int* ints [[buffer(2)]],
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]]) {
  expm_rescale_body<T, true>(e, work, ints, tid.x, group);
}

// The approximant times e^(mu 2^-s): into the outputs when s = 0, else into
// the first squaring buffer.
template <typename T, bool Frechet>
void expm_final_body(
    device T* x_all,
    device T* l_all,
    device char* work,
    constant int* ints,
    uint tid,
    uint3 group) {
  const int n = ints[0];
  const int batch = ints[1];
  const int b = int(group.z);
  const device float* p = matrix_params(work, b);
  const int d = int(p[kParamDegree]);
  if (d == expm::kNoAnswer) {
    return;
  }
  const int s = int(p[kParamSquarings]);
  const T factor = Elem<T>::make(p[kParamFactorRe], p[kParamFactorIm]);
  const ulong base = ulong(b) * ulong(n) * ulong(n);
  const int count = expm::num_slots(d);
  Coefs cf = expm::kFinal[d];
  const int passes = Frechet ? 2 : 1;
  for (int pass = 0; pass < passes; ++pass) {
    device T* dst = s == 0
        ? (pass == 0 ? x_all : l_all) + base
        : matrix_buffer<T>(
              work, n, batch, Frechet, b, pass * kLargeBuffers + kLargeLeft);
    large_combination<T>(
        cf,
        count,
        pass == 0,
        work,
        n,
        batch,
        Frechet,
        b,
        pass * kLargeBuffers,
        dst,
        tid,
        group.x);
    // Each thread rescales the elements it wrote itself.
    const long nn = long(n) * n;
    for (int r = 0; r < kElemPerGroup / kElemThreads; ++r) {
      long idx = long(group.x) * kElemPerGroup + r * kElemThreads + tid;
      if (idx >= nn) {
        break;
      }
      dst[idx] = factor * dst[idx];
    }
  }
}

template <typename T>
[[kernel]] void expm_final(
    device T* x [[buffer(0)]],
    device char* work [[buffer(1)]],
    constant int* ints [[buffer(2)]],
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]]) {
  expm_final_body<T, false>(x, x, work, ints, tid.x, group);
}

template <typename T>
[[kernel]] void expm_frechet_final(
    device T* x [[buffer(0)]],
    device T* l [[buffer(1)]],
    device char* work [[buffer(2)]],
    constant int* ints [[buffer(3)]],
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]]) {
  expm_final_body<T, true>(x, l, work, ints, tid.x, group);
}

// Squaring q of the matrices with s > q: Y = X X (and dY = X dX + dX X),
// ping-ponging between the operand buffers; squaring s - 1 lands in the
// outputs.
template <typename T, bool Frechet>
void expm_square_body(
    device T* x_all,
    device T* l_all,
    device char* work,
    constant int* ints,
    threadgroup char* smem,
    uint tid,
    uint3 group,
    uint sg,
    uint lane) {
  const int n = ints[0];
  const int batch = ints[1];
  const int q = ints[2];
  const int passes = Frechet ? 2 : 1;
  const int b = int(group.z) / passes;
  const int pass = int(group.z) % passes;
  const device float* p = matrix_params(work, b);
  const int d = int(p[kParamDegree]);
  const int s = int(p[kParamSquarings]);
  if (d == expm::kNoAnswer || q >= s) {
    return;
  }
  const ulong base = ulong(b) * ulong(n) * ulong(n);
  const bool last = q == s - 1;
  const int from = kLargeLeft + q % 2;
  const int to = kLargeLeft + (q + 1) % 2;
  device T* x = matrix_buffer<T>(work, n, batch, Frechet, b, from);
  if (pass == 0) {
    device T* y =
        last ? x_all + base : matrix_buffer<T>(work, n, batch, Frechet, b, to);
    product_tile(x, x, x, x, 1, n, group, smem, tid, sg, lane, y);
    return;
  }
  device T* dx =
      matrix_buffer<T>(work, n, batch, Frechet, b, kLargeBuffers + from);
  device T* dy = last
      ? l_all + base
      : matrix_buffer<T>(work, n, batch, Frechet, b, kLargeBuffers + to);
  product_tile(x, dx, dx, x, 2, n, group, smem, tid, sg, lane, dy);
}

template <typename T>
[[kernel]] void expm_square(
    device T* x [[buffer(0)]],
    device char* work [[buffer(1)]],
    constant int* ints [[buffer(2)]],
    threadgroup char* smem EXPM_THREADGROUP_MEMORY,
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  expm_square_body<T, false>(x, x, work, ints, smem, tid.x, group, sg, lane);
}

template <typename T>
[[kernel]] void expm_frechet_square(
    device T* x [[buffer(0)]],
    device T* l [[buffer(1)]],
    device char* work [[buffer(2)]],
    constant int* ints [[buffer(3)]],
    threadgroup char* smem EXPM_THREADGROUP_MEMORY,
    uint3 tid [[thread_position_in_threadgroup]],
    uint3 group [[threadgroup_position_in_grid]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  expm_square_body<T, true>(x, l, work, ints, smem, tid.x, group, sg, lane);
}

} // namespace expm_metal
