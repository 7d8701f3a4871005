#!/usr/bin/env python3
"""Write the shipped API-format workflows (workflows/api/<name>.json) from one description.

    python scripts/make_workflows.py

The UI-format twins (workflows/ui/<name>.json, copied to example_workflows/ for ComfyUI's template
browser) are made from these by the frontend itself (scripts/export_ui_workflows.js), so both forms
describe the same graph; tests/integration/test_browser.py checks that. The two forms live in
sub-folders because ComfyUI also offers every top-level workflows/*.json as a template.
"""
from __future__ import annotations

import json
from pathlib import Path

API_DIR = Path(__file__).resolve().parents[1] / "workflows" / "api"
PHOTO = "chelsea_the_cat.png"
INSTRUCTION = "Make it a snowy winter scene, with snowflakes falling on the cat"
V11_CHECKPOINT = "step1x-edit-v1p1-official.safetensors"
RELEASE = "v1.1"   # VLM Encode's release switch follows the DiT file
VAE = "ae.safetensors"
TEXT_ENCODER_FOLDER = "Qwen2.5-VL-7B-Instruct"
# Official v1.1 text-to-image negative prompt (inference.py main), stray space included.
T2I_NEGATIVE = ("worst quality, wrong limbs, unreasonable limbs, normal quality, low quality, low res, blurry, text, "
                "watermark, logo, banner, extra digits, cropped, jpeg artifacts, signature, username, error, "
                "sketch ,duplicate, ugly, monochrome, horror, geometry, mutation, disgusting")
T2I_PROMPT = "A red fox sitting in a snowy forest at sunrise, photograph"
T2I_SIDE = 1024  # official text-to-image size (inference.py main default)


def node(class_type: str, title: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def edit_workflow(*, weight_dtype: str = "default", size_level: int = 512, tiled_decode: bool = False,
                  prefix: str = "step1x_edit") -> dict:
    prompt = {
        "1": node("LoadImage", "Load Image", image=PHOTO),
        "2": node("VAELoader", "Load VAE", vae_name=VAE),
        "3": node("Step1XModelLoader", "Load Step1X Model", ckpt_name=V11_CHECKPOINT, weight_dtype=weight_dtype,
                  attention="auto", torch_compile=False),
        "4": node("Step1XVLMEncode", "VLM Encode Instruction + Image", image=["1", 0], instruction=INSTRUCTION,
                  negative_instruction="", size_level=size_level, hf_folder=TEXT_ENCODER_FOLDER,
                  release=RELEASE, resize_filter="lanczos"),
        "5": node("Step1XPackRefLatent", "Pack Ref Latent", image=["1", 0], vae=["2", 0], size_level=size_level,
                  resize_filter="lanczos"),
        "6": node("Step1XSampler", "Step1X Sampler", model=["3", 0], positive=["4", 0], negative=["4", 1],
                  ref_latent=["5", 0], seed=42, steps=28, cfg=6.0, cfg_renorm="model default", shift_schedule=True),
        "8": node("SaveImage", "Save Image", filename_prefix=prefix),
    }
    if tiled_decode:   # core node on the raw latent: working size, decoded tile by tile
        prompt["7"] = node("VAEDecodeTiled", "VAE Decode (Tiled)", samples=["6", 0], vae=["2", 0], tile_size=512,
                           overlap=64, temporal_size=64, temporal_overlap=8)
    else:
        prompt["7"] = node("Step1XUnpackDecode", "Unpack/Decode", samples=["6", 0], vae=["2", 0],
                           output_size="original")
    prompt["8"]["inputs"]["images"] = ["7", 0]
    return dict(sorted(prompt.items()))


def text_to_image_workflow() -> dict:
    return {
        "1": node("EmptyImage", "Black reference (official t2i)", width=T2I_SIDE, height=T2I_SIDE, batch_size=1,
                  color=0),
        "2": node("VAELoader", "Load VAE", vae_name=VAE),
        "3": node("Step1XModelLoader", "Load Step1X Model (v1.1)", ckpt_name=V11_CHECKPOINT, weight_dtype="default",
                  attention="auto", torch_compile=False),
        "4": node("Step1XVLMEncode", "VLM Encode Instruction + Image", image=["1", 0], instruction=T2I_PROMPT,
                  negative_instruction=T2I_NEGATIVE, size_level=T2I_SIDE, hf_folder=TEXT_ENCODER_FOLDER,
                  release=RELEASE, resize_filter="lanczos"),
        "5": node("EmptySD3LatentImage", "Empty Latent (16 channels)", width=T2I_SIDE, height=T2I_SIDE,
                  batch_size=1),
        "6": node("Step1XSampler", "Step1X Sampler", model=["3", 0], positive=["4", 0], negative=["4", 1],
                  empty_latent=["5", 0], seed=42, steps=28, cfg=6.0, cfg_renorm="model default",
                  shift_schedule=True),
        "7": node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["2", 0]),
        "8": node("SaveImage", "Save Image", images=["7", 0], filename_prefix="step1x_t2i"),
    }


WORKFLOWS = {
    "step1x_edit": edit_workflow(),
    "step1x_edit_fp8": edit_workflow(weight_dtype="fp8_e4m3fn", size_level=1024, prefix="step1x_edit_fp8"),
    "step1x_edit_lowvram": edit_workflow(weight_dtype="fp8_e4m3fn", tiled_decode=True, prefix="step1x_edit_lowvram"),
    "step1x_t2i_v1p1": text_to_image_workflow(),
}


def write_workflows(api_dir: Path, workflows: dict[str, dict]) -> None:
    api_dir.mkdir(parents=True, exist_ok=True)
    for name, prompt in workflows.items():
        (api_dir / f"{name}.json").write_text(json.dumps(prompt, indent=2) + "\n")
        print(api_dir / f"{name}.json")


def main() -> None:
    write_workflows(API_DIR, WORKFLOWS)


if __name__ == "__main__":
    main()
