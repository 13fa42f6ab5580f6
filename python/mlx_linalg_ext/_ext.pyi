import mlx.core as mx

has_gpu_kernels: bool

# The extension takes mx.array only; mlx_linalg_ext's wrappers convert
# array-likes first.
def matrix_exp(
    a: mx.array, *, stream: mx.Stream | mx.Device | None = None
) -> mx.array: ...
def expm_frechet(
    a: mx.array, e: mx.array, *, stream: mx.Stream | mx.Device | None = None
) -> tuple[mx.array, mx.array]: ...
def decide(
    norm: float, shifted_norm: float, double_precision: bool
) -> tuple[bool, int, int, int]: ...
def get_active_memory() -> int: ...
