"""Step1X-Edit v1.2 nodes: load the pipeline folder, encode with its own VLM, sample per CFG branch.

Plain v1.2 edit: Load Step1X-Edit v1.2 → Step1X v1.2 VLM Encode + Pack Ref Latent → Step1X v1.2
Sampler → Unpack/Decode. v1.2 conditioning (no padding, own text ids and quoted-text embeddings,
V12.md §3) needs its own sampler: cond and uncond are separate DiT calls (model/branch_sampling.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..model.attention import BACKENDS
from ..model.checkpoint import CheckpointError
from ..model.sampling import make_noise
from ..model.vlm_image import image_tensor_to_pil
from ..model.vlm_v12_encode import encode_v12, vlm_source_image
from .common import CATEGORY, ORIGINAL_SIZE_KEY
from .node_loader import MODEL_FOLDER, WEIGHT_DTYPES, load_step1x_model
from .node_sampler import DEFAULT_CFG, DEFAULT_SEED, DEFAULT_STEPS, MAX_STEPS, Step1XSampler, check_latent
from .node_vlm_encode import HF_FOLDER_ROOT, MAX_SIZE_LEVEL, MIN_SIZE_LEVEL, SIZE_LEVEL_STEP, list_hf_folders
from .v12_runtime import (
    RENORM_CHOICES,
    V12VLM,
    branch_from_conditioning,
    check_v12_model,
    list_model_folders,
    renorm_threshold,
    sample_v12,
    to_conditioning,
)
from .vlm_v12_hf import locate_v12_text_encoder

V12_SIZE_LEVEL = 1024  # the v1.2 pipeline's default size_level (V12.md §4)
FROM_PIPELINE = "from pipeline"
Step1XVLM = io.Custom("STEP1X_VLM")


def _model_folder(name: str) -> Path:
    for root in folder_paths.get_folder_paths(MODEL_FOLDER):
        candidate = Path(root) / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no folder '{name}' under models/{MODEL_FOLDER}: put the Step1X-Edit-v1p2 download "
                            "(transformer/, text_encoder/, processor/) there and press R to refresh")


def _text_encoder_folder(name: str) -> Path:
    for root in folder_paths.get_folder_paths(HF_FOLDER_ROOT):
        candidate = Path(root) / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no folder '{name}' under models/{HF_FOLDER_ROOT}")


class Step1XV12Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XV12Loader",
            display_name="Load Step1X-Edit v1.2",
            category=CATEGORY,
            description="Loads a Step1X-Edit diffusers pipeline folder (v1.2, or v1.1-diffusers): the DiT from "
                        "transformer/ (sharded safetensors, version detected from the keys) and a handle on the "
                        "release's own Qwen2.5-VL (text_encoder/ + processor/), loaded when first used.",
            inputs=[
                io.Combo.Input("pipeline", options=list_model_folders(folder_paths.get_folder_paths(MODEL_FOLDER)),
                               tooltip=f"A folder in models/{MODEL_FOLDER} holding transformer/ (e.g. "
                                       "Step1X-Edit-v1p2: 25 GB bf16 DiT + 16.6 GB Qwen2.5-VL), or a transformer/ "
                                       "folder with its shard index."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="DiT weight storage: default = ComfyUI's choice (bf16 on recent GPUs); "
                                       "fp8_e4m3fn halves the DiT (≈12.5 GB instead of 25 GB)."),
                io.Combo.Input("attention", options=list(BACKENDS), default="auto",
                               tooltip="PyTorch attention kernels to try on CUDA (auto: cuDNN, flash, efficient, "
                                       "math). Ignored on CPU."),
                io.Combo.Input("text_encoder", options=[FROM_PIPELINE, *list_hf_folders()], default=FROM_PIPELINE,
                               tooltip="v1.2 reasons and encodes with its own Qwen2.5-VL: 'from pipeline' uses "
                                       "the folder's text_encoder/. A folder of models/text_encoders must be that "
                                       "text_encoder/ (a stock Qwen2.5-VL-7B-Instruct is refused)."),
                io.Boolean.Input("torch_compile", default=False, optional=True,
                                 tooltip="Compile the DiT's 19 + 38 blocks with torch.compile (needs Triton): about "
                                         "1.45× faster sampling on an H100 after a one-minute first compile; runs "
                                         "uncompiled, with a warning, if compiling fails."),
            ],
            outputs=[io.Model.Output(tooltip="The Step1X-Edit DiT (for Step1X v1.2 Sampler / Reasoning Edit)."),
                     Step1XVLM.Output(display_name="vlm",
                                      tooltip="v1.2's Qwen2.5-VL, for v1.2 VLM Encode, Think and Reasoning Edit.")],
        )

    @classmethod
    def execute(cls, pipeline: str, weight_dtype: str, attention: str, text_encoder: str,
                torch_compile: bool = False) -> io.NodeOutput:
        folder = _model_folder(pipeline)
        encoder_folder = folder if text_encoder == FROM_PIPELINE else _text_encoder_folder(text_encoder)
        vlm = V12VLM(locate_v12_text_encoder(encoder_folder))
        try:
            model = load_step1x_model(str(folder), weight_dtype, attention, torch_compile)
        except CheckpointError as error:
            raise ValueError(str(error)) from None
        return io.NodeOutput(model, vlm)


class Step1XV12Encode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XV12Encode",
            display_name="Step1X v1.2 VLM Encode",
            category=CATEGORY,
            description="v1.2 conditioning: the release's prompt (editing prefix, instruction, then the image), "
                        "quoted text tokenised per character and mapped straight into the DiT, no padding, "
                        "Qwen-derived text positions. Instruction and negative are encoded with the same image.",
            inputs=[
                Step1XVLM.Input("vlm", tooltip="From Load Step1X-Edit v1.2."),
                io.Image.Input("image", tooltip="The image to edit (batch of 1: v1.2 encodes one prompt per run)."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip='Edit instruction. Text in "…" or “…” is rendered: each character '
                                        "becomes its own token with a direct path into the DiT. Up to 2048 "
                                        "tokens are kept (the image's tokens come last)."),
                io.String.Input("negative_instruction", multiline=True, default="",
                                tooltip="Negative prompt; the release uses an empty string for editing."),
                io.Int.Input("size_level", default=V12_SIZE_LEVEL, min=MIN_SIZE_LEVEL, max=MAX_SIZE_LEVEL,
                             step=SIZE_LEVEL_STEP,
                             tooltip="Working size (area ≈ size_level², sides multiples of 16); the VLM sees the "
                                     "image at that size (then 256–400 vision tokens). v1.2 default 1024; use "
                                     "the same value in Pack Ref Latent."),
            ],
            outputs=[io.Conditioning.Output("positive", tooltip="Instruction encoding (v1.2) for Step1X v1.2 Sampler."),
                     io.Conditioning.Output("negative", tooltip="Negative encoding, same image.")],
        )

    @classmethod
    def execute(cls, vlm: V12VLM, image: torch.Tensor, instruction: str, negative_instruction: str,
                size_level: int) -> io.NodeOutput:
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"v1.2 encodes one image per run, got IMAGE {tuple(image.shape)}: pick one frame "
                             "(e.g. with 'ImageFromBatch').")
        runner = vlm.runner()
        vlm_image = vlm_source_image(image_tensor_to_pil(image[0]), size_level)
        progress = comfy.utils.ProgressBar(2)
        encodings = []
        for text in (instruction, negative_instruction):
            encodings.append(to_conditioning(encode_v12(runner, text, vlm_image)))
            progress.update(1)
        return io.NodeOutput(*encodings)


class Step1XV12Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XV12Sampler",
            display_name="Step1X v1.2 Sampler",
            category=CATEGORY,
            description="Edits the reference latent with v1.2 conditioning: shifted schedule, Euler steps, "
                        "norm-rescaled CFG, instruction and negative as separate DiT calls (their lengths differ).",
            inputs=[
                io.Model.Input("model", tooltip="The v1.2 DiT from Load Step1X-Edit v1.2."),
                io.Conditioning.Input("positive", tooltip="From Step1X v1.2 VLM Encode."),
                io.Conditioning.Input("negative", tooltip="From Step1X v1.2 VLM Encode."),
                io.Latent.Input("ref_latent", tooltip="From Pack Ref Latent (same size_level as the encoder)."),
                io.Int.Input("seed", default=DEFAULT_SEED, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed (CPU generator: same noise on any device)."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS, tooltip="Release: 28."),
                io.Float.Input("cfg", default=DEFAULT_CFG, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="true_cfg_scale; release: 6.0."),
                io.Combo.Input("cfg_renorm", options=list(RENORM_CHOICES), default=next(iter(RENORM_CHOICES)),
                               tooltip="release: guidance renormalised on every step (the v1.2 pipeline compares "
                                       "t·1000 with 0.93). official: only while t > 0.93, the v1.1 rule."),
            ],
            outputs=[io.Latent.Output(tooltip="The edited latent (raw FLUX latent, for Unpack/Decode).")],
        )

    @classmethod
    def validate_inputs(cls, cfg: float) -> bool | str:
        return True if math.isfinite(cfg) else f"cfg must be a finite number, got {cfg}; the release uses 6.0."

    @classmethod
    def execute(cls, model, positive, negative, ref_latent: dict, seed: int, steps: int, cfg: float,
                cfg_renorm: str) -> io.NodeOutput:
        check_v12_model(model)
        cond, uncond = branch_from_conditioning(positive, "positive"), branch_from_conditioning(negative, "negative")
        latent = ref_latent["samples"]
        check_latent(latent, "reference")
        batch, _, latent_h, latent_w = latent.shape
        callback = Step1XSampler._step_callback(model, steps, latent_h, latent_w)
        result = sample_v12(model, cond, uncond, latent, make_noise(seed, batch, latent_h, latent_w), steps, cfg,
                            renorm_threshold(model, cfg_renorm), callback)
        out = {"samples": result}
        if ORIGINAL_SIZE_KEY in ref_latent:
            out[ORIGINAL_SIZE_KEY] = ref_latent[ORIGINAL_SIZE_KEY]
        return io.NodeOutput(out)
