#!/usr/bin/env python3
"""Convert a Step1X-Edit DiT (the official bf16 file) into a ComfyUI-native fp8 file.

    python scripts/convert_to_comfy_fp8.py IN.safetensors OUT.safetensors

The Linear weights of the 19 + 38 blocks become float8_e4m3fn with one absmax scale per tensor, the
quantisation Load Step1X Model applies at load time with weight_dtype fp8_e4m3fn (model/weights/loader.py
FP8_BLOCK_PREFIXES, model/weights/checkpoint.py quantize_fp8). They are stored the way ComfyUI writes a
per-layer quantized layer (comfy/ops.py _quantized_weight_state_dict): "<layer>.weight" in
float8_e4m3fn, "<layer>.weight_scale" a float32 scalar, and "<layer>.comfy_quant" the JSON
{"format": "float8_e4m3fn"} as a uint8 tensor. Embedders, connector and final layer keep the input's
dtype, as in ComfyUI's fp8 FLUX files; keys are the official ones without a prefix. The result is
half the size (12.4 GB for the 24.9 GB file); Load Step1X Model reads it on any ComfyUI it runs on.

The input may be any file Load Step1X Model reads (official or diffusers layout, any prefix; an fp8
file keeps its fp8 weights and scales). It is read whole into memory (about 13 GB for the full model).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Dtypes of the tensors left unquantised, by the input's safetensors dtype (fp8 inputs: bf16, the
# official release's dtype).
KEPT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def convert(path: str) -> dict:
    """The converted state dict of the DiT at ``path``; raises ``model.weights.checkpoint.CheckpointError``."""
    import torch

    from model.weights.checkpoint import (COMFY_FP8_FORMAT, COMFY_QUANT_SCALE_SUFFIX, QUANT_FORMAT_SUFFIX,
                                          comfy_quant_entry)
    from model.dit.transformer import Step1XEdit
    from model.dit.layers import is_linear
    from model.weights.loader import FP8_SCALE_KEY, inspect_checkpoint, read_state_dict

    info = inspect_checkpoint(path)
    dtype = getattr(torch, KEPT_DTYPES.get(info.stored_dtype, "bfloat16"))
    with torch.device("meta"):
        linear_keys = {f"{name}.weight" for name, module in Step1XEdit(info.params).named_modules()
                       if is_linear(module)}
    state = read_state_dict(info, dtype, linear_keys, fp8_storage=True)
    out = {}
    for key, tensor in state.items():
        if key.endswith("." + FP8_SCALE_KEY):
            continue   # written below next to its fp8 weight; the others are 1 on unquantised layers
        out[key] = tensor.contiguous()
        if tensor.dtype == torch.float8_e4m3fn:
            layer = key.removesuffix(".weight")
            out[layer + COMFY_QUANT_SCALE_SUFFIX] = state[f"{layer}.{FP8_SCALE_KEY}"].float().reshape(())
            out[layer + QUANT_FORMAT_SUFFIX] = comfy_quant_entry(COMFY_FP8_FORMAT)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="Step1X-Edit DiT .safetensors (e.g. step1x-edit-v1p1-official)")
    parser.add_argument("target", type=Path, help="the fp8 .safetensors to write")
    args = parser.parse_args(argv)
    if args.target.resolve() == args.source.resolve():
        parser.error("the target must be another file than the source")
    sys.path.insert(0, str(REPO_ROOT))
    from safetensors.torch import save_file

    from model.weights.checkpoint import CheckpointError

    try:
        state = convert(str(args.source))
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.target))
    print(args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
