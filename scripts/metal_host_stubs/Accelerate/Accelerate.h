// Stub for the Linux host check of the Metal code (README.md beside it): the
// three CBLAS declarations csrc/cpu/gemm.h calls, so that the CPU backend's
// macOS build is compiled and its MLX symbols checked too. Leaving
// __LAPACK_float_complex undefined makes gemm.h pass complex data as void*.
#pragma once

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE {
  CblasNoTrans = 111,
  CblasTrans = 112,
  CblasConjTrans = 113
};

extern "C" {
void cblas_sgemm(
    enum CBLAS_ORDER,
    enum CBLAS_TRANSPOSE,
    enum CBLAS_TRANSPOSE,
    int,
    int,
    int,
    float,
    const float*,
    int,
    const float*,
    int,
    float,
    float*,
    int);
void cblas_dgemm(
    enum CBLAS_ORDER,
    enum CBLAS_TRANSPOSE,
    enum CBLAS_TRANSPOSE,
    int,
    int,
    int,
    double,
    const double*,
    int,
    const double*,
    int,
    double,
    double*,
    int);
void cblas_cgemm(
    enum CBLAS_ORDER,
    enum CBLAS_TRANSPOSE,
    enum CBLAS_TRANSPOSE,
    int,
    int,
    int,
    const void*,
    const void*,
    int,
    const void*,
    int,
    const void*,
    void*,
    int);
}
