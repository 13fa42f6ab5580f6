#!/usr/bin/env bash
# Checks of the Metal backend that run on Linux, where no Metal compiler or
# GPU exists. Stages (all by default, or those named on the command line):
#
#   emulated_suite  The kernels (metal/*.h, matrix_exp.metal) on the CPU
#                   emulator of the Metal subset they use (metal/emulator):
#                   builds the extension with MLX_LINALG_EXT_METAL_EMULATOR=ON
#                   into a temporary venv (its dependencies are the project
#                   venv's) and runs the pytest suite against it; every
#                   float32/complex64 evaluation then runs the Metal kernels
#                   through the launch plan eval_gpu encodes. Two tests are
#                   left out unless FULL=1, hours on the emulator's scalar
#                   GEMMs: the single 1024 and 2048 matrices, and 340 calls
#                   on 16 x 64 x 64 (process memory).
#   address_spaces  The kernels with device/constant/threadgroup as distinct
#                   clang address spaces: a pointer passed to the wrong space
#                   does not compile, as in Metal (needs clang++).
#   tsan_subset     The emulator's self-test built with ThreadSanitizer, one
#                   OS thread per GPU thread: both paths, forward and
#                   Frechet, float32 and complex64, against a double
#                   reference; a missing barrier is a reported race.
#   (host_compile, ... : the host code, csrc/metal, against MLX's macOS
#                   headers.)
#
# What the emulator cannot see: Apple's compiler (only the macOS workflow
# builds the .metal files), Metal's runtime limits (a pipeline's thread
# limit), the GPU's rounding of exp/sin/cos and its denormal handling,
# performance.
#
# Usage, from anywhere: scripts/check-metal.sh [stage ...]
# Env: PYTHON (default <root>/.venv/bin/python: a venv with the test
#      dependencies and the build tools), CXX (g++), CLANGXX (clang++-19),
#      KEEP=1 keeps the temporary directories, FULL=1 the whole suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
CXX="${CXX:-g++}"
CLANGXX="${CLANGXX:-clang++-19}"
TMPS=()
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    [ ${#TMPS[@]} -eq 0 ] || echo "kept ${TMPS[*]}"
  else
    rm -rf "${TMPS[@]}"
  fi
}
trap cleanup EXIT

say() { printf '\n--- %s (%s)\n' "$*" "$(date +%T)"; }

emulated_suite() {
  say "emulated_suite: the pytest suite on the Metal kernels (CPU emulator)"
  local tmp
  tmp="$(mktemp -d /tmp/mlx-linalg-ext-metal-emu.XXXXXX)"
  TMPS+=("$tmp")
  # A venv that sees the project venv's packages (a .pth line) but gets its
  # own mlx_linalg_ext; the module finds libmlx and OpenBLAS through its
  # RPATH ($ORIGIN/../mlx/lib, ...), hence the two links.
  "$PYTHON" -m venv --without-pip "$tmp/venv"
  local py="$tmp/venv/bin/python" base site
  base="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$base" >"$site/_project_venv.pth"
  ln -s "$base/mlx" "$site/mlx"
  ln -s "$base/scipy_openblas32" "$site/scipy_openblas32"
  # The build tools, where the project venv lacks them (it was installed
  # with build isolation): into the temporary venv only.
  "$py" -m pip install -q "scikit-build-core>=0.10" "nanobind>=3,<4" cmake ninja
  (cd "$ROOT" && "$py" -m pip install -q --no-build-isolation --no-deps \
    -C build-dir=build/metal-emu \
    -C cmake.define.MLX_LINALG_EXT_METAL_EMULATOR=ON .)
  "$py" -c 'import mlx_linalg_ext._ext as e; assert e.backend == "metal-emulator", e.backend'
  local select=()
  if [ "${FULL:-0}" != 1 ]; then
    select=(-k "not test_single_large_matrix and not test_repeated_calls_do_not_grow_process_memory")
  fi
  (cd "$tmp" && "$py" -m pytest -q -p no:cacheprovider "$ROOT/tests" "${select[@]}")
}

address_spaces() {
  say "address_spaces: the kernels' address spaces (clang)"
  if ! command -v "$CLANGXX" >/dev/null; then
    echo "SKIPPED: $CLANGXX not found (apt-get install clang-19)"
    return 0
  fi
  (cd "$ROOT" && "$CLANGXX" -std=c++20 -fsyntax-only -DMETAL_EMU_ADDRESS_SPACES \
    -Imetal -Imetal/emulator -Icsrc metal/emulator/address_space_check.cpp)
  echo "ok"
}

tsan_subset() {
  say "tsan_subset: the emulator's self-test under ThreadSanitizer"
  local tmp
  tmp="$(mktemp -d /tmp/mlx-linalg-ext-metal-tsan.XXXXXX)"
  TMPS+=("$tmp")
  (cd "$ROOT" && "$CXX" -std=c++20 -O1 -g -fsanitize=thread \
    -Imetal -Imetal/emulator -Icsrc metal/emulator/selftest.cpp \
    metal/emulator/launcher.cpp metal/emulator/kernels.cpp \
    -o "$tmp/metal_emu_selftest_tsan")
  # Two workers: the threadgroups of a dispatch also run concurrently.
  TSAN_OPTIONS="halt_on_error=1 exitcode=66" METAL_EMU_MODE=threads \
    METAL_EMU_WORKERS=2 "$tmp/metal_emu_selftest_tsan" quick
}

# Stage 2 (host code against MLX's macOS headers) goes here.

main() {
  local stages=("$@")
  if [ ${#stages[@]} -eq 0 ]; then
    stages=(emulated_suite address_spaces tsan_subset)
  fi
  local s
  for s in "${stages[@]}"; do
    "$s"
  done
  say "check-metal: all stages passed (${stages[*]})"
}

main "$@"
