from typing import Optional, Union

import mlx.core as mx

has_gpu_kernels: bool

def matrix_exp(
    a: mx.array, *, stream: Optional[Union[mx.Stream, mx.Device]] = None
) -> mx.array: ...
def expm_frechet(
    a: mx.array, e: mx.array, *, stream: Optional[Union[mx.Stream, mx.Device]] = None
) -> tuple[mx.array, mx.array]: ...
