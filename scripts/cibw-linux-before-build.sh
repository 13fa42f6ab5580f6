#!/usr/bin/env bash
# cibuildwheel, Linux, before each build: MLX's Linux wheels need glibc 2.35,
# newer than any manylinux image, so pip cannot install them here. The build
# takes MLX's headers, CMake package and libmlx.so from those wheels,
# unpacked (pyproject.toml points CMake at them with -DMLX_DIR); the built
# wheel leaves libmlx.so out and requires mlx, which brings it at install.
# The build runs without isolation, so its other requirements go here.
set -euo pipefail
dest=/tmp/mlx-wheels
py=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
rm -rf "$dest"
python -m pip download --only-binary=:all: --python-version "$py" \
  --platform "manylinux_2_35_$(uname -m)" -d "$dest/dl" "mlx[cpu]>=0.32,<0.33"
for wheel in "$dest"/dl/*.whl; do
  python -m zipfile -e "$wheel" "$dest/site"
done
test -f "$dest/site/mlx/share/cmake/MLX/MLXConfig.cmake"
python -m pip install "scikit-build-core>=0.10" "nanobind>=3,<4" \
  "scipy-openblas32>=0.3.27" "cmake>=3.27" ninja
