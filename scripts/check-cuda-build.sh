#!/usr/bin/env bash
# Compile-and-link check of the CUDA backend, for a machine without a GPU.
# Needs nvcc (CUDA 13) and PyPI; runs no kernel.
#
# In a temporary venv with MLX's CUDA build (mlx + mlx-cuda-13, without their
# NVIDIA runtime wheels), nanobind, scikit-build-core and scipy-openblas32,
# it configures this project with MLX_LINALG_EXT_CUDA=ON for the CUDA
# architectures CUDA_ARCHS, builds the extension, and checks that the CUDA
# eval_gpu (not the no-GPU stubs) and code for every architecture are in it.
# The default "80;90a" compiles both sides of the __CUDA_ARCH__ < 900 branches.
#
# MLX's CMake package asks for cuDNN (find_dependency(CUDNN)), which this
# extension does not use: where no cudnn.h is found, an empty stand-in
# (headers and library names only) satisfies the lookup.
#
# Usage, from the project root:  scripts/check-cuda-build.sh
# Env: PYTHON (default python3), MLX_VERSION (0.32.4), CUDA_ARCHS ("80;90a"),
# KEEP=1 keeps the temporary directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MLX_VERSION="${MLX_VERSION:-0.32.4}"
CUDA_ARCHS="${CUDA_ARCHS:-80;90a}"
TMP="$(mktemp -d /tmp/mlx-linalg-ext-cuda-check.XXXXXX)"
cleanup() { [ "${KEEP:-0}" = 1 ] && echo "kept $TMP" || rm -rf "$TMP"; }
trap cleanup EXIT

command -v nvcc >/dev/null || { echo "nvcc not found" >&2; exit 1; }
echo "nvcc: $(command -v nvcc), $(nvcc --version | grep -o 'release [0-9.]*')"
echo "CUDA architectures: $CUDA_ARCHS"

"$PYTHON" -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
"$PY" -m pip install -q --upgrade pip
# --no-deps: the NVIDIA runtime wheels (cuBLAS, cuDNN, ... several GB) are
# only needed to run, not to compile and link.
"$PY" -m pip install -q --no-deps "mlx==$MLX_VERSION" "mlx-cuda-13==$MLX_VERSION"
"$PY" -m pip install -q "nanobind>=3,<4" "scikit-build-core>=0.10" \
  "scipy-openblas32>=0.3.27" cmake ninja

# `python -m mlx --cmake-dir` would import mlx.core, which cannot load
# without the NVIDIA runtime libraries and a driver: name MLX's CMake package.
MLX_PKG="$("$PY" -c 'import importlib.util as u; print(list(u.find_spec("mlx").submodule_search_locations)[0])')"

CMAKE_EXTRA=()
if ! find /usr/local/cuda*/include /usr/include -maxdepth 1 -name cudnn.h 2>/dev/null | grep . >/dev/null; then
  STUB="$TMP/cudnn-stub"
  mkdir -p "$STUB/include" "$STUB/lib"
  echo "#define CUDNN_MAJOR 9" > "$STUB/include/cudnn_version.h"
  echo "#include \"cudnn_version.h\"" > "$STUB/include/cudnn.h"
  for l in cudnn cudnn_graph cudnn_engines_runtime_compiled; do
    : > "$STUB/lib/lib$l.so.9"
  done
  CMAKE_EXTRA+=("-DCUDNN_INCLUDE_PATH=$STUB" "-DCUDNN_LIBRARY_PATH=$STUB")
fi

"$TMP/venv/bin/cmake" -S "$ROOT" -B "$TMP/build" -G Ninja \
  -DPython_EXECUTABLE="$PY" -DCMAKE_MAKE_PROGRAM="$TMP/venv/bin/ninja" \
  -DMLX_DIR="$MLX_PKG/share/cmake/MLX" -DMLX_LINALG_EXT_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" "${CMAKE_EXTRA[@]}"
"$TMP/venv/bin/cmake" --build "$TMP/build" -j "$(nproc)"

SO="$(find "$TMP/build" -name '_ext*.so' | head -1)"
[ -n "$SO" ] || { echo "FAIL: no extension built" >&2; exit 1; }
if strings "$SO" | grep "This build has no GPU kernels" >/dev/null; then
  echo "FAIL: $SO holds the no-GPU stubs" >&2; exit 1
fi
# The module is stripped: look for a message of csrc/cuda/matrix_exp.cu
# (grep without -q: an early exit would fail the pipe under pipefail).
strings "$SO" | grep "The GPU supports float32 and complex64 only" >/dev/null ||
  { echo "FAIL: the CUDA eval_gpu is not in $SO" >&2; exit 1; }
if command -v cuobjdump >/dev/null; then
  ELFS="$(cuobjdump --list-elf "$SO")"
  for arch in ${CUDA_ARCHS//;/ }; do
    sm="sm_${arch%-real}"
    sm="${sm%-virtual}"
    grep "\.$sm\.cubin" >/dev/null <<<"$ELFS" ||
      { echo "FAIL: no $sm code in $SO" >&2; exit 1; }
  done
  echo "GPU code in $(basename "$SO"):"
  sed 's/.*\.\(sm_[0-9a-z]*\)\.cubin$/\1/' <<<"$ELFS" | sort | uniq -c
else
  readelf -S "$SO" | grep nv_fatbin >/dev/null ||
    { echo "FAIL: no GPU code (.nv_fatbin) in $SO" >&2; exit 1; }
  echo "GPU code compiled (nvcc flags of the build; no cuobjdump to read $SO):"
  grep -o 'arch=compute_[0-9a-z]*,code=\[[^]]*\]' "$TMP/build/build.ninja" | sort | uniq -c
fi
echo "OK: CUDA build of $(basename "$SO") compiled and linked ($(du -h "$SO" | cut -f1))"
