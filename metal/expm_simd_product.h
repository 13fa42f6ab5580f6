// The float32 tile product of the predicated path on simdgroup_matrix<float,
// 8, 8> multiply-accumulates (expm_kernels.h calls it from expm_product and
// expm_square). complex64 keeps the scalar tile product: Metal has no complex
// simdgroup matrix.
#pragma once

#include <metal_stdlib>

#include "expm_layout.h"

using namespace metal;

namespace expm_metal {

// One kSimdTile x kSimdTile tile of C = X0 Y0 (+ X1 Y1 when terms == 2). The
// operands go through threadgroup memory in kSimdTileK-deep slices, zero
// beyond n (a zero row or column adds exact zeros to the valid outputs, and
// NaN still reaches them through the valid terms). SIMD group sg owns the
// kSimdBlock x kSimdBlock block (sg / 2, sg % 2) of the tile as 4 x 4
// accumulators, and skips the fragments that lie wholly past n (a choice
// that is uniform over its lanes).
inline void simd_tile_product(
    const device float* x0,
    const device float* y0,
    const device float* x1,
    const device float* y1,
    int terms,
    int n,
    uint tile_row,
    uint tile_col,
    threadgroup char* smem,
    uint tid,
    uint sg,
    uint lane,
    device float* out) {
  constexpr int kFrags = kSimdBlock / 8;
  threadgroup float* xs = (threadgroup float*)smem;
  threadgroup float* ys = xs + kSimdTile * kSimdLdLeft;
  const int row0 = int(tile_row) * kSimdTile;
  const int col0 = int(tile_col) * kSimdTile;
  const int block_row = int(sg / 2) * kSimdBlock;
  const int block_col = int(sg % 2) * kSimdBlock;
  // Fragments of the block with at least one row (column) below n.
  const int rows = clamp((n - row0 - block_row + 7) / 8, 0, kFrags);
  const int cols = clamp((n - col0 - block_col + 7) / 8, 0, kFrags);

  simdgroup_float8x8 acc[kFrags][kFrags];
  for (int i = 0; i < kFrags; ++i) {
    for (int j = 0; j < kFrags; ++j) {
      acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
  }
  for (int t = 0; t < terms; ++t) {
    const device float* x = t == 0 ? x0 : x1;
    const device float* y = t == 0 ? y0 : y1;
    for (int k0 = 0; k0 < n; k0 += kSimdTileK) {
      for (int r = 0; r < kSimdTile * kSimdTileK / kSimdThreads; ++r) {
        int e = int(tid) + r * kSimdThreads;
        int xr = e / kSimdTileK;
        int xc = e % kSimdTileK;
        int gr = row0 + xr;
        int gc = k0 + xc;
        xs[xr * kSimdLdLeft + xc] =
            gr < n && gc < n ? x[long(gr) * n + gc] : 0.0f;
        // The right slice is kSimdTileK rows by kSimdTile columns.
        int yr = e / kSimdTile;
        int yc = e % kSimdTile;
        gr = k0 + yr;
        gc = col0 + yc;
        ys[yr * kSimdLdRight + yc] =
            gr < n && gc < n ? y[long(gr) * n + gc] : 0.0f;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int kk = 0; kk < kSimdTileK; kk += 8) {
        simdgroup_float8x8 a[kFrags];
        simdgroup_float8x8 b[kFrags];
        // Constant trip counts, so that the fragments stay in registers
        // once the loops are unrolled.
        for (int i = 0; i < kFrags; ++i) {
          if (i < rows) {
            simdgroup_load(
                a[i], xs + (block_row + 8 * i) * kSimdLdLeft + kk, kSimdLdLeft);
          }
        }
        for (int j = 0; j < kFrags; ++j) {
          if (j < cols) {
            simdgroup_load(
                b[j], ys + kk * kSimdLdRight + block_col + 8 * j, kSimdLdRight);
          }
        }
        for (int i = 0; i < kFrags; ++i) {
          for (int j = 0; j < kFrags; ++j) {
            if (i < rows && j < cols) {
              simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
            }
          }
        }
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
    }
  }

  // Whole fragments go straight to memory; a fragment across the edge goes
  // through this SIMD group's 8 x 8 of the (now free) left slice, and each
  // lane writes two of the fragment's elements, where they lie below n.
  threadgroup float* scratch = xs + sg * 64;
  for (int i = 0; i < kFrags; ++i) {
    for (int j = 0; j < kFrags; ++j) {
      const int r = row0 + block_row + 8 * i;
      const int c = col0 + block_col + 8 * j;
      if (i >= rows || j >= cols) {
        continue;
      }
      if (r + 8 <= n && c + 8 <= n) {
        simdgroup_store(acc[i][j], out + long(r) * n + c, ulong(n));
        continue;
      }
      simdgroup_store(acc[i][j], scratch, 8);
      simdgroup_barrier(mem_flags::mem_threadgroup);
      for (int q = 0; q < 2; ++q) {
        int e = 2 * int(lane) + q;
        if (r + e / 8 < n && c + e % 8 < n) {
          out[long(r + e / 8) * n + c + e % 8] = scratch[e];
        }
      }
      simdgroup_barrier(mem_flags::mem_threadgroup);
    }
  }
}

} // namespace expm_metal
