#!/usr/bin/env python3
"""Write the shipped Step1X-Edit v1.2 API-format workflows (workflows/v12/<name>.json).

    python scripts/make_workflows_v12.py

The UI-format twins go to example_workflows/ with the v1.0/v1.1 ones, made from these by the frontend
(scripts/export_ui_workflows.sh). The API files live in their own folder because their graph (v1.2 loader,
encoder and sampler, the reasoning node) is not the v1.1 one the other workflow tests edit.
"""
from __future__ import annotations

from pathlib import Path

from make_workflows import PHOTO, VAE, node, write_workflows

API_DIR = Path(__file__).resolve().parents[1] / "workflows" / "v12"
PIPELINE = "Step1X-Edit-v1p2"   # the release's folder, in models/diffusion_models
INSTRUCTION = 'Put a small wooden sign saying "HELLO" next to the cat'
SIZE_LEVEL = 1024               # the v1.2 pipeline's default
RENORM = "every step (v1.2 release)"
V12_RESIZE_FILTER = "bilinear-antialias"  # the v1.2 release's VAE-input resize (model/dit/params.py VERSIONS)


def loader() -> dict:
    return node("Step1XV12Loader", "Load Step1X-Edit v1.2", pipeline=PIPELINE, weight_dtype="default",
                attention="auto", text_encoder="from pipeline", torch_compile=False)


def edit_workflow() -> dict:
    return {
        "1": node("LoadImage", "Load Image", image=PHOTO),
        "2": node("VAELoader", "Load VAE", vae_name=VAE),
        "3": loader(),
        "4": node("Step1XV12Encode", "Step1X v1.2 VLM Encode", vlm=["3", 1], image=["1", 0], instruction=INSTRUCTION,
                  negative_instruction="", size_level=SIZE_LEVEL),
        "5": node("Step1XPackRefLatent", "Pack Ref Latent", image=["1", 0], vae=["2", 0], size_level=SIZE_LEVEL,
                  resize_filter=V12_RESIZE_FILTER),
        "6": node("Step1XSampler", "Step1X Sampler", model=["3", 0], positive=["4", 0], negative=["4", 1],
                  ref_latent=["5", 0], seed=42, steps=28, cfg=6.0, cfg_renorm="model default", shift_schedule=True),
        "7": node("Step1XUnpackDecode", "Unpack/Decode", samples=["6", 0], vae=["2", 0], output_size="original"),
        "8": node("SaveImage", "Save Image", images=["7", 0], filename_prefix="step1x_edit_v12"),
    }


def reasoning_workflow() -> dict:
    return {
        "1": node("LoadImage", "Load Image", image=PHOTO),
        "2": node("VAELoader", "Load VAE", vae_name=VAE),
        "3": loader(),
        "4": node("Step1XReasoningEdit", "Step1X Reasoning Edit", model=["3", 0], vlm=["3", 1], vae=["2", 0],
                  image=["1", 0], instruction=INSTRUCTION, negative_instruction="", size_level=SIZE_LEVEL, seed=42,
                  steps=28, cfg=6.0, cfg_renorm=RENORM, max_tries=3, thinking=True, reflection=True,
                  vlm_attempts=20),
        "5": node("SaveImage", "Save chosen image", images=["4", 0], filename_prefix="step1x_reasoning_v12"),
        "6": node("PreviewImage", "Every try", images=["4", 1]),
        "7": node("PreviewAny", "Reasoning", source=["4", 2]),
    }


WORKFLOWS = {"step1x_edit_v12": edit_workflow(), "step1x_reasoning_edit_v12": reasoning_workflow()}


def main() -> None:
    write_workflows(API_DIR, WORKFLOWS)


if __name__ == "__main__":
    main()
