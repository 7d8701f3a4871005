"""VLM Encode Instruction + Image: Step1X-Edit's Qwen2.5-VL conditioning
(official ``modules/conditioner.py`` ``Qwen25VL_7b_Embedder``).

Two encoder routes, same result: ComfyUI's own Qwen2.5-VL-7B (a CLIP from 'Load CLIP', type
qwen_image; nodes/encoders/vlm_comfy.py) or a Hugging Face folder in models/text_encoders run through
transformers (nodes/encoders/vlm_hf.py, nodes/encoders/managed_hf_model.py). Both are ComfyUI-managed
models, offloaded by model_management when the DiT needs the memory.
"""
from __future__ import annotations

from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..model.dit.image_io import INPUT_RESAMPLE
from ..model.vlm.image import image_tensor_to_pil, llm_grid_hw, resize_for_vlm
from ..model.vlm.prompt import FLASH_PADDING_BY_RELEASE, MAX_LENGTH, Qwen25VLRunner, encode_prompt
from .encoders.managed_hf_model import managed_hf_runner
from .encoders.vlm_hf import HFQwen25VL, check_hf_folder
from .runtime.common import (CATEGORY, CONDITIONING_MARKER, DEFAULT_RELEASE, DEFAULT_RESIZE_FILTER, DEFAULT_SIZE_LEVEL,
                             MAX_SIZE_LEVEL, MIN_SIZE_LEVEL, SIZE_LEVEL_STEP)
from .runtime.model_folders import HF_CONFIG_FILE, HF_FOLDER_ROOT, find_model_folder, list_hf_folders

NO_HF_FOLDER = "none"
HF_ENCODER_SLOT = "VLM Encode HF folder"  # managed_hf_runner slot: one HF encoder in memory at a time


def _missing_hf_folder(name: str) -> str:
    return (f"no Hugging Face folder '{name}' with a config.json under models/{HF_FOLDER_ROOT}: "
            "put the Qwen2.5-VL-7B-Instruct download there and press R to refresh")


def _hf_folder_path(name: str) -> Path:
    folder = find_model_folder(HF_FOLDER_ROOT, name, HF_CONFIG_FILE)
    if folder is None:
        raise FileNotFoundError(_missing_hf_folder(name))
    return folder


def _hf_runner(name: str) -> HFQwen25VL:
    """The HF model of folder ``name`` as a ComfyUI-managed model (cached between runs), loaded."""
    path = _hf_folder_path(name)
    check_hf_folder(path)
    return managed_hf_runner(HF_ENCODER_SLOT, str(path),
                             lambda dtype, device: HFQwen25VL.from_folder(path, dtype=dtype, device=device))


def pick_runner(clip, hf_folder: str) -> Qwen25VLRunner:
    """The encoder route the inputs ask for; exactly one of ``clip`` and ``hf_folder`` must be given."""
    use_hf = hf_folder not in (None, "", NO_HF_FOLDER)
    if clip is not None and use_hf:
        raise ValueError("VLM Encode got both a CLIP input and hf_folder: disconnect the CLIP input or set "
                         f"hf_folder to '{NO_HF_FOLDER}'")
    if clip is None and not use_hf:
        raise ValueError("VLM Encode needs Qwen2.5-VL-7B-Instruct: connect 'Load CLIP' (type qwen_image) to "
                         f"the clip input, or pick a Hugging Face folder of models/{HF_FOLDER_ROOT} in hf_folder")
    if use_hf:
        return _hf_runner(hf_folder)
    from .encoders.vlm_comfy import ComfyQwen25VL

    runner = ComfyQwen25VL(clip)
    runner.load()
    return runner


def encode_image_batch(runner: Qwen25VLRunner, images: torch.Tensor, instruction: str,
                       negative_instruction: str, size_level: int, resize_filter: str = DEFAULT_RESIZE_FILTER,
                       release: str = DEFAULT_RELEASE) -> tuple[list, list]:
    """Positive and negative conditioning for every frame of ``images`` [B, H, W, C].

    Each frame is resized as the Step1X pipeline does (size level and ``resize_filter`` as in Pack
    Ref Latent) and encoded with the instruction, then with the negative instruction and the same
    frame.
    Returns two ComfyUI CONDITIONING lists ``[[emb [B, 640, D] float32, {"attention_mask": [B, 640]
    int64, "step1x_edit": release}]]``.
    """
    if release not in FLASH_PADDING_BY_RELEASE:
        raise ValueError(f"unknown Step1X-Edit release '{release}': use one of "
                         f"{list(FLASH_PADDING_BY_RELEASE)}")
    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE [B, H, W, C], got shape {tuple(images.shape)}")
    progress = comfy.utils.ProgressBar(2 * images.shape[0])
    rows: dict[str, list] = {"positive": [], "negative": []}
    for frame in images:
        vlm_image = resize_for_vlm(image_tensor_to_pil(frame), size_level, INPUT_RESAMPLE[resize_filter])
        grid = llm_grid_hw(vlm_image)
        for role, text in (("positive", instruction), ("negative", negative_instruction)):
            mm.throw_exception_if_processing_interrupted()
            rows[role].append(encode_prompt(runner, text, vlm_image, grid,
                                            flash_padding=FLASH_PADDING_BY_RELEASE[release]))
            progress.update(1)
    device = mm.intermediate_device()
    return tuple(
        [[torch.stack([r.emb for r in encoded]).to(device),
          {"attention_mask": torch.stack([r.mask for r in encoded]).to(device),
           CONDITIONING_MARKER: release}]]
        for encoded in (rows["positive"], rows["negative"]))


class Step1XVLMEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XVLMEncode",
            display_name="VLM Encode Instruction + Image",
            category=CATEGORY,
            description="Step1X-Edit conditioning: Qwen2.5-VL-7B-Instruct reads a fixed instruction prefix, the "
                        "reference image and your instruction; its last hidden state (prefix dropped, 640 tokens) "
                        "conditions the DiT. Give the encoder either as a CLIP or as a Hugging Face folder.",
            inputs=[
                io.Image.Input("image",
                               tooltip="Reference image to edit. Resized like the Step1X pipeline (area ≈ "
                                       "size_level², sides multiple of 16), then to 256–324 Qwen2.5-VL image "
                                       "tokens (one per 28×28 pixels). Batches encode each image; alpha is "
                                       "dropped."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="Edit instruction, e.g. 'Add a red hat to the cat'. Text in quotes is "
                                        "read character by character (Step1X's text-rendering trick). With a "
                                        "324-token image about 308 tokens fit; longer text is cut (a warning is "
                                        "logged)."),
                io.String.Input("negative_instruction", multiline=True, default="",
                                tooltip="Negative prompt, encoded with the same image. The official pipeline "
                                        "uses an empty string."),
                io.Int.Input("size_level", default=DEFAULT_SIZE_LEVEL, min=MIN_SIZE_LEVEL, max=MAX_SIZE_LEVEL,
                             step=SIZE_LEVEL_STEP,
                             tooltip="Step1X size level: use the same value as Pack Ref Latent. The official "
                                     "default is 512 (also 768, 1024). The VLM always sees 200,704–254,016 "
                                     "pixels."),
                io.Combo.Input("resize_filter", options=list(INPUT_RESAMPLE), default=DEFAULT_RESIZE_FILTER,
                               tooltip="Filter of the Step1X resize, as in Pack Ref Latent (both nodes must "
                                       "see the same image): v1.0 code bicubic, v1.1 code lanczos. The two "
                                       "further resizes to 28-pixel multiples are bicubic in both."),
                io.Clip.Input("clip", optional=True,
                              tooltip="ComfyUI's Qwen2.5-VL-7B: 'Load CLIP' with type qwen_image and "
                                      "qwen_2.5_vl_7b (bf16 or fp8_scaled). Leave empty to use hf_folder."),
                io.Combo.Input("hf_folder", options=[NO_HF_FOLDER, *list_hf_folders()], default=NO_HF_FOLDER,
                               optional=True,
                               tooltip="Or: a Hugging Face Qwen2.5-VL-7B-Instruct folder in "
                                       f"models/{HF_FOLDER_ROOT} (config.json, safetensors, tokenizer), run "
                                       "through transformers (~16 GB in bf16). 'none' to use the clip input."),
                io.Combo.Input("release", options=list(FLASH_PADDING_BY_RELEASE), default=DEFAULT_RELEASE,
                               optional=True,
                               tooltip="Official encoder to match: v1.0 (flash-attention: a free-standing "
                                       "'!' is padding) or the v1.1 code (SDPA: it is attended). Nothing else "
                                       "differs; the value is also the conditioning's step1x_edit marker."),
            ],
            outputs=[
                io.Conditioning.Output("positive",
                                       tooltip=f"Instruction embedding [B, {MAX_LENGTH}, 3584] with its attention "
                                               "mask, for the Step1X sampler."),
                io.Conditioning.Output("negative", tooltip="Negative instruction embedding, same layout."),
            ],
        )

    @classmethod
    def validate_inputs(cls, hf_folder: str = NO_HF_FOLDER) -> bool | str:
        # Replaces ComfyUI's generic "Value not in list" (newer ComfyUI checks V3 combos too).
        if hf_folder != NO_HF_FOLDER and find_model_folder(HF_FOLDER_ROOT, hf_folder, HF_CONFIG_FILE) is None:
            return _missing_hf_folder(hf_folder)
        return True

    @classmethod
    def execute(cls, image: torch.Tensor, instruction: str, negative_instruction: str, size_level: int,
                resize_filter: str, clip=None, hf_folder: str = NO_HF_FOLDER,
                release: str = DEFAULT_RELEASE) -> io.NodeOutput:
        runner = pick_runner(clip, hf_folder)
        positive, negative = encode_image_batch(runner, image, instruction, negative_instruction, size_level,
                                                resize_filter, release)
        return io.NodeOutput(positive, negative)
