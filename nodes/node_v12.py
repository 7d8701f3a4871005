"""Step1X-Edit v1.2 nodes: load the pipeline folder, encode with its own VLM, sample per CFG branch.

Plain v1.2 edit: Load Step1X-Edit v1.2 → Step1X v1.2 VLM Encode + Pack Ref Latent → Step1X Sampler →
Unpack/Decode. The sampler recognises v1.2 conditioning (no padding, own text ids and quoted-text
embeddings: the fork's ``encode_prompt``) and runs cond and uncond as separate DiT calls (model/dit/branch_sampling.py).
"""
from __future__ import annotations


import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..model.dit.attention import BACKENDS
from ..model.vlm.image import image_tensor_to_pil
from ..model.vlm.v12_encode import encode_v12, vlm_source_image
from ..model.weights.checkpoint import CheckpointError
from .encoders.v12_vlm import V12VLM, Step1XVLM
from .encoders.vlm_v12_hf import locate_v12_text_encoder
from .runtime.common import CATEGORY, MAX_SIZE_LEVEL, MIN_SIZE_LEVEL, SIZE_LEVEL_STEP
from .runtime.model_folders import HF_FOLDER_ROOT, find_model_folder, list_dit_folders, list_hf_folders
from .runtime.model_loading import MODEL_FOLDER, WEIGHT_DTYPES, load_step1x_model
from .runtime.v12_edit import V12_SIZE_LEVEL, to_conditioning

FROM_PIPELINE = "from pipeline"


def _missing_pipeline(name: str) -> str:
    return (f"no folder '{name}' under models/{MODEL_FOLDER}: put the Step1X-Edit-v1p2 download "
            "(transformer/, text_encoder/, processor/) there and press R to refresh")


def _missing_text_encoder(name: str) -> str:
    return f"no folder '{name}' under models/{HF_FOLDER_ROOT}: put it there and press R to refresh"


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
                io.Combo.Input("pipeline", options=list_dit_folders(folder_paths.get_folder_paths(MODEL_FOLDER)),
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
            outputs=[io.Model.Output(tooltip="The Step1X-Edit DiT (for Step1X Sampler / Reasoning Edit)."),
                     Step1XVLM.Output(display_name="vlm",
                                      tooltip="v1.2's Qwen2.5-VL, for v1.2 VLM Encode, Think and Reasoning Edit.")],
        )

    @classmethod
    def validate_inputs(cls, pipeline: str, text_encoder: str) -> bool | str:
        # Naming the folders here replaces ComfyUI's generic "Value not in list" (newer ComfyUI checks V3
        # combos too) by the folder and the fix.
        if find_model_folder(MODEL_FOLDER, pipeline) is None:
            return _missing_pipeline(pipeline)
        if text_encoder != FROM_PIPELINE and find_model_folder(HF_FOLDER_ROOT, text_encoder) is None:
            return _missing_text_encoder(text_encoder)
        return True

    @classmethod
    def execute(cls, pipeline: str, weight_dtype: str, attention: str, text_encoder: str,
                torch_compile: bool = False) -> io.NodeOutput:
        folder = find_model_folder(MODEL_FOLDER, pipeline)
        if folder is None:
            raise FileNotFoundError(_missing_pipeline(pipeline))
        encoder_folder = folder if text_encoder == FROM_PIPELINE else find_model_folder(HF_FOLDER_ROOT, text_encoder)
        if encoder_folder is None:
            raise FileNotFoundError(_missing_text_encoder(text_encoder))
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
            outputs=[io.Conditioning.Output("positive", tooltip="Instruction encoding (v1.2) for Step1X Sampler."),
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
