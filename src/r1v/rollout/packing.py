"""MKL weight packing for the decode loop's skinny matrix products (float32 on CPU).

A decode step multiplies [B, D] rows by every weight of the model. MKL can reorder a weight once into its
GEMM-friendly layout (`_mkl_reorder_linear_weight`, one pass over the weights, ~0.4 s for 135M parameters);
afterwards the [B, D] x [D, N] products of every step run ~1.2-2x faster. The packed copy is for inference
only: it does not follow later weight updates and no gradient flows through it.

- `linear(weight, bias, batch)`: a callable `x -> x W^T + b`, on the packed weight when it applies;
- `packed_linears(modules, batch)`: inside the block, the `nn.Linear` layers under `modules` run packed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = ["can_pack", "linear", "packed_linears"]


def can_pack(weight: torch.Tensor) -> bool:
    """MKL weight packing applies: a plain float32 CPU weight (not a quantised tensor subclass that reports
    float32) in a torch build with MKL's packed GEMM."""
    return (type(weight.detach()) is torch.Tensor and weight.dtype == torch.float32
            and weight.device.type == "cpu" and torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear"))


def _packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor, batch: int,
                   x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, batch)


def linear(weight: torch.Tensor, bias: torch.Tensor | None,
           batch: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> x W^T + b` over a weight fixed for the callable's lifetime: MKL-packed for `batch` rows when
    `batch` is given and `can_pack(weight)`, else a plain `F.linear`."""
    if batch is not None and can_pack(weight):
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, batch)
        return functools.partial(_packed_linear, weight, bias, packed, batch)
    return functools.partial(F.linear, weight=weight, bias=bias)


@contextmanager
def packed_linears(modules: Iterable[torch.nn.Module], batch: int) -> Iterator[int]:
    """Inside the block, each float32 CPU `nn.Linear` under `modules` runs on an MKL-packed copy of its
    weight. Yields how many layers were packed; the layers' own `forward` is back on exit."""
    patched: list[torch.nn.Linear] = []
    try:
        for mod in modules:
            for lin in mod.modules():
                if type(lin) is torch.nn.Linear and can_pack(lin.weight) and "forward" not in vars(lin):
                    bias = lin.bias.detach() if lin.bias is not None else None
                    lin.forward = linear(lin.weight.detach(), bias, batch)
                    patched.append(lin)
        yield len(patched)
    finally:
        for lin in patched:
            del lin.forward
