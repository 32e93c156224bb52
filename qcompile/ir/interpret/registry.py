"""Name -> numpy implementation of each op the reference interpreter knows."""

from __future__ import annotations

from typing import Callable

import numpy as np

Kernel = Callable[..., "np.ndarray | tuple[np.ndarray, ...]"]
KERNELS: dict[str, Kernel] = {}


def kernel(*op_ids: str):
    """Register fn(node, *inputs) for each op id ('Add', 'com.microsoft.MatMulNBits')."""
    def register(fn: Kernel) -> Kernel:
        for op_id in op_ids:
            if op_id in KERNELS:
                raise ValueError(f"op {op_id} registered twice")
            KERNELS[op_id] = fn
        return fn
    return register


def axis_list(axes: np.ndarray | None, rank: int) -> tuple[int, ...] | None:
    if axes is None:
        return None
    return tuple(int(a) % rank if rank else int(a) for a in np.asarray(axes).reshape(-1))
