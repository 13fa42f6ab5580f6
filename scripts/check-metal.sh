#!/usr/bin/env bash
# Checks of the Metal backend on Linux, where no Metal compiler or GPU exists.
#
# Stage 1, the kernels (metal/*.h, matrix_exp.metal) on the CPU emulator of
# the Metal subset they use (metal/emulator):
#   emulated_suite  builds the extension with MLX_LINALG_EXT_METAL_EMULATOR=ON
#                   into a temporary venv (dependencies taken from the
#                   project's venv) and runs the pytest suite against it:
#                   every float32/complex64 evaluation then runs the Metal
#                   kernels through the launch plan eval_gpu encodes.
#   address_spaces  compiles the kernels with device/constant/threadgroup as
#                   distinct clang address spaces (needs clang++).
#   tsan_subset     builds the emulator's self-test with ThreadSanitizer and
#                   runs it with one OS thread per GPU thread: both paths,
#                   forward and Frechet, float32 and complex64, against a
#                   double reference; a missing barrier is a reported race.
# Stage 2, the host code (csrc/metal) against MLX's macOS headers:
#   host_compile    (see below)
#
# Usage, from the project root: scripts/check-metal.sh [stage function...]
# (default: all). Env: PYTHON (default .venv/bin/python: a venv with the
# test dependencies and the build tools), CXX (g++), CLANGXX (clang++-19 or
# clang++), KEEP=1 keeps the temporary directory, FULL=1 runs the whole
# suite. By default two tests are left out, hours on the emulator's scalar
# GEMMs: the single 1024 and 2048 matrices, and 340 calls on 16 x 64 x 64
# (process memory); every other test runs (both paths, both dtypes, forward,
# Frechet, vjp/jvp, vmap, compile, NaN/Inf, huge norms, batches).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
CXX="${CXX:-g++}"
TMP="$(mktemp -d /tmp/mlx-linalg-ext-metal-check.XXXXXX)"
cleanup() { [ "${KEEP:-0}" = 1 ] && echo "kept $TMP" || rm -rf "$TMP"; }
trap cleanup EXIT
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

emulated_suite() {
  step "the pytest suite on the Metal kernels (CPU emulator)"
  # A venv that sees the project venv's packages (a .pth line) but gets its
  # own mlx_linalg_ext; the extension finds libmlx and OpenBLAS through its
  # RPATH ($ORIGIN/../mlx/lib, ...), hence the two links.
  "$PYTHON" -m venv --without-pip "$TMP/venv"
  local py="$TMP/venv/bin/python"
  local base site
  base="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$base" >"$site/_project_venv.pth"
  ln -s "$base/mlx" "$site/mlx"
  ln -s "$base/scipy_openblas32" "$site/scipy_openblas32"
  "$py" -m pip install -q --no-build-isolation --no-deps \
    -C build-dir=build/metal-emu \
    -C cmake.define.MLX_LINALG_EXT_METAL_EMULATOR=ON .
  "$py" -c 'import mlx_linalg_ext._ext as e; assert e.backend == "metal-emulator", e.backend'
  local select=()
  if [ "${FULL:-0}" != 1 ]; then
    select=(-k "not test_single_large_matrix and not test_repeated_calls_do_not_grow_process_memory")
  fi
  (cd "$TMP" && "$py" -m pytest -q -p no:cacheprovider "$ROOT/tests" "${select[@]}")
}

address_spaces() {
  step "address spaces of the kernels (clang)"
  local clang="${CLANGXX:-}"
  if [ -z "$clang" ]; then
    clang="$(command -v clang++-19 || command -v clang++ || true)"
  fi
  if [ -z "$clang" ]; then
    echo "no clang++: skipped (apt-get install clang-19)"
    return 0
  fi
  "$clang" -std=c++20 -fsyntax-only -DMETAL_EMU_ADDRESS_SPACES \
    -Imetal -Imetal/emulator -Icsrc metal/emulator/address_space_check.cpp
  echo "ok"
}

tsan_subset() {
  step "ThreadSanitizer: the emulator's self-test, one OS thread per GPU thread"
  "$CXX" -std=c++20 -O1 -g -fsanitize=thread -Imetal -Imetal/emulator -Icsrc \
    metal/emulator/selftest.cpp metal/emulator/launcher.cpp \
    metal/emulator/kernels.cpp -o "$TMP/metal_emu_selftest_tsan"
  # Two workers: threadgroups of a dispatch run concurrently as well.
  TSAN_OPTIONS="halt_on_error=1 exitcode=66" METAL_EMU_MODE=threads \
    METAL_EMU_WORKERS=2 "$TMP/metal_emu_selftest_tsan" quick
}

# Stage 2 (host code against MLX's macOS headers) goes here as
# host_compile(), and into ALL below.

ALL=(emulated_suite address_spaces tsan_subset)
for stage in "${@:-${ALL[@]}}"; do
  "$stage"
done
step "done"
