#!/usr/bin/env bash
# Checks of the Metal backend that run on Linux, without a Mac, Apple's Metal
# compiler or a GPU. Stages (all by default, or those named on the command
# line):
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
#                   OS thread per GPU thread: both paths (the predicated one
#                   at the edges of its product tiles: n = 33, 40, 65, 100),
#                   forward and Frechet, float32 and complex64, against a
#                   double reference; a missing barrier is a reported race.
#                   Then the emulator's SIMD-group matrix operations against
#                   their semantics, and its reports of broken SIMD-group
#                   rules, in both modes.
#   host_compile    The host code (csrc/metal, the ops, the bindings) against
#                   MLX's real macOS headers and metal-cpp from the mlx-metal
#                   wheel: a clang syntax check, then an arm64 macOS object
#                   build (zig's clang with its bundled macOS libc and libc++
#                   headers), whose undefined MLX and metal-cpp symbols must
#                   all be exported by the wheel's libmlx.dylib.
#   cmake_metal     Configures CMakeLists.txt against the wheel's MLX CMake
#                   package (MLX_BUILD_METAL) and checks the build graph: the
#                   metallib rule over metal/*.metal without fast math, its
#                   install next to the module, the Metal host code in and the
#                   no-GPU fallback out.
#
# What these cannot see: Apple's compiler (only the macOS workflow,
# .github/workflows/macos.yml, builds the .metal files), Metal's runtime rules
# and limits (pipeline thread limits, threadgroup memory, argument tables),
# the GPU's rounding of exp/sin/cos and its denormal handling, performance.
#
# Apple system headers that metal-cpp includes (Objective-C runtime,
# CoreFoundation, ...) come from small stubs in scripts/metal_host_stubs.
#
# Needs: g++; clang++-19 and llvm-19 (apt-get install clang-19 llvm-19); a
# Python 3.10+ with venv and its headers; PyPI: the mlx-metal and ziglang
# wheels (about 150 MB) and a tools venv (nanobind, cmake, ninja,
# scipy-openblas32), all kept in the cache directory.
#
# Usage, from anywhere:  scripts/check-metal.sh [stage ...]
# Env: PROJECT_PYTHON (default <root>/.venv/bin/python: a venv with the test
#      dependencies, for emulated_suite), PYTHON (default python3, for the
#      tools venv), METAL_CHECK_CACHE (default
#      ~/.cache/mlx_linalg_ext/metal-check), CXX (g++), CLANGXX (clang++-19),
#      LLVM_NM (llvm-nm-19), LLVM_CXXFILT, KEEP=1 keeps the temporary
#      directories, FULL=1 the whole suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PROJECT_PYTHON="${PROJECT_PYTHON:-$ROOT/.venv/bin/python}"
CXX="${CXX:-g++}"
CACHE="${METAL_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlx_linalg_ext/metal-check}"
CLANGXX="${CLANGXX:-clang++-19}"
LLVM_NM="${LLVM_NM:-llvm-nm-19}"
LLVM_CXXFILT="${LLVM_CXXFILT:-llvm-cxxfilt-19}"
MLX_VERSION=0.32.4
ZIG_VERSION=0.17.0
STUBS="$ROOT/scripts/metal_host_stubs"
TMPS=()
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    [ ${#TMPS[@]} -eq 0 ] || echo "kept ${TMPS[*]}"
  else
    rm -rf "${TMPS[@]}"
  fi
}
trap cleanup EXIT

say() { printf '\n--- %s\n' "$*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

emulated_suite() {
  say "emulated_suite: the pytest suite on the Metal kernels (CPU emulator)"
  local tmp
  tmp="$(mktemp -d /tmp/mlx-linalg-ext-metal-emu.XXXXXX)"
  TMPS+=("$tmp")
  # A venv that sees the project venv's packages (a .pth line) but gets its
  # own mlx_linalg_ext; the module finds libmlx and OpenBLAS through its
  # RPATH ($ORIGIN/../mlx/lib, ...), hence the two links.
  "$PROJECT_PYTHON" -m venv --without-pip "$tmp/venv"
  local py="$tmp/venv/bin/python" base site
  base="$("$PROJECT_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
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
  local sources=(metal/emulator/selftest.cpp metal/emulator/simdgroup_check.cpp
    metal/emulator/launcher.cpp metal/emulator/kernels.cpp)
  # clang's ThreadSanitizer runtime is much faster than GCC 12's with the
  # emulator's hundreds of synchronising threads (NOTES.md, the emulator).
  local tsan_cxx="$CXX"
  if command -v "$CLANGXX" >/dev/null; then
    tsan_cxx="$CLANGXX"
  fi
  (cd "$ROOT" && "$tsan_cxx" -std=c++20 -O1 -g -fsanitize=thread \
    -Imetal -Imetal/emulator -Icsrc "${sources[@]}" \
    -o "$tmp/metal_emu_selftest_tsan")
  # Two workers: the threadgroups of a dispatch also run concurrently.
  TSAN_OPTIONS="halt_on_error=1 exitcode=66" METAL_EMU_MODE=threads \
    METAL_EMU_WORKERS=2 "$tmp/metal_emu_selftest_tsan" quick
  # Fibers (the mode of emulated_suite; ThreadSanitizer does not follow
  # ucontext switches): the SIMD-group checks again, without it.
  (cd "$ROOT" && "$CXX" -std=c++20 -O1 -g -Imetal -Imetal/emulator -Icsrc \
    "${sources[@]}" -o "$tmp/metal_emu_selftest")
  METAL_EMU_MODE=fibers "$tmp/metal_emu_selftest" simd
}

# A venv with the build tools, made once; prints its python.
tools_python() {
  local dir="$CACHE/venv-tools"
  if [ ! -e "$dir/.done" ]; then
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir" >&2
    "$dir/bin/python" -m pip install -q "nanobind>=3,<4" "cmake>=3.27" ninja \
      "scipy-openblas32>=0.3.27" >&2
    touch "$dir/.done"
  fi
  echo "$dir/bin/python"
}

# Unpacks a macOS wheel from PyPI into $CACHE/<name> once; prints the dir.
# (The plain mlx wheel holds Python files and core.so only: the headers,
# CMake package and libmlx.dylib are in mlx-metal.)
macos_wheel() {
  local spec="$1" dir="$CACHE/$2"
  if [ ! -e "$dir/.done" ]; then
    rm -rf "$dir" "$dir.dl"
    mkdir -p "$dir.dl"
    "$(tools_python)" -m pip download -q --no-deps --only-binary=:all: \
      --platform macosx_14_0_arm64 --python-version 3.12 --implementation cp \
      "$spec" -d "$dir.dl" >&2
    "$(tools_python)" -m zipfile -e "$dir.dl"/*.whl "$dir"
    rm -rf "$dir.dl"
    touch "$dir/.done"
  fi
  echo "$dir"
}

# Zig's clang driver with its macOS headers (Linux x86_64 wheel from PyPI).
zig_bin() {
  local dir="$CACHE/zig-$ZIG_VERSION"
  if [ ! -e "$dir/.done" ]; then
    rm -rf "$dir" "$dir.dl"
    mkdir -p "$dir.dl"
    "$(tools_python)" -m pip download -q --no-deps --only-binary=:all: \
      "ziglang==$ZIG_VERSION" -d "$dir.dl" >&2
    "$(tools_python)" -m zipfile -e "$dir.dl"/*.whl "$dir"
    chmod +x "$dir/ziglang/zig"
    rm -rf "$dir.dl"
    touch "$dir/.done"
  fi
  echo "$dir/ziglang/zig"
}

host_compile() {
  say "host_compile: Metal host code against MLX $MLX_VERSION's macOS headers"
  command -v "$CLANGXX" >/dev/null || fail "$CLANGXX not found (apt-get install clang-19)"
  command -v "$LLVM_NM" >/dev/null || fail "$LLVM_NM not found (apt-get install llvm-19)"
  [ -e "$ROOT/metal/launch_plan.h" ] || fail "metal/launch_plan.h is missing"
  local mlx inc
  mlx="$(macos_wheel "mlx-metal==$MLX_VERSION" "mlx-metal-$MLX_VERSION")/mlx"
  inc="$mlx/include"
  [ -e "$inc/mlx/backend/metal/device.h" ] || fail "no MLX Metal headers in $mlx"

  # The flags MLX's CMake package gives an extension on macOS (MLXConfig:
  # -D_METAL_ -DACCELERATE_NEW_LAPACK, include, metal_cpp), plus this
  # project's own (CMakeLists.txt: csrc and the root, MLX_LINALG_EXT_GPU and
  # _METAL).
  local flags=(-std=c++20 -fblocks -D_METAL_ -DACCELERATE_NEW_LAPACK
    -DMLX_LINALG_EXT_GPU -DMLX_LINALG_EXT_METAL -I"$STUBS" -I"$inc"
    -I"$inc/metal_cpp" -I"$ROOT/csrc" -I"$ROOT")
  # The CPU backend takes its macOS branch (Accelerate) only on the macOS
  # target: the objects below, not the syntax check.
  local sources=("$ROOT"/csrc/metal/*.cpp "$ROOT/csrc/matrix_exp.cpp")
  local objects=("${sources[@]}" "$ROOT/csrc/cpu/matrix_exp.cpp")

  say "clang syntax check (host target)"
  local py nb_inc py_inc
  py="$(tools_python)"
  nb_inc="$("$py" -m nanobind --include_dir)"
  py_inc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  local f
  for f in "${sources[@]}"; do
    echo "  ${f#"$ROOT"/}"
    "$CLANGXX" -fsyntax-only -Wall "${flags[@]}" "$f"
  done
  [ -e "$py_inc/Python.h" ] || fail "no Python.h for $PYTHON (python3-dev)"
  echo "  csrc/bindings.cpp"
  "$CLANGXX" -fsyntax-only -Wall "${flags[@]}" -I"$nb_inc" -I"$py_inc" \
    "$ROOT/csrc/bindings.cpp"

  say "arm64 macOS objects (zig c++ -target aarch64-macos.14.0)"
  local zig obj
  zig="$(zig_bin)"
  obj="$(mktemp -d /tmp/mlx-linalg-ext-metal-check.XXXXXX)"
  TMPS+=("$obj")
  export ZIG_GLOBAL_CACHE_DIR="$CACHE/zig-cache" ZIG_LOCAL_CACHE_DIR="$CACHE/zig-cache"
  local i=0
  for f in "${objects[@]}"; do
    echo "  ${f#"$ROOT"/}"
    # -O2 without sanitizers: zig's default debug build adds UBSan calls.
    "$zig" c++ -target aarch64-macos.14.0-none -O2 -fno-sanitize=all \
      "${flags[@]}" -c "$f" -o "$obj/$i.o"
    i=$((i + 1))
  done

  say "every MLX / metal-cpp symbol the objects use is exported by libmlx.dylib"
  # (cat: llvm-nm heads each file's list with its name when given several.)
  "$LLVM_NM" -gU -j "$mlx/lib/libmlx.dylib" | sort -u >"$obj/exported"
  for f in "$obj"/*.o; do "$LLVM_NM" -gU -j "$f"; done | sort -u >"$obj/defined"
  for f in "$obj"/*.o; do "$LLVM_NM" -u -j "$f"; done | sort -u |
    comm -23 - "$obj/defined" >"$obj/undefined"
  # Mangled and demangled side by side (Mach-O names carry an extra "_").
  "$LLVM_CXXFILT" --strip-underscore <"$obj/undefined" |
    paste "$obj/undefined" - >"$obj/named"
  # MLX's and metal-cpp's by their mangled namespaces (functions, const
  # members, vtables, typeinfo): mlx::core, MTL, NS, CA.
  local ns='^__Z(N|NK|TVN|TIN|TSN)(3mlx4core|3MTL|2NS|2CA)[0-9]'
  awk -F'\t' -v re="$ns" '$1 ~ re' "$obj/named" >"$obj/from_mlx"
  awk -F'\t' '$1 ~ /^__Z[A-Z]*14mlx_linalg_ext/' "$obj/named" >"$obj/own"
  local used missing
  used="$(wc -l <"$obj/from_mlx")"
  [ "$used" -gt 10 ] || fail "only $used MLX symbols found: the filter is broken"
  missing="$(cut -f1 "$obj/from_mlx" | comm -23 - "$obj/exported")"
  if [ -n "$missing" ]; then
    echo "Not exported by libmlx.dylib:" >&2
    echo "$missing" | "$LLVM_CXXFILT" --strip-underscore | sed 's/^/  /' >&2
    fail "the host code calls MLX symbols that libmlx.dylib does not export"
  fi
  if [ -s "$obj/own" ]; then
    echo "Used but defined nowhere in this project's objects:" >&2
    cut -f2 "$obj/own" | sed 's/^/  /' >&2
    fail "undefined mlx_linalg_ext symbols"
  fi
  # Only csrc/metal defines these among the objects.
  "$LLVM_CXXFILT" --strip-underscore <"$obj/defined" >"$obj/defined_names"
  for f in "MatrixExp::eval_gpu" "ExpmFrechet::eval_gpu" "gpu_active_memory"; do
    grep -q "^mlx_linalg_ext::$f(" "$obj/defined_names" ||
      fail "no definition of $f in csrc/metal"
  done
  echo "ok: $used MLX / metal-cpp symbols used, all exported by libmlx.dylib"
}

cmake_metal() {
  say "cmake_metal: CMakeLists.txt against MLX $MLX_VERSION's macOS CMake package"
  local mlx build
  mlx="$(macos_wheel "mlx-metal==$MLX_VERSION" "mlx-metal-$MLX_VERSION")/mlx"
  build="$(mktemp -d /tmp/mlx-linalg-ext-metal-cmake.XXXXXX)"
  TMPS+=("$build")
  local py bin
  py="$(tools_python)"
  bin="$(dirname "$py")"
  # Configure only (Linux cannot run xcrun); the macOS MLX package is read
  # as it is, so MLX_BUILD_METAL comes from it. MLX_LIBRARY: find_library
  # looks for .so files on Linux. The deployment target is the macOS
  # workflow's (MLX's rule passes it to the Metal compiler).
  "$bin/cmake" -S "$ROOT" -B "$build" -G Ninja -DPython_EXECUTABLE="$py" \
    -DCMAKE_MAKE_PROGRAM="$bin/ninja" \
    -DMLX_DIR="$mlx/share/cmake/MLX" -DMLX_LIBRARY="$mlx/lib/libmlx.dylib" \
    -DCMAKE_OSX_DEPLOYMENT_TARGET=14.0 >"$build/configure.log" 2>&1 ||
    {
      cat "$build/configure.log" >&2
      fail "configure"
    }
  grep -q "mlx_linalg_ext: Metal kernels ON" "$build/configure.log" ||
    fail "the Metal block was not selected"
  local ninja="$build/build.ninja" k
  for k in "$ROOT"/metal/*.metal; do
    grep -q "metal .*-c $k" "$ninja" || fail "no Metal compile of ${k#"$ROOT"/}"
  done
  grep -q "xcrun -sdk macosx metal.*-fno-fast-math" "$ninja" ||
    fail "metallib built without -fno-fast-math"
  grep -q "xcrun -sdk macosx metal.*-mmacosx-version-min=14.0 .*-c " "$ninja" ||
    fail "kernels not compiled for macOS 14 (Metal 3.1)"
  grep -q "mlx_linalg_ext.metallib" "$ninja" || fail "no metallib rule"
  grep -q 'mlx_linalg_ext.metallib" .*DESTINATION.*mlx_linalg_ext\|FILES ".*mlx_linalg_ext.metallib"' \
    "$build/cmake_install.cmake" || fail "the metallib is not installed"
  grep -q "csrc/metal/matrix_exp.cpp" "$ninja" || fail "csrc/metal not compiled"
  grep -q "csrc/no_gpu/matrix_exp.cpp" "$ninja" && fail "no_gpu compiled in a Metal build"
  local d
  for d in MLX_LINALG_EXT_GPU MLX_LINALG_EXT_METAL; do
    grep -q -- "-D$d\b" "$ninja" || fail "$d not defined"
  done
  echo "ok: metallib rule over $(ls "$ROOT"/metal/*.metal | wc -l) kernel file(s), installed with the module"
}

main() {
  local stages=("$@")
  if [ ${#stages[@]} -eq 0 ]; then
    stages=(emulated_suite address_spaces tsan_subset host_compile cmake_metal)
  fi
  mkdir -p "$CACHE"
  local s
  for s in "${stages[@]}"; do
    "$s"
  done
  say "check-metal: all stages passed (${stages[*]})"
}

main "$@"
