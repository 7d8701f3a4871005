#!/usr/bin/env python3
"""The main job: start a real ComfyUI with this pack, queue the bundled edit workflow, save the result.

    scripts/run_edit.sh [--models DIR] [--image PHOTO] [--instruction TEXT] [--out edited.png]

With --models, the official files are taken from DIR (see README "Model files"); without it, tiny
random weights in the official layouts stand in (the result is noise, but every stage runs: file
formats, loaders, encoder, sampler, decode, resize back). The server uses the GPU when PyTorch sees
one, else the CPU; its base folder is <work>/main-job (log: server.log there).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from comfy_server import PACK_DIR, ComfyServer, link_tiny_weights, prepare_base_dir
from queue_edit import DEFAULT_WORKFLOW, ComfyError, edit

WORK = Path(os.environ.get("STEP1X_WORK", PACK_DIR / ".work"))
DEFAULT_PHOTO = PACK_DIR / "workflows" / "input" / "chelsea_the_cat.png"
DEFAULT_INSTRUCTION = "Make it a snowy winter scene, with snowflakes falling on the cat"
# Official file names (Hugging Face stepfun-ai/Step1X-Edit, Comfy-Org/Qwen-Image_ComfyUI,
# Qwen/Qwen2.5-VL-7B-Instruct) → where the shipped workflows expect them under models/.
TEXT_ENCODER_FILE = "text_encoders/qwen_2.5_vl_7b.safetensors"   # Load CLIP (step1x_edit.json)
TEXT_ENCODER_FOLDER = "text_encoders/Qwen2.5-VL-7B-Instruct"      # VLM Encode hf_folder (step1x_edit_hf_folder.json)
OFFICIAL_FILES = {
    "step1x-edit-v1p1-official.safetensors": "diffusion_models/step1x-edit-v1p1-official.safetensors",
    "vae.safetensors": "vae/ae.safetensors",
    "ae.safetensors": "vae/ae.safetensors",
    "qwen_2.5_vl_7b.safetensors": TEXT_ENCODER_FILE,
    "Qwen2.5-VL-7B-Instruct": TEXT_ENCODER_FOLDER,
}
REQUIRED_TARGETS = sorted(set(OFFICIAL_FILES.values()) - {TEXT_ENCODER_FILE, TEXT_ENCODER_FOLDER})
HF_FOLDER_WORKFLOW = PACK_DIR / "workflows" / "api" / "step1x_edit_hf_folder.json"
RUN_TIMEOUT_S = 6 * 3600


def link_official_models(models_source: Path, models_dir: Path) -> None:
    """Link the official files found in models_source into models_dir under the workflow's names."""
    for name, target in OFFICIAL_FILES.items():
        source = models_source / name
        link = models_dir / target
        if source.exists() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source.resolve(), target_is_directory=source.is_dir())
    missing = [[t] for t in REQUIRED_TARGETS if not (models_dir / t).exists()]
    if not any((models_dir / t).exists() for t in (TEXT_ENCODER_FILE, TEXT_ENCODER_FOLDER)):
        missing.append([TEXT_ENCODER_FILE, TEXT_ENCODER_FOLDER])
    if missing:
        wanted = ", ".join(" or ".join(name for name, target in OFFICIAL_FILES.items() if target in targets)
                           for targets in missing)
        raise SystemExit(f"error: {models_source} lacks {wanted} (see README, 'Model files')")


def server_args() -> tuple[str, ...]:
    import torch

    return () if torch.cuda.is_available() else ("--cpu",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="folder with the official files; default: tiny random weights")
    parser.add_argument("--image", type=Path, default=DEFAULT_PHOTO, help="photo to edit")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="edit instruction")
    parser.add_argument("--seed", type=int, default=42, help="sampler seed")
    parser.add_argument("--out", type=Path, default=PACK_DIR / "out" / "edited.png", help="where to write the result")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="API-format workflow to queue")
    args = parser.parse_args(argv)

    comfyui_dir = WORK / "ComfyUI"
    base = WORK / "main-job"
    shutil.rmtree(base / "models", ignore_errors=True)
    prepare_base_dir(base)
    if args.models:
        link_official_models(args.models, base / "models")
        if args.workflow == DEFAULT_WORKFLOW and not (base / "models" / TEXT_ENCODER_FILE).exists():
            args.workflow = HF_FOLDER_WORKFLOW   # only the Hugging Face folder of the encoder is there
    else:
        print("no --models folder: using tiny random weights (the edit is noise; every stage still runs)")
        link_tiny_weights(WORK, comfyui_dir, base)
    with ComfyServer(comfyui_dir, base, extra_args=server_args()) as server:
        print(f"ComfyUI with the Step1X-Edit pack at {server.url} (log: {server.log_path})")
        try:
            out = edit(server.address, args.image, args.instruction, args.seed, args.out, args.workflow, RUN_TIMEOUT_S)
        except ComfyError as error:
            print(f"error: {error}\n(server log: {server.log_path})", file=sys.stderr)
            return 1
    print(f"edited image: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
