"""Connector: Qwen2.5-VL hidden states → DiT text tokens + pooled vector.

Official ``modules/connector_edit.py`` ``Qwen2Connector``, built on HunyuanVideo's timestep-aware
token refiner. Shapes: B batch, L text length (640), D VLM width (3584), C connector width (4096).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from .attention import masked_attention
from .layers import NORM_EPS, TIME_FACTOR, timestep_embedding
from .params import POOLED_DIM, TIME_EMBED_DIM, ConnectorParams

SCALE_FACTOR_INIT = -0.91  # v1.0's learned pooled-vector scale starts here (official ``Qwen2Connector.__init__``)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``x [B, L, D]``, ``mask [B, L]`` (0/1) → mean over the real tokens ``[B, D]`` (summed in float32)."""
    m = mask.unsqueeze(-1).float()
    return ((x.float() * m).sum(dim=1) / m.sum(dim=1)).to(x.dtype)


def refiner_attention_mask(mask: Tensor) -> Tensor:
    """``[B, L]`` → ``[B, 1, L, L]`` bool: real query × real key, and key 0 always visible."""
    m = mask.bool()
    full = m[:, None, :, None] & m[:, None, None, :]
    full[:, :, :, 0] = True
    return full


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, dtype=None, device=None, operations=nn):
        super().__init__()
        self.mlp = nn.Sequential(
            operations.Linear(TIME_EMBED_DIM, hidden, bias=True, dtype=dtype, device=device),
            nn.SiLU(),
            operations.Linear(hidden, hidden, bias=True, dtype=dtype, device=device),
        )

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return self.mlp(timestep_embedding(t, TIME_EMBED_DIM, time_factor=1.0).to(dtype))


class TextProjection(nn.Module):
    def __init__(self, in_channels: int, hidden: int, dtype=None, device=None, operations=nn):
        super().__init__()
        self.linear_1 = operations.Linear(in_channels, hidden, bias=True, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(hidden, hidden, bias=True, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class RefinerMLP(nn.Module):
    def __init__(self, hidden: int, mlp_hidden: int, dtype=None, device=None, operations=nn):
        super().__init__()
        self.fc1 = operations.Linear(hidden, mlp_hidden, bias=True, dtype=dtype, device=device)
        self.fc2 = operations.Linear(mlp_hidden, hidden, bias=True, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class IndividualTokenRefinerBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float, dtype=None, device=None, operations=nn):
        super().__init__()
        self.heads = heads
        kw = dict(dtype=dtype, device=device)
        self.norm1 = operations.LayerNorm(hidden, elementwise_affine=True, eps=NORM_EPS, **kw)
        self.self_attn_qkv = operations.Linear(hidden, hidden * 3, bias=True, **kw)
        self.self_attn_proj = operations.Linear(hidden, hidden, bias=True, **kw)
        self.norm2 = operations.LayerNorm(hidden, elementwise_affine=True, eps=NORM_EPS, **kw)
        self.mlp = RefinerMLP(hidden, int(hidden * mlp_ratio), operations=operations, **kw)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), operations.Linear(hidden, 2 * hidden, bias=True, **kw))

    def forward(self, x: Tensor, c: Tensor, attn_mask: Tensor) -> Tensor:
        gate_attn, gate_mlp = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        qkv = self.self_attn_qkv(self.norm1(x))
        q, k, v = rearrange(qkv, "b l (k h d) -> k b h l d", k=3, h=self.heads)
        x = x + gate_attn * self.self_attn_proj(masked_attention(q, k, v, attn_mask))
        return x + gate_mlp * self.mlp(self.norm2(x))


class IndividualTokenRefiner(nn.Module):
    def __init__(self, p: ConnectorParams, dtype=None, device=None, operations=nn):
        super().__init__()
        self.blocks = nn.ModuleList(
            IndividualTokenRefinerBlock(p.hidden_size, p.heads_num, p.mlp_ratio, dtype, device, operations)
            for _ in range(p.depth)
        )

    def forward(self, x: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        attn_mask = refiner_attention_mask(mask)
        for block in self.blocks:
            x = block(x, c, attn_mask)
        return x


class SingleTokenRefiner(nn.Module):
    def __init__(self, p: ConnectorParams, dtype=None, device=None, operations=nn):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.input_embedder = operations.Linear(p.in_channels, p.hidden_size, bias=True, dtype=dtype, device=device)
        self.t_embedder = TimestepEmbedder(p.hidden_size, **kw)
        self.c_embedder = TextProjection(p.in_channels, p.hidden_size, **kw)
        self.individual_token_refiner = IndividualTokenRefiner(p, **kw)

    def forward(self, x: Tensor, timestep: Tensor, mask: Tensor, pooled_input: Tensor) -> Tensor:
        c = self.t_embedder(timestep, x.dtype) + self.c_embedder(pooled_input)
        return self.individual_token_refiner(self.input_embedder(x), c, mask)


class Qwen2Connector(nn.Module):
    """``(llm_embedding [B, L, D], t [B], mask [B, L])`` → ``(txt [B, L, C], y [B, 768])``.

    ``with_scale_factor``: v1.0 multiplies the pooled input by ``1 + scale_factor`` (official
    ``Qwen2Connector.forward``; the v1.1 code creates ``scale_factor`` only for ``version == 'v1.0'``).
    """

    def __init__(self, p: ConnectorParams, with_scale_factor: bool, dtype=None, device=None, operations=nn):
        super().__init__()
        self.S = SingleTokenRefiner(p, dtype=dtype, device=device, operations=operations)
        self.global_proj_out = operations.Linear(p.in_channels, POOLED_DIM, bias=True, dtype=dtype, device=device)
        if with_scale_factor:
            self.scale_factor = nn.Parameter(torch.full((1,), SCALE_FACTOR_INIT, dtype=dtype, device=device))
        else:
            self.scale_factor = None

    def forward(self, x: Tensor, t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        pooled = masked_mean(x, mask)
        pooled_for_vec = pooled
        if self.scale_factor is not None:
            pooled_for_vec = pooled * (1 + self.scale_factor.to(device=x.device, dtype=x.dtype))
        y = self.global_proj_out(pooled_for_vec)
        txt = self.S(x, t * TIME_FACTOR, mask, pooled)
        return txt, y
