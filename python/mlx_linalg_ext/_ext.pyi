import mlx.core as mx

has_gpu_kernels: bool

def matrix_exp(
    a: mx.array, *, stream: mx.Stream | mx.Device | None = None
) -> mx.array: ...
def expm_frechet(
    a: mx.array, e: mx.array, *, stream: mx.Stream | mx.Device | None = None
) -> tuple[mx.array, mx.array]: ...
def get_active_memory() -> int: ...
