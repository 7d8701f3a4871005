"""DiT building blocks (official ``modules/layers.py``: ``Modulation``, ``QKNorm``, ``DoubleStreamBlock``,
``SingleStreamBlock``, ``LastLayer``; ``modules/model_edit.py`` ``Step1XEdit.timestep_embedding``).

Every layer takes ``dtype``, ``device`` and ``operations`` (default ``torch.nn``) like ComfyUI's
``comfy/ldm/flux``, so ComfyUI can hand in ``comfy.ops`` for fp8 storage and low-VRAM streaming.
Parameter names equal the official checkpoint keys. Shapes: B batch, S joint length, H hidden.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from .attention import attention

NORM_EPS = 1e-6  # every norm in the official model (``modules/layers.py``)
TIME_FACTOR = 1000.0  # t ∈ [0, 1] is scaled to [0, 1000] before the sinusoid (``Step1XEdit.timestep_embedding``)
MAX_PERIOD = 10_000


def timestep_embedding(t: Tensor, dim: int, time_factor: float = TIME_FACTOR) -> Tensor:
    """Sinusoid ``[cos(u·f), sin(u·f)]``, ``u = time_factor·t``, ``f_k = exp(−ln(10000)·k/(dim/2))``.

    ``t [B]`` → ``[B, dim]`` in float32 arithmetic, returned in ``t``'s dtype (official
    ``Step1XEdit.timestep_embedding``).
    """
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb.to(t.dtype) if torch.is_floating_point(t) else emb


def layer_norm_f32(x: Tensor) -> Tensor:
    """Parameter-free LayerNorm computed in float32 (autocast does the same in the official run)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=NORM_EPS)


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear``, or an ``operations.Linear`` built on plain ``nn.Module`` that has its shape as
    ``in_features`` / ``out_features`` (ComfyUI's mixed-precision Linear, whose weight may be quantized)."""
    return isinstance(module, nn.Linear) or (hasattr(module, "in_features") and hasattr(module, "out_features"))


def uses_stored_weights(linear: nn.Module, x: Tensor, plain_forwards: frozenset = frozenset()) -> bool:
    """True when ``linear(x)`` is exactly ``x·Wᵀ + b`` with the weight and bias as stored.

    ``plain_forwards``: the ``forward`` functions known to be ``F.linear(x, weight, bias)`` whenever the
    conditions below hold (``nn.Linear``'s always is). Not so when the class has another forward
    (ComfyUI's cublas or mixed-precision ops), when hooks are registered, when the weight is stored in
    another dtype (fp8) or on another device (offloaded), or when a ComfyUI layer casts or patches at
    call time: ``comfy_cast_weights`` set, or a queued ``weight_function`` / ``bias_function`` (the three
    conditions ``comfy/ops.py`` checks in ``forward``). Then only the layer's own ``forward`` is right,
    and the fused paths below are not taken.
    """
    weight, bias = linear.weight, linear.bias
    return (
        bias is not None
        and (type(linear).forward is nn.Linear.forward or type(linear).forward in plain_forwards)
        and not (linear._forward_hooks or linear._forward_pre_hooks)
        and not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)
        and type(weight) in (Tensor, nn.Parameter)
        and weight.dtype == bias.dtype == x.dtype
        and weight.device == x.device
        and not getattr(linear, "comfy_cast_weights", False)
        and not getattr(linear, "weight_function", None)
        and not getattr(linear, "bias_function", None)
    )


def linear_gelu_tanh(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``GELU_tanh(x·Wᵀ + b)``, ``x [..., in]`` → ``[..., out]``.

    On CUDA one GEMM whose cuBLASLt epilogue adds the bias and applies the tanh GELU before the one
    rounding to ``x``'s dtype (``torch._addmm_activation``), so the MLP's widest tensor is written once
    and never re-read by a separate GELU. Its CPU kernel applies the erf GELU, and ROCm's epilogue is
    unverified, so elsewhere the two ops.
    """
    if not _has_cublaslt_gelu(x):
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")
    out = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])


def _has_cublaslt_gelu(x: Tensor) -> bool:
    return x.is_cuda and torch.version.hip is None


class FusedEpilogues:
    """Mixin: ``fuse_epilogues`` None (default) fuses on NVIDIA GPUs, True / False force it (tests, benchmarks).

    The fused forms compute the same function with fewer passes over memory. Rounding differs at the
    compute dtype's precision: the GELU is applied before the GEMM output is rounded (once less), the
    single block's attention product is rounded before the MLP product is added to it (once more).
    ``plain_linear_forwards``: see :func:`uses_stored_weights` (set by ``Step1XEdit.allow_fused_linears``).
    """

    fuse_epilogues: bool | None = None
    plain_linear_forwards: frozenset = frozenset()

    def _fuse(self, x: Tensor, *linears: nn.Module) -> bool:
        wanted = _has_cublaslt_gelu(x) if self.fuse_epilogues is None else self.fuse_epilogues
        return wanted and all(uses_stored_weights(linear, x, self.plain_linear_forwards) for linear in linears)

    def _mlp_forward(self, mlp: nn.Sequential, x: Tensor) -> Tensor:
        """``Linear → GELU(tanh) → Linear`` with the first Linear's bias and GELU in its GEMM epilogue."""
        if self._fuse(x, mlp[0]):
            return mlp[2](linear_gelu_tanh(x, mlp[0].weight, mlp[0].bias))
        return mlp(x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``(1 + scale) ⊙ LN(x) + shift`` in float32, cast back to the stream dtype for the next Linear."""
    return torch.addcmul(shift.float(), layer_norm_f32(x), 1 + scale.float()).to(x.dtype)  # one pass, not two


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, dtype=None, device=None, operations=nn):
        super().__init__()
        self.in_layer = operations.Linear(in_dim, hidden_dim, bias=True, dtype=dtype, device=device)
        self.out_layer = operations.Linear(hidden_dim, hidden_dim, bias=True, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMSNorm with liger's "gemma" casting: all in float32, weight used as is (official ``modules/layers.py``
    ``RMSNorm``, which calls liger-kernel's ``LigerRMSNormFunction`` with offset 0)."""

    def __init__(self, dim: int, dtype=None, device=None):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim, dtype=dtype, device=device))

    def forward(self, x: Tensor) -> Tensor:
        """``x·rsqrt(mean(x²) + ε)·w`` in float32 over the last axis. ``F.rms_norm`` is one fused kernel on
        CUDA, like liger's, where the same maths as separate ops would pass over q and k about ten times."""
        weight = self.scale.to(device=x.device, dtype=x.dtype).float()
        return F.rms_norm(x.float(), (x.shape[-1],), weight, NORM_EPS).to(x.dtype)


class QKNorm(nn.Module):
    def __init__(self, dim: int, dtype=None, device=None):
        super().__init__()
        self.query_norm = RMSNorm(dim, dtype=dtype, device=device)
        self.key_norm = RMSNorm(dim, dtype=dtype, device=device)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Holds the qkv / norm / proj weights of one stream; the attention itself is joint."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, dtype=None, device=None, operations=nn):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = operations.Linear(dim, dim * 3, bias=qkv_bias, dtype=dtype, device=device)
        self.norm = QKNorm(dim // num_heads, dtype=dtype, device=device)
        self.proj = operations.Linear(dim, dim, dtype=dtype, device=device)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, S, H]`` → normed q, k and v, each ``[B, heads, S, d]`` (feature f = s·H + head·d + e)."""
        q, k, v = rearrange(self.qkv(x), "b s (k h d) -> k b h s d", k=3, h=self.num_heads)
        q, k = self.norm(q, k, v)
        return q, k, v


class Modulation(nn.Module):
    """``lin(SiLU(vec))`` split into (shift, scale, gate) × (2 if double else 1), each ``[B, 1, H]``."""

    def __init__(self, dim: int, double: bool, dtype=None, device=None, operations=nn):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = operations.Linear(dim, self.multiplier * dim, bias=True, dtype=dtype, device=device)

    def forward(self, vec: Tensor) -> tuple[Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _mlp(hidden: int, mlp_hidden: int, dtype, device, operations) -> nn.Sequential:
    return nn.Sequential(
        operations.Linear(hidden, mlp_hidden, bias=True, dtype=dtype, device=device),
        nn.GELU(approximate="tanh"),
        operations.Linear(mlp_hidden, hidden, bias=True, dtype=dtype, device=device),
    )


class DoubleStreamBlock(FusedEpilogues, nn.Module):
    """Separate weights for the image and text streams, one joint attention (text first)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, dtype=None, device=None, operations=nn):
        super().__init__()
        mlp_hidden = int(hidden * mlp_ratio)
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.img_mod = Modulation(hidden, double=True, **kw)
        self.img_attn = SelfAttention(hidden, num_heads, qkv_bias, **kw)
        self.img_mlp = _mlp(hidden, mlp_hidden, dtype, device, operations)
        self.txt_mod = Modulation(hidden, double=True, **kw)
        self.txt_attn = SelfAttention(hidden, num_heads, qkv_bias, **kw)
        self.txt_mlp = _mlp(hidden, mlp_hidden, dtype, device, operations)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor, attn=attention) -> tuple[Tensor, Tensor]:
        """``attn`` computes the joint attention (:func:`model.dit.attention.attention`, or a distributed one)."""
        img_shift1, img_scale1, img_gate1, img_shift2, img_scale2, img_gate2 = self.img_mod(vec)
        txt_shift1, txt_scale1, txt_gate1, txt_shift2, txt_scale2, txt_gate2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_heads(modulate(img, img_shift1, img_scale1))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(modulate(txt, txt_shift1, txt_scale1))
        joint = attn(
            torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), torch.cat((txt_v, img_v), dim=2), pe
        )
        txt_len = txt.shape[1]
        txt_attn, img_attn = joint[:, :txt_len], joint[:, txt_len:]
        img = img + img_gate1 * self.img_attn.proj(img_attn)
        img = img + img_gate2 * self._mlp_forward(self.img_mlp, modulate(img, img_shift2, img_scale2))
        txt = txt + txt_gate1 * self.txt_attn.proj(txt_attn)
        txt = txt + txt_gate2 * self._mlp_forward(self.txt_mlp, modulate(txt, txt_shift2, txt_scale2))
        return img, txt


class SingleStreamBlock(FusedEpilogues, nn.Module):
    """One stream over ``[txt; img]``: ``linear1`` gives qkv and the MLP input in one matmul."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, dtype=None, device=None, operations=nn):
        super().__init__()
        self.hidden = hidden
        self.num_heads = num_heads
        self.mlp_hidden = int(hidden * mlp_ratio)
        self.linear1 = operations.Linear(hidden, hidden * 3 + self.mlp_hidden, dtype=dtype, device=device)
        self.linear2 = operations.Linear(hidden + self.mlp_hidden, hidden, dtype=dtype, device=device)
        self.norm = QKNorm(hidden // num_heads, dtype=dtype, device=device)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden, double=False, dtype=dtype, device=device, operations=operations)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor, attn=attention) -> Tensor:
        shift, scale, gate = self.modulation(vec)
        x_mod = modulate(x, shift, scale)
        if self._fuse(x_mod, self.linear1, self.linear2):
            return x + gate * self._fused_branches(x_mod, pe, attn)
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * self.hidden, self.mlp_hidden], dim=-1)
        return x + gate * self.linear2(torch.cat((self._attention(qkv, pe, attn), self.mlp_act(mlp)), dim=2))

    def _attention(self, qkv: Tensor, pe: Tensor, attn) -> Tensor:
        q, k, v = rearrange(qkv, "b s (k h d) -> k b h s d", k=3, h=self.num_heads)
        q, k = self.norm(q, k, v)
        return attn(q, k, v, pe)

    def _fused_branches(self, x_mod: Tensor, pe: Tensor, attn) -> Tensor:
        """``linear2([attention(qkv); GELU(mlp)])`` without materialising the concatenation.

        ``linear1``'s rows split into the qkv GEMM (first 3·H rows) and the MLP GEMM with the GELU
        epilogue (the rest); ``linear2``'s columns split the same way, the MLP product accumulated onto
        the attention product (``addmm`` with β = 1). ``x_mod [B, S, H]`` → ``[B, S, H]``.
        """
        h = self.hidden
        w1, b1, w2 = self.linear1.weight, self.linear1.bias, self.linear2.weight
        mlp = linear_gelu_tanh(x_mod, w1[3 * h :], b1[3 * h :])
        out = F.linear(self._attention(F.linear(x_mod, w1[: 3 * h], b1[: 3 * h]), pe, attn), w2[:, :h], self.linear2.bias)
        return torch.addmm(out.flatten(0, 1), mlp.flatten(0, 1), w2[:, h:].t()).view_as(out)


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int, dtype=None, device=None, operations=nn):
        super().__init__()
        self.linear = operations.Linear(hidden, out_channels, bias=True, dtype=dtype, device=device)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), operations.Linear(hidden, 2 * hidden, bias=True, dtype=dtype, device=device)
        )

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(modulate(x, shift, scale))
