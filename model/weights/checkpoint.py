"""Reading Step1X-Edit DiT checkpoints: header checks, model-family detection, key layouts, fp8.

Safetensors only (pickle can run code). The header is read first, so a wrong or truncated file is
reported before any tensor is read; tensors are then streamed one at a time and converted on the way
(official layout: the module paths of ``modules/model_edit.py`` ``Step1XEdit``; diffusers layout: the fork's
``scripts/convert_step1x_edit_to_diffusers.py``; the version is read from the keys, see :mod:`model.dit.params`).
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from safetensors import safe_open

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # the safetensors format caps its JSON header at 100 MB
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
# Per-tensor weight scales: ComfyUI's scaled-fp8 files use "<layer>.scale_weight" plus an empty
# "scaled_fp8" marker; ComfyUI's per-layer quantized files (comfy/ops.py _quantized_weight_state_dict)
# and other community files use "<layer>.weight_scale".
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
SCALED_FP8_MARKER = "scaled_fp8"
# Activation scales (scaled-fp8 and per-layer names): unused, activations are cast to fp8 unscaled.
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")
# ComfyUI's per-layer quantized layout (comfy/ops.py _quantized_weight_state_dict writes it,
# _load_quantized_module reads it): "<layer>.weight" quantized, "<layer>.weight_scale", and
# "<layer>.comfy_quant", the layer's format as UTF-8 JSON in a uint8 tensor. The fp8 format's name is
# comfy/quant_ops.py QUANT_ALGOS'.
QUANT_FORMAT_SUFFIX = ".comfy_quant"
COMFY_QUANT_SCALE_SUFFIX = ".weight_scale"
COMFY_FP8_FORMAT = "float8_e4m3fn"
# safetensors dtypes of quantized Linear weights other than fp8 (ComfyUI's nvfp4 packs two values per
# byte in U8, its int8 and int4 formats store I8: comfy/quant_ops.py QUANT_ALGOS storage_t).
NON_FP8_QUANT_DTYPES = ("U8", "I8")
# Step1X-Edit's connector (no FLUX-family DiT has it) plus the stack or embedder each layout names its own
# way (official ``modules/model_edit.py`` ``Step1XEdit``; the fork's ``Step1XEditTransformer2DModel``). Any
# block of a stack will do: a file missing block 0 is still this layout, and the block check names the gap.
CONNECTOR_MARKER = "connector.S.input_embedder.weight"
OFFICIAL_STACK_PREFIXES = ("double_blocks.", "single_blocks.")
DIFFUSERS_MARKER = "x_embedder.weight"


class CheckpointError(ValueError):
    """A file that cannot be used as a Step1X-Edit DiT; the message names the problem and the fix."""


@dataclass(frozen=True)
class TensorRecord:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def read_header(path: str) -> dict[str, TensorRecord]:
    """Validate a safetensors file and return its tensor table, without reading tensor data."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}. Put the file in ComfyUI/models/diffusion_models.")
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise CheckpointError(
            f"{name} is a pickle checkpoint; pickles can run arbitrary code and are never loaded. "
            "Use the official .safetensors file (step1x-edit-i1258.safetensors or "
            "step1x-edit-v1p1-official.safetensors) or convert it to safetensors."
        )
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{name} is not a safetensors file ({size} bytes). Re-download it.")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(SAFETENSORS_HEADER_LIMIT, size - 8):
            raise CheckpointError(
                f"{name} is not a safetensors file (no valid header; a pickle .ckpt renamed, or a truncated "
                "download?). Use the official .safetensors file."
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{name} has a corrupt safetensors header ({err}). Re-download it.") from None
    header.pop("__metadata__", None)
    data_size = size - 8 - header_len
    records = {}
    for key, entry in header.items():
        start, end = entry["data_offsets"]
        records[key] = TensorRecord(entry["dtype"], tuple(entry["shape"]), end - start)
        if end > data_size:
            raise CheckpointError(
                f"{name} is truncated: it holds {data_size:,} bytes of tensor data but its header needs "
                f"{max(e['data_offsets'][1] for e in header.values()):,}. The download or copy did not finish; "
                "download the file again."
            )
    return records


def find_prefix(keys: list[str]) -> str:
    """The prefix in front of the DiT keys (``""`` for the official file, e.g. ``model.diffusion_model.``)."""
    for marker in ("connector.S.input_embedder.weight", "img_in.weight", "x_embedder.weight"):
        for key in keys:
            if key.endswith(marker):
                prefix = key[: -len(marker)]
                if prefix == "" or prefix.endswith("."):
                    return prefix
    return ""


def describe_other_family(keys: set[str]) -> str:
    """Name what a non-Step1X file looks like and what to use instead."""
    if "double_blocks.0.img_attn.qkv.weight" in keys:
        return (
            "it is a FLUX.1-style DiT without Step1X-Edit's connector (no connector.* keys), e.g. FLUX.1 dev/schnell "
            "or Kontext. Load it with ComfyUI's 'Load Diffusion Model' node; for Step1X-Edit use "
            "step1x-edit-i1258.safetensors (v1.0) or step1x-edit-v1p1-official.safetensors (v1.1)"
        )
    if any(k.startswith("transformer_blocks.0.img_mod.") or k == "txt_norm.weight" for k in keys):
        return "it is a Qwen-Image DiT. Load it with ComfyUI's 'Load Diffusion Model' node and the Qwen-Image nodes"
    if "x_embedder.weight" in keys:
        return (
            "it is a diffusers-layout FLUX transformer without Step1X-Edit's connector. Load it with ComfyUI's "
            "'Load Diffusion Model' node"
        )
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return "it is a VAE. Load it with ComfyUI's 'Load VAE' node and connect it to Pack Ref Latent / Unpack-Decode"
    if any(k.startswith(("model.layers.", "visual.", "text_model.", "encoder.block.")) for k in keys):
        return "it is a text encoder. Load it with ComfyUI's 'Load CLIP' node (type qwen_image for Qwen2.5-VL)"
    if any(k.startswith("lora_") for k in keys):
        return "it is a LoRA. Apply it with the 'Step1X LoRA' node after 'Load Step1X Model'"
    examples = ", ".join(sorted(keys)[:3])
    return f"its keys ({examples}, ...) match no known Step1X-Edit layout"


@dataclass(frozen=True)
class CheckpointLayout:
    """Where the DiT sits inside a file and how its keys map onto the official names."""

    prefix: str
    layout: str  # "official" or "diffusers"
    fp8_scaled: bool


def detect_layout(path: str, records: dict[str, TensorRecord]) -> CheckpointLayout:
    keys = list(records)
    prefix = find_prefix(keys)
    stripped = {k[len(prefix):] for k in keys if k.startswith(prefix)}
    has_connector = CONNECTOR_MARKER in stripped
    if has_connector and any(k.startswith(OFFICIAL_STACK_PREFIXES) for k in stripped):
        layout = "official"
    elif has_connector and DIFFUSERS_MARKER in stripped:
        layout = "diffusers"
    else:
        raise CheckpointError(f"{os.path.basename(path)} is not a Step1X-Edit DiT: {describe_other_family(stripped)}.")
    quantized = sorted(k[: -len(QUANT_FORMAT_SUFFIX)] for k in stripped if k.endswith(QUANT_FORMAT_SUFFIX))
    other_formats = [k for k in quantized
                     if getattr(records.get(prefix + k + ".weight"), "dtype", None) in NON_FP8_QUANT_DTYPES]
    if other_formats:
        raise CheckpointError(
            f"{os.path.basename(path)} holds {len(other_formats)} layers quantized to a ComfyUI format other than fp8 "
            f"(e.g. {other_formats[0]}, stored {records[prefix + other_formats[0] + '.weight'].dtype}); Load Step1X Model "
            "reads bf16, fp16, fp32 and fp8 files. Use the bf16 file, or its fp8 conversion "
            "(scripts/convert_to_comfy_fp8.py)."
        )
    fp8_scaled = any(k.endswith(SCALE_SUFFIXES) for k in stripped)
    return CheckpointLayout(prefix, layout, fp8_scaled)


def comfy_quant_entry(layer_format: str) -> torch.Tensor:
    """A layer's ``comfy_quant`` tensor as ComfyUI writes it: ``json.dumps({"format": ...})`` in UTF-8 bytes."""
    return torch.tensor(list(json.dumps({"format": layer_format}).encode("utf-8")), dtype=torch.uint8)


def is_scale_key(key: str) -> bool:
    """Quantization side data of a layer (scales, format, the scaled-fp8 marker), not a model tensor."""
    return (key.endswith(SCALE_SUFFIXES) or key.endswith(INPUT_SCALE_SUFFIXES) or key.endswith(QUANT_FORMAT_SUFFIX)
            or key == SCALED_FP8_MARKER)


def weight_key_of_scale(key: str) -> str:
    for suffix in SCALE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)] + ".weight"
    raise KeyError(key)


def iter_tensors(path: str, prefix: str, keys: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream ``(key without prefix, tensor)`` pairs from the file, one tensor in memory at a time."""
    with safe_open(path, framework="pt", device="cpu") as f:
        for key in keys if keys is not None else f.keys():
            if key.startswith(prefix):
                yield key[len(prefix):], f.get_tensor(key)


def read_scales(path: str, prefix: str, file_keys: list[str]) -> dict[str, torch.Tensor]:
    """Per-tensor fp8 weight scales, keyed by the weight they scale (prefix stripped)."""
    scale_keys = [k for k in file_keys if k.startswith(prefix) and k.endswith(SCALE_SUFFIXES)]
    return {weight_key_of_scale(k): t.float() for k, t in iter_tensors(path, prefix, scale_keys)}


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax quantisation to float8_e4m3fn: ``(w_fp8, scale)`` with ``w ≈ w_fp8·scale``."""
    amax = weight.abs().amax().float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale
