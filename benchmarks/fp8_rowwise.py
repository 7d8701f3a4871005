"""fp8 weight storage with scaled matmul, as an ``operations`` namespace for the model layers.

The benchmarks' own fp8 path, measured against ComfyUI's (the nodes use ``comfy.ops``).

``fp8_ops.Linear`` stores its weight as float8_e4m3fn with one float32 scale per tensor
(``scale_weight``, the name ComfyUI's scaled-fp8 files and ``comfy.ops.scaled_fp8_ops`` use). On a GPU
with fp8 tensor cores (compute capability ≥ 8.9) the product runs as ``torch._scaled_mm`` with the
activations quantised per row (one absmax scale per token, computed on the device: no host sync);
elsewhere the weight is dequantised to the activation dtype. A Linear whose weight is not fp8 (the
loader keeps embedders, connector and final layer in bf16) runs as a plain Linear.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.weights.checkpoint import FP8_MAX

FP8 = torch.float8_e4m3fn
MIN_FP8_COMPUTE_CAPABILITY = (8, 9)  # Ada / Hopper have fp8 tensor cores
SCALED_MM_ALIGNMENT = 16  # torch._scaled_mm needs both matrix dims divisible by 16


def supports_fp8_matmul(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= MIN_FP8_COMPUTE_CAPABILITY


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x [M, K]`` → ``(x_fp8 [M, K], scale [M, 1] float32)`` with one absmax scale per row."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).to(FP8), scale


class Linear(nn.Linear):
    """``nn.Linear`` whose weight may be fp8 with a per-tensor ``scale_weight``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None, device=None):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.scale_weight = nn.Parameter(torch.ones((), dtype=torch.float32, device=device), requires_grad=False)

    def reset_parameters(self) -> None:
        """Weights always come from a checkpoint; skip the random init (as ``comfy.ops`` does)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dtype != FP8:
            return F.linear(x, self.weight, self.bias)
        if not supports_fp8_matmul(x.device) or self.in_features % SCALED_MM_ALIGNMENT or self.out_features % SCALED_MM_ALIGNMENT:
            weight = self.weight.to(x.dtype) * self.scale_weight.to(x.dtype)
            return F.linear(x, weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        x_fp8, x_scale = quantize_rows(rows)
        weight_scale = self.scale_weight.reshape(1, 1).expand(1, self.out_features)
        out = torch._scaled_mm(
            x_fp8, self.weight.t(), scale_a=x_scale, scale_b=weight_scale.contiguous(), bias=self.bias,
            out_dtype=x.dtype,
        )
        return out.reshape(*x.shape[:-1], self.out_features)


class fp8_ops:  # noqa: N801 - mirrors the comfy.ops namespace style (comfy.ops.manual_cast, ...)
    """Drop-in ``operations=`` for :class:`model.dit.transformer.Step1XEdit`."""

    Linear = Linear
    LayerNorm = nn.LayerNorm
