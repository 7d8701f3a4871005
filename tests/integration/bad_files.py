"""Model files a user might pick by mistake, for the bad-input table (test_bad_inputs.py).

Written next to the good tiny weights in the test server's models/ folder:
  diffusion_models/flux-dev-like.safetensors       a FLUX-style DiT: double blocks, no Step1X connector
  diffusion_models/step1x-edit-truncated.safetensors  the tiny v1.0 file cut short (interrupted download)
  diffusion_models/step1x-edit-gapped.safetensors  the tiny v1.0 file with its last single block renumbered one up
  diffusion_models/step1x-edit-nan.safetensors     the tiny v1.0 file with NaN in the final layer's weight
  vae_approx/taesd_{encoder,decoder}.safetensors   TAESD (SD1.x, 4 latent channels): listed by VAELoader as "taesd"
  text_encoders/Qwen2.5-7B-text-only/              a Qwen2 text-only model folder (no vision tower)
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load, save_file

WRONG_FAMILY_DIT = "flux-dev-like.safetensors"
TRUNCATED_DIT = "step1x-edit-truncated.safetensors"
GAPPED_DIT = "step1x-edit-gapped.safetensors"
NAN_DIT = "step1x-edit-nan.safetensors"
NAN_WEIGHT = "final_layer.linear.weight"
TEXT_ONLY_ENCODER = "Qwen2.5-7B-text-only"
TRUNCATE_FRACTION = 0.6
# FLUX.1 key names without Step1X's connector (official flux `model.py`): a real-world mix-up.
FLUX_LIKE_SHAPES = {
    "img_in.weight": (64, 64), "img_in.bias": (64,),
    "txt_in.weight": (64, 4096), "txt_in.bias": (64,),
    "guidance_in.in_layer.weight": (64, 256), "guidance_in.in_layer.bias": (64,),
    "double_blocks.0.img_attn.qkv.weight": (192, 64), "double_blocks.0.img_attn.qkv.bias": (192,),
    "double_blocks.0.img_attn.norm.query_norm.scale": (32,),
    "single_blocks.0.linear1.weight": (448, 64), "final_layer.linear.weight": (64, 64),
}


def write_bad_files(models_dir: Path) -> None:
    dit_dir = models_dir / "diffusion_models"
    save_file({k: torch.zeros(shape) for k, shape in FLUX_LIKE_SHAPES.items()}, str(dit_dir / WRONG_FAMILY_DIT))
    good = (dit_dir / "step1x-edit-i1258.safetensors").read_bytes()
    (dit_dir / TRUNCATED_DIT).write_bytes(good[: int(len(good) * TRUNCATE_FRACTION)])
    state = load(good)
    save_file(_renumber_last_single_block(state), str(dit_dir / GAPPED_DIT))
    save_file({**state, NAN_WEIGHT: torch.full_like(state[NAN_WEIGHT], float("nan"))}, str(dit_dir / NAN_DIT))
    _write_taesd(models_dir / "vae_approx")
    _write_text_only_encoder(models_dir / "text_encoders")


def _renumber_last_single_block(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The last single block moved one number up, leaving a hole in the numbering where it was."""
    last = max(int(key.split(".")[1]) for key in state if key.startswith("single_blocks."))
    old, new = f"single_blocks.{last}.", f"single_blocks.{last + 1}."
    return {(new + key[len(old):] if key.startswith(old) else key): value for key, value in state.items()}


def _write_taesd(folder: Path) -> None:
    from comfy.taesd.taesd import Decoder, Encoder

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for name, build in (("taesd_encoder", Encoder), ("taesd_decoder", Decoder)):
        state = {k: 0.05 * torch.randn(v.shape, generator=generator) for k, v in build().state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))


def _write_text_only_encoder(folder: Path) -> None:
    source = folder / "Qwen2.5-VL-7B-Instruct"
    target = folder / TEXT_ONLY_ENCODER
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "preprocessor_config.json",
                                                                   "chat_template.json"))
    config = json.loads((source / "config.json").read_text())
    config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    config.pop("vision_config")
    (target / "config.json").write_text(json.dumps(config, indent=2))


def import_comfy(comfyui_dir: Path) -> None:
    """Make ComfyUI's modules importable here; --cpu first, or a CUDA torch build looks for a driver.

    Appended, not prepended: ComfyUI's own top-level ``tests``, ``nodes`` and ``utils`` must not shadow
    the repository's (multiprocessing children re-import test modules through sys.path).
    """
    if str(comfyui_dir) not in sys.path:
        sys.path.append(str(comfyui_dir))
    from comfy.cli_args import args
    args.cpu = True
