#!/usr/bin/env bash
# On the GPU machine: build the package with its CUDA kernels from the kit,
# run the GPU self-check (both CUDA paths), the pytest suite and the GPU
# benchmark. Logs and results go to $OUT (or ./gpu-check-out).
#
# From the project root, in one device call:
#   run(command="bash scripts/gpu-check.sh", carry=[".kit", ".whl"])
# .kit: ../shared/device/make-kit.sh. .whl: the scipy-openblas32 wheel, which
# the GPU machine lacks (CMakeLists.txt needs it on Linux); once, here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 -d .whl scipy-openblas32
# (.whl/ is git-ignored.)
# STAGES (default "build selfcheck test bench"; also "profile", "variants":
# the GEMM path for small n, SIMT or tensor-core products for other n,
# mma.sync instead of wgmma for single large matrices; "fallback": the test
# suite against a build of this package without CUDA kernels;
# "accuracy": scripts/gpu_accuracy.py against PyTorch)
# picks the steps;
# PYTEST_ARGS adds pytest arguments; BENCH_ARGS adds benchmark arguments.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
STAGES="${STAGES:-build selfcheck test bench}"
export PYTHONUNBUFFERED=1
status=0
stage() { [[ " $STAGES " == *" $1 "* ]]; }

source .kit/setup.sh || { echo "kit setup failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# The build environment (exports; call it in a subshell).
build_env() {
  # MLX's CMake package looks for cuDNN; PyTorch's wheel has it.
  NV="$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')"
  CUDNN_H="$(find "$NV" -name cudnn.h -path '*cudnn*' | head -1)"
  if [ -n "$CUDNN_H" ]; then
    CUDNN_DIR="$(dirname "$(dirname "$CUDNN_H")")"
    export CMAKE_ARGS="-DCUDNN_INCLUDE_PATH=$CUDNN_DIR -DCUDNN_LIBRARY_PATH=$CUDNN_DIR ${CMAKE_ARGS:-}"
  fi
  # The image's default g++ (/opt/gcc) is not the compiler of the system
  # libstdc++ that Python, PyTorch and libmlx load; prefer the system one.
  # (Seen 2026-11-26: with CXX=/opt/gcc/bin/g++ the extension carried its
  # own static libstdc++ and crashed in std::ostringstream.)
  # MLX_LINALG_EXT_KEEP_CXX=1 keeps the environment's compiler.
  if [ -x /usr/bin/g++ ] && [ "${MLX_LINALG_EXT_KEEP_CXX:-0}" != 1 ]; then
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
  grep -E "^(FAILED|ERROR)|Fatal Python error|^  File \"/work" "$1" | head -60
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
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    fi
    build_env
    echo "CXX=${CXX:-default} $(${CXX:-g++} --version | head -1)"
    echo "libstdc++ of that compiler: $(${CXX:-g++} -print-file-name=libstdc++.so)"
    echo "CMAKE_ARGS=${CMAKE_ARGS:-}"
    echo "LDFLAGS=${LDFLAGS:-} CXXFLAGS=${CXXFLAGS:-}"
    # A fresh build directory: a CMake cache from another compiler is kept
    # otherwise (the working tree's build/ survives between device calls).
    rm -rf /tmp/mle-build
    time python3 -m pip install -v --no-build-isolation --no-deps --no-index \
      -C build-dir=/tmp/mle-build --target /tmp/site --upgrade .
  ) > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -60 "$OUT/build.log"; exit 1; }
  grep -E "mlx_linalg_ext:|real|^CXX=|^libstdc|^LDFLAGS" "$OUT/build.log"
  SO="$(ls /tmp/site/mlx_linalg_ext/_ext*.so)"
  echo "NEEDED: $(readelf -d "$SO" | grep NEEDED | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"
  readelf -d "$SO" | grep 'libstdc++' >/dev/null ||
    echo "WARNING: libstdc++ linked statically into $SO (its streams crash)"
fi
python3 -c "import mlx_linalg_ext as m, mlx.core as mx; print('has_gpu_kernels', m.has_gpu_kernels, mx.default_device())"

if stage selfcheck; then
  echo "== self-check, default paths"
  python3 scripts/gpu_selfcheck.py 2>&1 | tee "$OUT/selfcheck.txt" || status=1
  echo "== self-check, GEMM path for every size"
  MLX_LINALG_EXT_CUDA_SMALL_MAX=0 python3 scripts/gpu_selfcheck.py 2>&1 | tee -a "$OUT/selfcheck.txt" || status=1
  echo "== self-check, single large matrices on the wgmma path from n c = 512"
  MLX_LINALG_EXT_CUDA_SM90_MIN=512 python3 scripts/gpu_selfcheck.py --large-only 2>&1 | tee -a "$OUT/selfcheck.txt" || status=1
fi

if stage test; then
  echo "== pytest (one process per test file, so that a crash hides nothing)"
  suite "$OUT/pytest.txt"
fi

if stage profile; then
  echo "== profile"
  python3 scripts/profile_gpu.py 2>&1 | tee "$OUT/profile.txt"
fi

if stage bench; then
  echo "== benchmark"
  python3 bench/bench_gpu.py --out "$OUT/bench_gpu.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt" || status=1
fi
if stage variants; then
  variant "GEMM path for every size" MLX_LINALG_EXT_CUDA_SMALL_MAX=0 \
    4096x16,1024x32,256x64 bench_small0
  variant "SIMT FP32 products only" MLX_LINALG_EXT_CUDA_TC_MIN=1000000 \
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
  (
    set -e
    rm -rf /tmp/mle-build-nogpu /tmp/site-nogpu
    # OpenBLAS beside the package: its rpath is relative to site-packages.
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-nogpu .whl/*.whl
    fi
    build_env
    CMAKE_ARGS="${CMAKE_ARGS:-} -DMLX_LINALG_EXT_CUDA=OFF" \
      python3 -m pip install -v --no-build-isolation --no-deps --no-index \
      -C build-dir=/tmp/mle-build-nogpu --target /tmp/site-nogpu .
  ) > "$OUT/build-nogpu.log" 2>&1 || { echo "FALLBACK BUILD FAILED"; tail -30 "$OUT/build-nogpu.log"; exit 1; }
  grep -E "mlx_linalg_ext:" "$OUT/build-nogpu.log"
  PYTHONPATH="/tmp/site-nogpu:$PYTHONPATH" python3 -c "import mlx_linalg_ext as m, mlx.core as mx, numpy as np; a = mx.array(np.eye(3, dtype=np.float32)); print('no-GPU build: has_gpu_kernels', m.has_gpu_kernels, '| exp(I) on a GPU stream:', np.array(m.matrix_exp(a, stream=mx.gpu))[0, 0])" || status=1
  PYTHONPATH="/tmp/site-nogpu:$PYTHONPATH" suite "$OUT/pytest-nogpu.txt"
fi
if stage accuracy; then
  echo "== accuracy against the 1-norm (ours with the default kernels, PyTorch)"
  python3 scripts/gpu_accuracy.py --torch --out "$OUT/accuracy.json" 2>&1 | tail -40
fi
exit $status
