#!/usr/bin/env bash
# Build and test this package with its CUDA kernels on a Linux machine with an
# NVIDIA GPU. It needs nvcc and a Python where MLX's CUDA backend imports
# (mlx + mlx-cuda-13), with nanobind, scikit-build-core, scipy-openblas32,
# numpy, scipy and pytest; GPU_CHECK_SETUP may name a script that is sourced
# first to provide them. Logs and results go to $OUT (default ./gpu-check-out).
#
# Usage, from the project root:  scripts/gpu-check.sh
# STAGES (default "build test bench") picks the steps:
#   build     installs this package into the Python environment;
#   test      the pytest suite, one process per test file;
#   bench     bench/bench_gpu.py;
#   variants  the benchmark with the paths that csrc/cuda/test_hooks.h forces;
#   fallback  the suite against a build of this package without CUDA kernels;
#   accuracy  scripts/gpu_accuracy.py against PyTorch.
# PYTEST_ARGS adds pytest arguments; BENCH_ARGS adds benchmark arguments.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
STAGES="${STAGES:-build test bench}"
export PYTHONUNBUFFERED=1
status=0
stage() { [[ " $STAGES " == *" $1 "* ]]; }

if [ -n "${GPU_CHECK_SETUP:-}" ]; then
  # shellcheck disable=SC1090
  source "$GPU_CHECK_SETUP" || { echo "GPU_CHECK_SETUP failed"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# The build environment (exports; call it in a subshell).
build_env() {
  # MLX's CMake package looks for cuDNN; the NVIDIA wheels may have it.
  NV="$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)"
  CUDNN_H=""
  if [ -n "$NV" ]; then
    CUDNN_H="$(find "$NV" -name cudnn.h -path '*cudnn*' | head -1)"
  fi
  if [ -n "$CUDNN_H" ]; then
    CUDNN_DIR="$(dirname "$(dirname "$CUDNN_H")")"
    export CMAKE_ARGS="-DCUDNN_INCLUDE_PATH=$CUDNN_DIR -DCUDNN_LIBRARY_PATH=$CUDNN_DIR ${CMAKE_ARGS:-}"
  fi
  # The extension must use the libstdc++ that Python and libmlx load: a g++
  # with another libstdc++ links its own statically, and its streams crash.
  # Build with the system compiler even where the environment sets CXX
  # (images often point CXX at a newer g++ with its own libstdc++);
  # GPU_CHECK_CXX names another compiler on purpose.
  if [ -n "${GPU_CHECK_CXX:-}" ]; then
    export CXX="$GPU_CHECK_CXX" CUDAHOSTCXX="$GPU_CHECK_CXX"
  elif [ -x /usr/bin/g++ ]; then
    export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
  fi
}

# The pytest suite, one process per test file (so that a crash hides
# nothing), into the log $1; failures set status.
suite() {
  : > "$1"
  for f in tests/test_*.py; do
    python3 -m pytest -q -rfE -p no:cacheprovider "$f" ${PYTEST_ARGS:-} >> "$1" 2>&1 || status=1
    echo "$f: $(tail -1 "$1")"
  done
  grep -E "^(FAILED|ERROR)|Fatal Python error" "$1" | head -60
}

# Our kernels alone under one environment setting:
# variant TITLE NAME=VALUE CASES OUTNAME
variant() {
  echo "== benchmark: $1 ($2)"
  env "$2" python3 bench/bench_gpu.py --only mlx_linalg_ext --cases "$3" \
    --no-frechet --out "$OUT/$4.json" 2>&1 | grep -E "^(flo|com)"
}

if stage build; then
  (
    set -e
    build_env
    echo "CXX=${CXX:-default} $(${CXX:-g++} --version | head -1)"
    echo "CMAKE_ARGS=${CMAKE_ARGS:-}"
    # A fresh build directory: a CMake cache from another compiler is kept
    # otherwise.
    rm -rf "$OUT/build"
    python3 -m pip install -v --no-build-isolation --no-deps \
      -C build-dir="$OUT/build" --upgrade .
  ) > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -60 "$OUT/build.log"; exit 1; }
  grep -E "mlx_linalg_ext:|^CXX=" "$OUT/build.log"
  SO="$(python3 -c 'import mlx_linalg_ext._ext as e; print(e.__file__)')"
  readelf -d "$SO" | grep 'libstdc++' >/dev/null ||
    echo "WARNING: libstdc++ linked statically into $SO (its streams crash)"
fi
python3 -c "import mlx_linalg_ext as m, mlx.core as mx; print('has_gpu_kernels', m.has_gpu_kernels, mx.default_device())"

if stage test; then
  echo "== pytest (one process per test file)"
  suite "$OUT/pytest.txt"
fi

if stage bench; then
  echo "== benchmark"
  python3 bench/bench_gpu.py --out "$OUT/bench_gpu.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt" || status=1
fi
if stage variants; then
  variant "GEMM path for every size" MLX_LINALG_EXT_CUDA_SMALL_MAX=0 \
    4096x16,1024x32,256x64 bench_small0
  variant "FP32 FMA products only" MLX_LINALG_EXT_CUDA_TC_MIN=1000000 \
    1x1024,1x2048 bench_simt
  variant "mma.sync 3xTF32 instead of the Hopper wgmma path" \
    MLX_LINALG_EXT_CUDA_SM90_MIN=1000000 1x1024,1x2048,1x4096 bench_mma
  variant "3xTF32 products from n = 64" MLX_LINALG_EXT_CUDA_TC_MIN=64 \
    64x128,1x256 bench_tc64
fi
if stage fallback; then
  # A build without GPU kernels next to MLX's CUDA backend: every op must run
  # on the CPU stream, also when a GPU stream is asked for; the whole suite
  # (its gpu parameters included) runs against that build.
  echo "== fallback: this package built without CUDA kernels, on a CUDA MLX"
  SITE="$OUT/site-nogpu"
  (
    set -e
    rm -rf "$OUT/build-nogpu" "$SITE"
    build_env
    CMAKE_ARGS="${CMAKE_ARGS:-} -DMLX_LINALG_EXT_CUDA=OFF" \
      python3 -m pip install -v --no-build-isolation --no-deps \
      -C build-dir="$OUT/build-nogpu" --target "$SITE" .
    # OpenBLAS beside the package: its rpath is relative to site-packages.
    ln -s "$(python3 -c 'import os, scipy_openblas32 as s; print(os.path.dirname(s.__file__))')" "$SITE/"
  ) > "$OUT/build-nogpu.log" 2>&1 || { echo "FALLBACK BUILD FAILED"; tail -30 "$OUT/build-nogpu.log"; exit 1; }
  grep -E "mlx_linalg_ext:" "$OUT/build-nogpu.log"
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" python3 -c "import mlx_linalg_ext as m, mlx.core as mx, numpy as np; a = mx.array(np.eye(3, dtype=np.float32)); print('no-GPU build: has_gpu_kernels', m.has_gpu_kernels, '| exp(I) on a GPU stream:', np.array(m.matrix_exp(a, stream=mx.gpu))[0, 0])" || status=1
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" suite "$OUT/pytest-nogpu.txt"
fi
if stage accuracy; then
  echo "== accuracy against the 1-norm (ours with the default kernels, PyTorch)"
  python3 scripts/gpu_accuracy.py --torch --out "$OUT/accuracy.json" 2>&1 | tail -40
fi
exit $status
