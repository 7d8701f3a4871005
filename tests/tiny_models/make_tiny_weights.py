#!/usr/bin/env python3
"""Write tiny random-weight stand-ins for the official Step1X-Edit files, in their real layouts.

    python tests/tiny_models/make_tiny_weights.py OUT_DIR [--comfyui .work/ComfyUI]

OUT_DIR gets a ComfyUI models/ layout under the official file names, so the shipped workflows run
unchanged on them (the edited image is noise; the point is the plumbing, sizes and file formats):

  diffusion_models/step1x-edit-i1258.safetensors          v1.0 DiT, official single-file keys (Step1XEdit)
  diffusion_models/step1x-edit-v1p1-official.safetensors  v1.1 DiT (no connector.scale_factor)
  diffusion_models/step1x-edit-i1258-FP8.safetensors      v1.0 DiT, Linear weights in float8_e4m3fn
  diffusion_models/step1x-edit-v1p1-prefixed.safetensors  v1.1 DiT, keys under "model.diffusion_model."
  vae/ae.safetensors                                      FLUX VAE in ComfyUI's ae.safetensors layout
  text_encoders/Qwen2.5-VL-7B-Instruct/                   the tiny Qwen2.5-VL of the golden fixtures
  text_encoders/qwen_2.5_vl_7b.safetensors                the same in ComfyUI's single-file layout (Load
                                                          CLIP, qwen_image); its metadata holds the tiny sizes
                                                          for tiny_clip_loader.py
  loras/step1x-edit-lora.safetensors                      a kohya-format LoRA for the tiny DiT

The FLUX VAE keeps its full width (84 M parameters, stored in bfloat16): ComfyUI's VAELoader infers
the FLUX VAE from key names and builds it at full size whatever the shapes say.
Needs torch, safetensors, this repository's model/ and ComfyUI's source (for the VAE classes).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_COMFYUI = REPO_ROOT / ".work" / "ComfyUI"
# The tiny Qwen2.5-VL of the repository's reference fixtures (tests/fixtures/golden/README.md).
DEFAULT_TINY_VLM = REPO_ROOT / "tests" / "fixtures" / "golden" / "vlm" / "tiny-qwen25vl"

# Tiny DiT: head dim 32 = sum of axes; connector input = the tiny Qwen2.5-VL hidden size (16).
# Connector heads 1 and axes (4, 14, 14) are what model.dit.params.detect_params infers for these shapes.
TINY_CONFIG = {
    "dit": {"in_channels": 64, "out_channels": 64, "vec_in_dim": 768, "context_in_dim": 32,
            "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
            "axes_dim": [4, 14, 14], "theta": 10000, "qkv_bias": True},
    "connector": {"in_channels": 16, "hidden_size": 32, "heads_num": 1, "depth": 1},
}
# FLUX autoencoder config (official inference.py load_models; ComfyUI comfy/sd.py VAE defaults, 16 latent channels).
FLUX_VAE_CONFIG = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3,
                   "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                   "dropout": 0.0}
# RMSNorm scales (DiT QK-norm), LayerNorm / GroupNorm weights (connector, VAE).
NORM_SCALE_SUFFIXES = (".scale", "norm.weight", "norm1.weight", "norm2.weight", "norm_out.weight")
COMFY_DIT_PREFIX = "model.diffusion_model."
SEED = 0

V10_FILE = "step1x-edit-i1258.safetensors"
V11_FILE = "step1x-edit-v1p1-official.safetensors"
FP8_FILE = "step1x-edit-i1258-FP8.safetensors"
PREFIXED_FILE = "step1x-edit-v1p1-prefixed.safetensors"
VAE_FILE = "ae.safetensors"
TEXT_ENCODER_DIR = "Qwen2.5-VL-7B-Instruct"
TEXT_ENCODER_FILE = "qwen_2.5_vl_7b.safetensors"   # Comfy-Org/Qwen-Image_ComfyUI split_files/text_encoders
# Hugging Face Qwen2.5-VL key prefixes (transformers ≥ 4.52 layout) → ComfyUI's (comfy/text_encoders/llama.py
# Qwen25_7BVLI: model.* and visual.*, the layout of transformers 4.49 and of ComfyUI's file). lm_head is
# tied to the embedding and not in ComfyUI's file.
COMFY_TEXT_ENCODER_PREFIXES = {"model.language_model.": "model.", "model.visual.": "visual."}
DROPPED_TEXT_ENCODER_KEYS = ("lm_head.weight",)
LORA_FILE = "step1x-edit-lora.safetensors"
LORA_RANK = 4
# Modules the tiny LoRA patches, as official module paths (kohya names replace "." by "_").
LORA_MODULES = ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_mlp.0", "single_blocks.0.linear1", "img_in")


def _randomize(state_dict: dict, generator) -> dict:
    """Fan-in scaled normal weights, small biases, unit norm scales: finite, non-trivial activations."""
    import torch

    out = {}
    for key, tensor in state_dict.items():
        if tensor.ndim >= 2:
            fan_in = math.prod(tensor.shape[1:])
            value = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in)
        elif key.endswith(NORM_SCALE_SUFFIXES):
            value = torch.ones(tensor.shape)
        else:
            value = 0.02 * torch.randn(tensor.shape, generator=generator)
        out[key] = value.contiguous()
    return out


def make_dit(version: str, generator) -> dict:
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from model.dit.transformer import Step1XEdit
    from model.dit.params import params_from_config

    model = Step1XEdit(params_from_config(TINY_CONFIG, version), device="meta")
    shapes = {key: torch.empty(value.shape) for key, value in model.state_dict().items()}
    return _randomize(shapes, generator)


def make_flux_vae(comfyui_dir: Path, generator) -> dict:
    import torch

    sys.path.insert(0, str(comfyui_dir))
    from comfy.cli_args import args
    args.cpu = True   # importing comfy.* with a CUDA torch build needs this on a machine without GPU
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    state_dict = {}
    for prefix, cls in (("encoder.", Encoder), ("decoder.", Decoder)):
        with torch.device("meta"):
            module = cls(**FLUX_VAE_CONFIG)
        state_dict.update({prefix + k: torch.empty(v.shape) for k, v in module.state_dict().items()})
    return {k: v.to(torch.bfloat16) for k, v in _randomize(state_dict, generator).items()}


def make_lora(dit: dict, generator) -> dict:
    """kohya layout: ``lora_unet_<path>.lora_down.weight [r, in]``, ``.lora_up.weight [out, r]``, ``.alpha``."""
    import torch

    lora = {}
    for module in LORA_MODULES:
        out_features, in_features = dit[f"{module}.weight"].shape
        name = "lora_unet_" + module.replace(".", "_")
        lora[f"{name}.lora_down.weight"] = torch.randn((LORA_RANK, in_features), generator=generator) / in_features
        lora[f"{name}.lora_up.weight"] = torch.randn((out_features, LORA_RANK), generator=generator) / LORA_RANK
        lora[f"{name}.alpha"] = torch.tensor(float(LORA_RANK))
    return lora


def to_fp8(state_dict: dict) -> dict:
    import torch

    return {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v.to(torch.bfloat16) for k, v in state_dict.items()}


def comfy_text_encoder(hf_state: dict) -> dict:
    """A Hugging Face Qwen2.5-VL state dict in the key layout and dtype (bf16) of ComfyUI's qwen_2.5_vl_7b file."""
    import torch

    out = {}
    for key, tensor in hf_state.items():
        if key in DROPPED_TEXT_ENCODER_KEYS:
            continue
        for hf_prefix, comfy_prefix in COMFY_TEXT_ENCODER_PREFIXES.items():
            if key.startswith(hf_prefix):
                key = comfy_prefix + key[len(hf_prefix):]
                break
        out[key] = tensor.to(torch.bfloat16).contiguous()
    return out


def write_all(out_dir: Path, comfyui_dir: Path, tiny_vlm: Path) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(SEED)
    metadata = {"config": json.dumps(TINY_CONFIG), "note": "tiny random weights for tests, not a real model"}
    dit_dir = out_dir / "diffusion_models"
    dit_dir.mkdir(parents=True, exist_ok=True)
    v10 = make_dit("v1.0", generator)
    v11 = make_dit("v1.1", generator)
    save_file(v10, str(dit_dir / V10_FILE), metadata)
    save_file(v11, str(dit_dir / V11_FILE), metadata)
    save_file(to_fp8(v10), str(dit_dir / FP8_FILE), metadata)
    save_file({COMFY_DIT_PREFIX + k: v for k, v in v11.items()}, str(dit_dir / PREFIXED_FILE), metadata)

    lora_dir = out_dir / "loras"
    lora_dir.mkdir(parents=True, exist_ok=True)
    save_file(make_lora(v11, generator), str(lora_dir / LORA_FILE))

    vae_dir = out_dir / "vae"
    vae_dir.mkdir(parents=True, exist_ok=True)
    save_file(make_flux_vae(comfyui_dir, generator), str(vae_dir / VAE_FILE))

    text_dir = out_dir / "text_encoders" / TEXT_ENCODER_DIR
    if text_dir.exists():
        shutil.rmtree(text_dir)
    shutil.copytree(tiny_vlm, text_dir)
    text_dir.chmod(0o755)   # the golden copy is read-only; keep ours removable
    for path in text_dir.iterdir():
        path.chmod(0o644)
    from safetensors.torch import load_file
    from tiny_clip_loader import TINY_CONFIG_KEY   # this script's own folder is on sys.path

    save_file(comfy_text_encoder(load_file(str(tiny_vlm / "model.safetensors"))),
              str(out_dir / "text_encoders" / TEXT_ENCODER_FILE),
              {TINY_CONFIG_KEY: (tiny_vlm / "config.json").read_text(), "note": metadata["note"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to fill with a models/ layout")
    parser.add_argument("--comfyui", type=Path, default=DEFAULT_COMFYUI, help="ComfyUI source folder")
    parser.add_argument("--tiny-vlm", type=Path, default=DEFAULT_TINY_VLM,
                        help="tiny Qwen2.5-VL Hugging Face folder (golden fixtures)")
    args = parser.parse_args(argv)
    if not (args.tiny_vlm / "config.json").is_file():
        parser.error(f"no tiny Qwen2.5-VL folder at {args.tiny_vlm}; pass --tiny-vlm")
    write_all(args.out_dir, args.comfyui, args.tiny_vlm)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
