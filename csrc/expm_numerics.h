// Numerics of the matrix exponential, shared by every backend (CPU, CUDA,
// Metal).
//
// Method: Bader, Blanes & Casas (2019), "Computing the Matrix Exponential with
// an Optimized Taylor Polynomial Approximation", Mathematics 7(12):1174.
// Taylor approximants of degree 1, 2, 4, 8, 12, 18 cost 0, 1, 2, 3, 4, 5 matrix
// products. The degree is chosen per matrix from its 1-norm; above the last
// threshold the matrix is scaled by 2^-s and the result squared s times.
//
// Every degree is one "product program" over a list of matrix slots:
//   slot 0 = I, slot 1 = A, slot 2 + k = the k-th product P_k.
// Step k computes P_k = (sum_j left[k][j] slot_j) @ (sum_j right[k][j] slot_j)
// and the approximant is sum_j final[d][j] slot_j. The degree table is data:
// one evaluator per backend runs every degree, and differentiating that
// evaluator (dP = dL R + L dR) gives the Frechet derivative of the same
// approximant (Al-Mohy & Higham 2009).
//
// The header is plain C++ that CUDA and Metal can also compile. A backend may
// define before including it:
//   EXPM_TABLE  qualifier of the tables   (host: static constexpr; CUDA:
//               static __constant__ const; Metal: constant)
//   EXPM_REAL   storage type of the tables (double; Metal has only float)
//   EXPM_FN     qualifier of the functions (CUDA: __host__ __device__ inline)
#pragma once

#ifndef EXPM_TABLE
#define EXPM_TABLE static constexpr
#endif
#ifndef EXPM_REAL
#define EXPM_REAL double
#endif
#ifndef EXPM_FN
#define EXPM_FN inline
#endif

#ifdef __METAL_VERSION__
#define EXPM_LOG2 metal::log2
#define EXPM_CEIL metal::ceil
#define EXPM_MAX metal::fmax
#else
#include <cmath>
#define EXPM_LOG2 std::log2
#define EXPM_CEIL std::ceil
#define EXPM_MAX std::fmax
#endif

namespace expm {

// Integer constants are enumerators: Metal allows no other program-scope
// variables outside its constant address space.
enum : int {
  kNumDegrees = 6, // degrees 1, 2, 4, 8, 12, 18, indexed 0..5
  kLastDegree = kNumDegrees - 1,
  kMaxSlots = 7, // I, A and at most five products
  kNumSteps = 15, // 0 + 1 + 2 + 3 + 4 + 5 products
};

// Precision row of kTheta: single (float32, complex64) or double.
enum Precision : int { kSingle = 0, kDouble = 1 };

// Most squarings decide() can ask for: it answers norms up to 1 / u only, and
// ceil(log2(2^24 / theta_18)) = 23 (single), ceil(log2(2^53 / theta_18)) = 53
// (double). Predicated GPU paths enqueue this many squaring steps at most.
enum : int { kMaxSquaringsSingle = 23, kMaxSquaringsDouble = 53 };

EXPM_TABLE int kNumProducts[kNumDegrees] = {0, 1, 2, 3, 4, 5};
// Index of the first step of each degree in kStepLeft / kStepRight.
EXPM_TABLE int kFirstStep[kNumDegrees] = {0, 0, 1, 3, 6, 10};

// Largest 1-norm for which degree d keeps the truncation error below the unit
// roundoff (Bader, Blanes & Casas 2019, Table; as used by PyTorch's mexp).
EXPM_TABLE EXPM_REAL kTheta[2][kNumDegrees] = {
    {1.192092800768788e-07,
     5.978858893805233e-04,
     5.116619363445086e-02,
     5.800524627688768e-01,
     1.461661507209034e+00,
     3.010066362817634e+00},
    {2.220446049250313e-16,
     2.580956802971767e-08,
     3.397168839976962e-04,
     4.991228871115323e-02,
     2.996158913811580e-01,
     1.090863719290036e+00}};

// Degree 8 (Bader, Blanes & Casas 2019, Sec. 4.1); sqrt(177) written out.
// x7 carries x3^2 in its denominator, as in the paper: with x3 alone (as in
// PyTorch's mexp) the Taylor coefficients of degree 5..8 are off by up to 33%.
#define EXPM_SQRT177 1.330413469565007072504e+1
#define EXPM_X1 ((2.0 / 3.0) * ((1.0 + EXPM_SQRT177) / 88.0))
#define EXPM_X2 ((2.0 / 3.0) * ((1.0 + EXPM_SQRT177) / 352.0))
#define EXPM_X3 (2.0 / 3.0)
#define EXPM_X4 ((-271.0 + 29.0 * EXPM_SQRT177) / (315.0 * (2.0 / 3.0)))
#define EXPM_X5 ((-11.0 + 11.0 * EXPM_SQRT177) / (1260.0 * (2.0 / 3.0)))
#define EXPM_X6 ((-99.0 + 11.0 * EXPM_SQRT177) / (5040.0 * (2.0 / 3.0)))
#define EXPM_X7 ((89.0 - EXPM_SQRT177) / (5040.0 * (2.0 / 3.0) * (2.0 / 3.0)))
#define EXPM_Y2 ((857.0 - 58.0 * EXPM_SQRT177) / 630.0)

// Degree 12 (ibid., Table 4): B_i = sum_j b12[i][j] {I, A, A^2, A^3}_j,
// A6 = B2 + B3^2, T12 = B0 + (B1 + A6) A6.
#define B12_00 9.0198e-16
#define B12_01 0.46932117595418237389
#define B12_02 -0.20099424927047284052
#define B12_03 -0.04623946134063071740
#define B12_10 5.31597895759871264183
#define B12_11 1.19926790417132231573
#define B12_12 0.01179296240992997031
#define B12_13 0.01108844528519167989
#define B12_20 0.18188869982170434744
#define B12_21 0.05502798439925399070
#define B12_22 0.09351590770535414968
#define B12_23 0.00610700528898058230
#define B12_30 -2.0861320e-13
#define B12_31 -0.13181061013830184015
#define B12_32 -0.02027855540589259079
#define B12_33 -0.00675951846863086359

// Degree 18 (ibid., Table 5): B_i = sum_j b18[i][j] {I, A, A^2, A^3, A^6}_j,
// A9 = B0 B4 + B3, T18 = B1 + (B2 + A9) A9.
#define B18_00 0.0
#define B18_01 -1.00365581030144618291e-01
#define B18_02 -8.02924648241156932449e-03
#define B18_03 -8.92138498045729985177e-04
#define B18_04 0.0
#define B18_10 0.0
#define B18_11 3.97849749499645077844e-01
#define B18_12 1.36783778460411720168e+00
#define B18_13 4.98289622525382669416e-01
#define B18_14 -6.37898194594723280150e-04
#define B18_20 -1.09676396052962061844e+01
#define B18_21 1.68015813878906206114e+00
#define B18_22 5.71779846478865511061e-02
#define B18_23 -6.98210122488052056106e-03
#define B18_24 3.34975017086070470649e-05
#define B18_30 -9.04316832390810593223e-02
#define B18_31 -6.76404519071381882256e-02
#define B18_32 6.75961301770459654925e-02
#define B18_33 2.95552570429315521194e-02
#define B18_34 -1.39180257516060693404e-05
#define B18_40 0.0
#define B18_41 0.0
#define B18_42 -9.23364619367118555360e-02
#define B18_43 -1.69364939002081722752e-02
#define B18_44 -1.40086798182036094347e-05

// Left and right operands of every product step, as coefficients of the
// slots I, A, P2, P3, P4, P5 (a step only reads slots made before it).
EXPM_TABLE EXPM_REAL kStepLeft[kNumSteps][kMaxSlots] = {
    // degree 2: A^2
    {0, 1},
    // degree 4: A^2, A^2 (I/2 + A/6 + A^2/24)
    {0, 1},
    {0, 0, 1},
    // degree 8: A^2, A4 = A^2 (x1 A + x2 A^2),
    //           A8 = (x3 A^2 + A4)(x4 I + x5 A + x6 A^2 + x7 A4)
    {0, 1},
    {0, 0, 1},
    {0, 0, EXPM_X3, 1},
    // degree 12: A^2, A^3, B3 B3, (B1 + A6) A6 with A6 = B2 + B3 B3
    {0, 1},
    {0, 0, 1},
    {B12_30, B12_31, B12_32, B12_33},
    {B12_10 + B12_20, B12_11 + B12_21, B12_12 + B12_22, B12_13 + B12_23, 1},
    // degree 18: A^2, A^3, A^6, B0 B4, (B2 + A9) A9 with A9 = B0 B4 + B3
    {0, 1},
    {0, 0, 1},
    {0, 0, 0, 1},
    {B18_00, B18_01, B18_02, B18_03, B18_04},
    {B18_20 + B18_30,
     B18_21 + B18_31,
     B18_22 + B18_32,
     B18_23 + B18_33,
     B18_24 + B18_34,
     1}};

EXPM_TABLE EXPM_REAL kStepRight[kNumSteps][kMaxSlots] = {
    {0, 1},
    {0, 1},
    {0.5, 1.0 / 6.0, 1.0 / 24.0},
    {0, 1},
    {0, EXPM_X1, EXPM_X2},
    {EXPM_X4, EXPM_X5, EXPM_X6, EXPM_X7},
    {0, 1},
    {0, 1},
    {B12_30, B12_31, B12_32, B12_33},
    {B12_20, B12_21, B12_22, B12_23, 1},
    {0, 1},
    {0, 1},
    {0, 0, 0, 1},
    {B18_40, B18_41, B18_42, B18_43, B18_44},
    {B18_30, B18_31, B18_32, B18_33, B18_34, 1}};

// The approximant of each degree as a combination of its slots.
EXPM_TABLE EXPM_REAL kFinal[kNumDegrees][kMaxSlots] = {
    {1, 1},
    {1, 1, 0.5},
    {1, 1, 0, 1},
    {1, 1, EXPM_Y2, 0, 1},
    {B12_00, B12_01, B12_02, B12_03, 0, 1},
    {B18_10, B18_11, B18_12, B18_13, B18_14, 0, 1}};

#undef EXPM_SQRT177
#undef EXPM_X1
#undef EXPM_X2
#undef EXPM_X3
#undef EXPM_X4
#undef EXPM_X5
#undef EXPM_X6
#undef EXPM_X7
#undef EXPM_Y2
#undef B12_00
#undef B12_01
#undef B12_02
#undef B12_03
#undef B12_10
#undef B12_11
#undef B12_12
#undef B12_13
#undef B12_20
#undef B12_21
#undef B12_22
#undef B12_23
#undef B12_30
#undef B12_31
#undef B12_32
#undef B12_33
#undef B18_00
#undef B18_01
#undef B18_02
#undef B18_03
#undef B18_04
#undef B18_10
#undef B18_11
#undef B18_12
#undef B18_13
#undef B18_14
#undef B18_20
#undef B18_21
#undef B18_22
#undef B18_23
#undef B18_24
#undef B18_30
#undef B18_31
#undef B18_32
#undef B18_33
#undef B18_34
#undef B18_40
#undef B18_41
#undef B18_42
#undef B18_43
#undef B18_44

// Number of slots a degree uses: I, A and its products.
EXPM_FN int num_slots(int degree_index) {
  return 2 + kNumProducts[degree_index];
}

// The slot j >= 1 that the combination sum_j c[j] slot_j (j < count) is on
// its own -- one nonzero coefficient, equal to 1 -- or -1. Backends use that
// slot in place of forming the combination. Slot 0, the identity, takes part
// only in the primal list (`identity`); the derivative's list has no slot 0.
template <typename Coefficients>
EXPM_FN int lone_slot(Coefficients c, int count, bool identity) {
  int lone = -1;
  for (int j = identity ? 0 : 1; j < count; ++j) {
    if (c[j] != 0) {
      if (lone != -1 || j == 0 || c[j] != 1) {
        return -1;
      }
      lone = j;
    }
  }
  return lone;
}

// Unit roundoff of each precision (float32 and complex64: 2^-24; double:
// 2^-53).
EXPM_TABLE EXPM_REAL kUnitRoundoff[2] = {
    5.9604644775390625e-08,
    1.1102230246251565e-16};

// The cheapest degree whose threshold bounds the 1-norm; the last degree for
// larger norms.
template <typename Real>
EXPM_FN int choose_degree(Real norm, int precision) {
  for (int d = 0; d < kLastDegree; ++d) {
    if (norm <= Real(kTheta[precision][d])) {
      return d;
    }
  }
  return kLastDegree;
}

// s = max(0, ceil(log2(norm / theta_18))): the number of squarings that brings
// the norm under the degree-18 threshold. Halving is exact, so no log2
// rounding can pick a wrong s. decide() never asks past the bound.
template <typename Real>
EXPM_FN int square_steps(Real norm, int precision) {
  Real theta = Real(kTheta[precision][kLastDegree]);
  int bound = precision == kSingle ? kMaxSquaringsSingle : kMaxSquaringsDouble;
  int s = 0;
  while (norm > theta && s < bound) {
    norm *= Real(0.5);
    ++s;
  }
  return s;
}

// What one matrix of a batch gets: the degree index (kNoAnswer: the result is
// all NaN), the number of squarings, and whether the trace shift is used.
enum : int { kNoAnswer = -1 };
struct Decision {
  int degree;
  int squarings;
  bool shift;
};

// The decision every backend takes per matrix, on the device that evaluates
// it, from the 1-norms of A and of A - mu I with mu = tr(A) / n (both
// accumulated in double where the device has it; NaN must win the column
// maximum).
//
// - Trace shift (Higham, "Functions of Matrices", 2008, Sec. 10.7.3):
//   exp(A) = e^mu exp(A - mu I) and L(A, E) = e^mu L(A - mu I, E). Used when
//   it lowers the 1-norm: fewer products and squarings, and no cancellation
//   where A is close to a multiple of I (exp(-10 I) in float32 loses four
//   digits without it). Backends multiply the scaled approximant by
//   e^(mu 2^-s), so the squarings never leave the range of the result.
// - NaN or Inf in A: no answer (the matrix's result is all NaN, the rest of
//   the batch is unaffected).
// - A norm past 1 / u of the precision: no answer either. The relative
//   condition number of exp at A is at least ||A|| (Van Loan 1977), so the
//   rounding of A alone moves exp(A) by O(1) or more, and the 2^s >= 1 / u
//   squarings would amplify the rounding errors as much: any finite value
//   would be noise (all zeros, or entries far beyond the true ones).
template <typename Real>
EXPM_FN Decision decide(Real norm, Real shifted_norm, int precision) {
  Decision d = {kNoAnswer, 0, shifted_norm < norm};
  if (d.shift) {
    norm = shifted_norm;
  }
  // Also false for NaN and +Inf.
  if (!(norm * Real(kUnitRoundoff[precision]) <= Real(1))) {
    d.shift = false;
    return d;
  }
  d.degree = choose_degree(norm, precision);
  d.squarings = d.degree == kLastDegree ? square_steps(norm, precision) : 0;
  return d;
}

// Overscaling (Al-Mohy & Higham 2009, "A New Scaling and Squaring Algorithm
// for the Matrix Exponential", Sec. 4). The remainder of every degree is a
// power series starting at x^(m+1), m + 1 >= 2, and every power k >= 2 is a
// product of B^2s and B^3s, so ||B^k|| <= alpha^k with
// alpha = max(||B^2||^(1/2), ||B^3||^(1/3)) <= ||B||: the thresholds hold for
// alpha as they do for the 1-norm. For non-normal B, alpha can be orders of
// magnitude below ||B||, and each squaring saved halves the amplification of
// the rounding errors.
//
// Used for the last degree when the 1-norm asks for squarings: the first two
// products of that program are B^2 and B^3 (asserted below), so a backend
// forms them from the unscaled B, calls this with their 1-norms, and scales
// B, B^2, B^3 by 2^-s, 4^-s, 8^-s. Power-of-two scaling is exact, so the
// products are those of scaling first and no product is added. Returns the
// smallest s <= squarings with ||B^2|| 4^-s <= theta^2 and ||B^3|| 8^-s <=
// theta^3; a NaN norm keeps `squarings`.
template <typename Real>
EXPM_FN int
refine_squarings(Real norm2, Real norm3, int squarings, int precision) {
  Real theta = Real(kTheta[precision][kLastDegree]);
  Real theta2 = theta * theta;
  Real theta3 = theta2 * theta;
  int s = 0;
  while (s < squarings && !(norm2 <= theta2 && norm3 <= theta3)) {
    norm2 *= Real(0.25);
    norm3 *= Real(0.125);
    ++s;
  }
  return s;
}

// The second refinement, from B^6 (the third product of the last degree):
// every k >= 19 is 6q + r with r in {0, 2, 3, 4, 5, 7}, so
// ||B^k|| <= beta^(k - r) N_r with beta = ||B^6||^(1/6) and N_r the bound on
// ||B^r|| from ||B^2||, ||B^3|| (N_0 = 1, N_4 = ||B^2||^2, N_5 = ||B^2||
// ||B^3||, N_7 = ||B^2||^2 ||B^3||); hence ||B^k|| <= beta^k K with
// K = max_r N_r / beta^r >= 1. The remainder's terms start at degree 19, so
// scaling x by t <= 1 scales h(x) / x by t^18 or less: beta K^(1/18) <= theta
// bounds the remainder as ||B|| <= theta does. For B with small even powers
// and large odd ones (B^2 = I with ||B|| = 1e6), this needs s = 1 where
// refine_squarings needs 7.
//
// Arguments: the 1-norms of B^2, B^3, B^6 already scaled for `squarings`
// (B^6 formed from the scaled B^3: unscaled, it overflows float32 from
// ||B|| ~ 2^21). Returns s' <= squarings; the backend multiplies B, B^2,
// B^3, B^6 by 2^d, 4^d, 8^d, 64^d, d = squarings - s' (exact). NaN keeps
// `squarings`; B^6 = 0 needs no squaring.
template <typename Real>
EXPM_FN int refine_squarings_sixth(
    Real norm2,
    Real norm3,
    Real norm6,
    int squarings,
    int precision) {
  if (!(norm2 >= Real(0) && norm3 >= Real(0) && norm6 >= Real(0))) {
    return squarings;
  }
  if (norm6 == Real(0)) {
    return 0;
  }
  // log2 of beta^18 K = max_r N_r beta^(18 - r); log2(0) = -Inf drops a term.
  const Real l2 = EXPM_LOG2(norm2);
  const Real l3 = EXPM_LOG2(norm3);
  const Real lb = EXPM_LOG2(norm6) / Real(6);
  Real lk = Real(18) * lb;
  lk = EXPM_MAX(lk, l2 + Real(16) * lb);
  lk = EXPM_MAX(lk, l3 + Real(15) * lb);
  lk = EXPM_MAX(lk, Real(2) * l2 + Real(14) * lb);
  lk = EXPM_MAX(lk, l2 + l3 + Real(13) * lb);
  lk = EXPM_MAX(lk, Real(2) * l2 + l3 + Real(11) * lb);
  // Squarings to add (negative: to take away) at the current scaling.
  const Real t = EXPM_CEIL(
      lk / Real(18) - EXPM_LOG2(Real(kTheta[precision][kLastDegree])));
  if (!(t < Real(0))) {
    return squarings;
  }
  return t <= Real(-squarings) ? 0 : squarings + int(t);
}

// Whether a decision is refined by refine_squarings.
EXPM_FN bool refines_squarings(Decision d) {
  return d.degree == kLastDegree && d.squarings > 0;
}

#if !defined(__METAL_VERSION__) && !defined(__CUDACC__)
// The last degree's first products are B^2 = B B and B^3 = B^2 B.
static_assert(
    kStepLeft[kFirstStep[kLastDegree]][1] == 1 &&
    kStepRight[kFirstStep[kLastDegree]][1] == 1 &&
    kStepLeft[kFirstStep[kLastDegree] + 1][2] == 1 &&
    kStepRight[kFirstStep[kLastDegree] + 1][1] == 1);
#endif

} // namespace expm
