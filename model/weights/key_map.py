"""Diffusers → official key map of the Step1X-Edit transformer (the inverse of the diffusers fork's
``scripts/convert_step1x_edit_to_diffusers.py`` ``convert_step1x_edit_transformer_checkpoint_to_diffusers``).

The diffusers layout splits fused projections (double-block qkv into q/k/v, single-block ``linear1``
into q/k/v/mlp) and stores the final-layer modulation as (scale, shift) instead of (shift, scale).
:func:`group_official` turns a diffusers key list into ``official key → Source`` (which diffusers
tensors, in which order, and how to combine them); :func:`official_to_diffusers` goes the other way.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

# diffusers module name (inside a block or at the top) → (official module name, part index)
_DOUBLE = {
    "norm1.linear": ("img_mod.lin", 0),
    "norm1_context.linear": ("txt_mod.lin", 0),
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.norm_q": ("img_attn.norm.query_norm", 0),
    "attn.norm_k": ("img_attn.norm.key_norm", 0),
    "attn.norm_added_q": ("txt_attn.norm.query_norm", 0),
    "attn.norm_added_k": ("txt_attn.norm.key_norm", 0),
    "attn.to_out.0": ("img_attn.proj", 0),
    "attn.to_add_out": ("txt_attn.proj", 0),
    "ff.net.0.proj": ("img_mlp.0", 0),
    "ff.net.2": ("img_mlp.2", 0),
    "ff_context.net.0.proj": ("txt_mlp.0", 0),
    "ff_context.net.2": ("txt_mlp.2", 0),
}
_SINGLE = {
    "norm.linear": ("modulation.lin", 0),
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "attn.norm_q": ("norm.query_norm", 0),
    "attn.norm_k": ("norm.key_norm", 0),
    "proj_out": ("linear2", 0),
}
_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_embed": "time_in",
    "vec_embed": "vector_in",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
_BLOCKS = {"transformer_blocks": ("double_blocks", _DOUBLE), "single_transformer_blocks": ("single_blocks", _SINGLE)}
# Official block stack → its diffusers name ("double_blocks" → "transformer_blocks"), for messages.
DIFFUSERS_BLOCK_STACKS = {official: diffusers for diffusers, (official, _) in _BLOCKS.items()}
FINAL_MODULATION = "final_layer.adaLN_modulation.1."


def _param_name(official_module: str, diffusers_param: str) -> str:
    """RMSNorm weights are called ``scale`` in the official layout."""
    if official_module.endswith("_norm") and diffusers_param == "weight":
        return "scale"
    return diffusers_param


def to_official(diffusers_key: str) -> tuple[str, int]:
    """``(official key, part index)``; keys with no rename (``connector.*``, ``text_token_mapping.*``) map to themselves."""
    module, param = diffusers_key.rsplit(".", 1)
    parts = module.split(".")
    if parts[0] in _BLOCKS and len(parts) > 2:
        official_head, table = _BLOCKS[parts[0]]
        inner = ".".join(parts[2:])
        if inner in table:
            name, index = table[inner]
            return f"{official_head}.{parts[1]}.{name}.{_param_name(name, param)}", index
    for old, new in _TOP.items():
        if module == old or module.startswith(old + "."):
            return new + module[len(old):] + "." + param, 0
    return diffusers_key, 0


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _swap_halves(parts: list[torch.Tensor]) -> torch.Tensor:
    scale, shift = parts[0].chunk(2, dim=0)
    return torch.cat((shift, scale), dim=0)


@dataclass(frozen=True)
class Source:
    keys: tuple[str, ...]
    combine: Callable[[list[torch.Tensor]], torch.Tensor]


def group_official(diffusers_keys: Iterable[str]) -> dict[str, Source]:
    """``official key → Source`` for every key of a diffusers-layout transformer."""
    parts: dict[str, dict[int, str]] = {}
    for key in diffusers_keys:
        official, index = to_official(key)
        parts.setdefault(official, {})[index] = key
    return {
        official: Source(
            tuple(by_index[i] for i in sorted(by_index)),
            _swap_halves if official.startswith(FINAL_MODULATION) else _concat,
        )
        for official, by_index in parts.items()
    }


def identity_sources(keys: Iterable[str]) -> dict[str, Source]:
    """The official layout: each key is its own source."""
    return {key: Source((key,), _concat) for key in keys}


def _split_rows(tensor: torch.Tensor, parts: int, hidden: int) -> tuple[torch.Tensor, ...]:
    """q, k, v (3 equal row blocks) or q, k, v, mlp (single-block ``linear1``: rows H, H, H, rest)."""
    if parts == 1:
        return (tensor,)
    return tensor.split([hidden] * 3 + ([tensor.shape[0] - 3 * hidden] if parts == 4 else []))


def official_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The diffusers-layout state dict of an official one (inverse of :func:`group_official`)."""
    hidden = state["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, param = key.rsplit(".", 1)
        parts = module.split(".")
        block = next(((head, table) for head, (official, table) in _BLOCKS.items() if official == parts[0]), None)
        if block is not None and len(parts) > 2:
            head, table = block
            inner = ".".join(parts[2:])
            targets = sorted((index, name) for name, (official, index) in table.items() if official == inner)
            diffusers_param = "weight" if param == "scale" else param
            for (_, name), chunk in zip(targets, _split_rows(tensor, len(targets), hidden)):
                out[f"{head}.{parts[1]}.{name}.{diffusers_param}"] = chunk.contiguous()
            continue
        renamed = next((new + module[len(old):] for new, old in _TOP.items()
                        if module == old or module.startswith(old + ".")), module)
        out[f"{renamed}.{param}"] = _swap_halves([tensor]) if key.startswith(FINAL_MODULATION) else tensor
    return out
