#!/usr/bin/env python3
"""Write the shipped API-format workflows (workflows/api/<name>.json) from one description.

    python scripts/make_workflows.py

The UI-format twins (example_workflows/<name>.json, what ComfyUI's template browser offers) are made
from these by the frontend itself (scripts/export_ui_workflows.sh), so both forms describe the same graph;
tests/integration/test_browser.py checks that. The API files live in a sub-folder because ComfyUI also
offers every top-level workflows/*.json as a template.
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
# ComfyUI's Qwen-Image text encoder file (Comfy-Org/Qwen-Image_ComfyUI), loaded by core Load CLIP.
TEXT_ENCODER_FILE = "qwen_2.5_vl_7b.safetensors"
CLIP_TYPE = "qwen_image"
NO_HF_FOLDER = "none"   # VLM Encode's hf_folder when the clip input is used (nodes/node_vlm_encode.py)
CLIP_NODE = "10"
LORA_FILE = "step1x-edit-lora.safetensors"
# Node ids of the step-cache and core-sampler variants (the edit's own nodes are 1-10).
CACHE_NODE, SETUP_NODE, NOISE_NODE, GUIDER_NODE, SAMPLER_SELECT_NODE, SCHEDULER_NODE = "11", "12", "13", "14", "15", "16"
# Core EasyCache / LazyCache defaults (comfy_extras/nodes_easycache.py) and the pack's TeaCache default
# (nodes/node_teacache.py DEFAULT_THRESHOLD).
CORE_CACHE_DEFAULTS = {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95, "verbose": False}
TEACACHE_THRESHOLD = 0.25
# Official v1.1 text-to-image negative prompt (inference.py main), stray space included.
T2I_NEGATIVE = ("worst quality, wrong limbs, unreasonable limbs, normal quality, low quality, low res, blurry, text, "
                "watermark, logo, banner, extra digits, cropped, jpeg artifacts, signature, username, error, "
                "sketch ,duplicate, ugly, monochrome, horror, geometry, mutation, disgusting")
T2I_PROMPT = "A red fox sitting in a snowy forest at sunrise, photograph"
T2I_SIDE = 1024  # official text-to-image size (inference.py main default)


def node(class_type: str, title: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def encoder_inputs(prompt: dict, hf_folder: bool) -> dict:
    """VLM Encode's encoder: core Load CLIP (qwen_image) into its clip input, or the Hugging Face folder."""
    if hf_folder:
        return {"hf_folder": TEXT_ENCODER_FOLDER}
    prompt[CLIP_NODE] = node("CLIPLoader", "Load CLIP (Qwen2.5-VL)", clip_name=TEXT_ENCODER_FILE, type=CLIP_TYPE,
                             device="default")
    return {"clip": [CLIP_NODE, 0], "hf_folder": NO_HF_FOLDER}


def edit_workflow(*, weight_dtype: str = "default", size_level: int = 512, tiled_decode: bool = False,
                  prefix: str = "step1x_edit", hf_folder: bool = False, lora: bool = False) -> dict:
    prompt = {
        "1": node("LoadImage", "Load Image", image=PHOTO),
        "2": node("VAELoader", "Load VAE", vae_name=VAE),
        "3": node("Step1XModelLoader", "Load Step1X Model", ckpt_name=V11_CHECKPOINT, weight_dtype=weight_dtype,
                  attention="auto", torch_compile=False),
        "4": node("Step1XVLMEncode", "VLM Encode Instruction + Image", image=["1", 0], instruction=INSTRUCTION,
                  negative_instruction="", size_level=size_level, release=RELEASE, resize_filter="lanczos"),
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
    prompt["4"]["inputs"].update(encoder_inputs(prompt, hf_folder))
    if lora:
        prompt["9"] = node("Step1XLoraLoader", "Step1X LoRA", model=["3", 0], lora_name=LORA_FILE, strength=1.0)
        prompt["6"]["inputs"]["model"] = ["9", 0]
    return dict(sorted(prompt.items()))


def text_to_image_workflow() -> dict:
    prompt = {
        "1": node("EmptyImage", "Black reference (official t2i)", width=T2I_SIDE, height=T2I_SIDE, batch_size=1,
                  color=0),
        "2": node("VAELoader", "Load VAE", vae_name=VAE),
        "3": node("Step1XModelLoader", "Load Step1X Model (v1.1)", ckpt_name=V11_CHECKPOINT, weight_dtype="default",
                  attention="auto", torch_compile=False),
        "4": node("Step1XVLMEncode", "VLM Encode Instruction + Image", image=["1", 0], instruction=T2I_PROMPT,
                  negative_instruction=T2I_NEGATIVE, size_level=T2I_SIDE, release=RELEASE, resize_filter="lanczos"),
        "5": node("EmptySD3LatentImage", "Empty Latent (16 channels)", width=T2I_SIDE, height=T2I_SIDE,
                  batch_size=1),
        "6": node("Step1XSampler", "Step1X Sampler", model=["3", 0], positive=["4", 0], negative=["4", 1],
                  empty_latent=["5", 0], seed=42, steps=28, cfg=6.0, cfg_renorm="model default",
                  shift_schedule=True),
        "7": node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["2", 0]),
        "8": node("SaveImage", "Save Image", images=["7", 0], filename_prefix="step1x_text_to_image"),
    }
    prompt["4"]["inputs"].update(encoder_inputs(prompt, hf_folder=False))
    return dict(sorted(prompt.items()))


def cached_edit_workflow(class_type: str, title: str, prefix: str, **cache_inputs) -> dict:
    """The edit with a step cache between the loader and Step1X Sampler."""
    prompt = edit_workflow(prefix=prefix)
    prompt[CACHE_NODE] = node(class_type, title, model=["3", 0], **cache_inputs)
    prompt["6"]["inputs"]["model"] = [CACHE_NODE, 0]
    return dict(sorted(prompt.items()))


def core_sampler_workflow(prefix: str, custom: bool) -> dict:
    """The edit sampled by core KSampler, or by SamplerCustomAdvanced (with core's CFGGuider, Euler and
    BasicScheduler), after Step1X Setup for Core Samplers; the official seed, steps and cfg."""
    prompt = edit_workflow(prefix=prefix)
    official = prompt.pop("6")["inputs"]
    prompt[SETUP_NODE] = node("Step1XCoreSamplerSetup", "Step1X Setup for Core Samplers", model=["3", 0],
                              positive=["4", 0], negative=["4", 1], ref_latent=["5", 0],
                              cfg_renorm=official["cfg_renorm"], shift_schedule=official["shift_schedule"])
    model, positive, negative = [SETUP_NODE, 0], [SETUP_NODE, 1], [SETUP_NODE, 2]
    if custom:
        prompt[NOISE_NODE] = node("RandomNoise", "Random Noise", noise_seed=official["seed"])
        prompt[GUIDER_NODE] = node("CFGGuider", "CFG Guider", model=model, positive=positive, negative=negative,
                                   cfg=official["cfg"])
        prompt[SAMPLER_SELECT_NODE] = node("KSamplerSelect", "KSampler Select", sampler_name="euler")
        prompt[SCHEDULER_NODE] = node("BasicScheduler", "Basic Scheduler", model=model, scheduler="simple",
                                      steps=official["steps"], denoise=1.0)
        prompt["6"] = node("SamplerCustomAdvanced", "SamplerCustomAdvanced", noise=[NOISE_NODE, 0],
                           guider=[GUIDER_NODE, 0], sampler=[SAMPLER_SELECT_NODE, 0], sigmas=[SCHEDULER_NODE, 0],
                           latent_image=["5", 0])
    else:
        prompt["6"] = node("KSampler", "KSampler", model=model, seed=official["seed"], steps=official["steps"],
                           cfg=official["cfg"], sampler_name="euler", scheduler="simple", positive=positive,
                           negative=negative, latent_image=["5", 0], denoise=1.0)
    return dict(sorted(prompt.items()))


WORKFLOWS = {
    "step1x_edit": edit_workflow(),
    "step1x_edit_fp8": edit_workflow(weight_dtype="fp8_e4m3fn", size_level=1024, prefix="step1x_edit_fp8"),
    "step1x_edit_lowvram": edit_workflow(weight_dtype="fp8_e4m3fn", tiled_decode=True, prefix="step1x_edit_lowvram"),
    "step1x_text_to_image": text_to_image_workflow(),
    "step1x_edit_lora": edit_workflow(prefix="step1x_edit_lora", lora=True),
    "step1x_edit_hf_folder": edit_workflow(prefix="step1x_edit_hf_folder", hf_folder=True),
    "step1x_edit_ksampler": core_sampler_workflow("step1x_edit_ksampler", custom=False),
    "step1x_edit_custom_sampler": core_sampler_workflow("step1x_edit_custom_sampler", custom=True),
    "step1x_edit_easycache": cached_edit_workflow("EasyCache", "EasyCache", "step1x_edit_easycache",
                                                  **CORE_CACHE_DEFAULTS),
    "step1x_edit_lazycache": cached_edit_workflow("LazyCache", "LazyCache", "step1x_edit_lazycache",
                                                  **CORE_CACHE_DEFAULTS),
    "step1x_edit_teacache": cached_edit_workflow("Step1XTeaCache", "Step1X TeaCache", "step1x_edit_teacache",
                                                 rel_l1_thresh=TEACACHE_THRESHOLD),
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
