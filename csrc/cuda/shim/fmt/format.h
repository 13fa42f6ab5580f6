// MLX's CUDA headers (mlx/backend/cuda/lru_cache.h) include <fmt/format.h>,
// which the MLX wheels do not ship. The one use is an error message inside a
// member template this extension never instantiates, so a declaration is
// enough. Only on the include path of the CUDA sources.
#pragma once

#include <string>

namespace fmt {
template <typename... Args>
std::string format(const char* f, Args&&... args);
} // namespace fmt
