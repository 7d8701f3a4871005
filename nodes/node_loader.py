"""Load Step1X Model: the DiT file → ComfyUI MODEL (the loading itself: nodes/runtime/model_loading.py)."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..model.dit.attention import BACKENDS
from ..model.weights.checkpoint import CheckpointError
from .runtime.common import CATEGORY
from .runtime.model_loading import MODEL_FOLDER, WEIGHT_DTYPES, load_step1x_model, missing_file_message


class Step1XModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XModelLoader",
            display_name="Load Step1X Model",
            category=CATEGORY,
            description="Loads a Step1X-Edit DiT (v1.0, v1.1 or a v1.2 diffusers file; the release is detected from the "
                        "file) from models/diffusion_models.",
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list(MODEL_FOLDER),
                               tooltip="Official single file: step1x-edit-i1258.safetensors (v1.0, 24.9 GB bf16), "
                                       "step1x-edit-i1258-FP8.safetensors (12.4 GB) or "
                                       "step1x-edit-v1p1-official.safetensors (v1.1). Files with a "
                                       "'model.diffusion_model.' prefix load too."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the weights. default: fp8 files stay fp8, others use "
                                       "ComfyUI's choice for the device (bf16 on recent GPUs, fp32 on CPU). "
                                       "fp8_e4m3fn halves memory (12.4 GB instead of 24.9 GB) at a small quality cost; "
                                       "fp8_e4m3fn_fast also multiplies in fp8 on GPUs that support it (H100, "
                                       "RTX 40xx): 12.8 s instead of 16.2 s per 1024² edit with torch_compile."),
                io.Combo.Input("attention", options=list(BACKENDS), default="auto",
                               tooltip="PyTorch attention kernels to try on CUDA. auto: cuDNN, then flash, efficient, "
                                       "math. Ignored on CPU."),
                io.Boolean.Input("torch_compile", default=False, optional=True,
                                 tooltip="Compile each of the 19 + 38 blocks with torch.compile (needs Triton). H100, "
                                         "1024², 28 steps: 16.0 s instead of 23.7 s per edit in bf16, 12.8 s with "
                                         "fp8_e4m3fn_fast. The first run compiles for about a minute; if compiling "
                                         "fails the model runs uncompiled, with a warning in the log."),
            ],
            outputs=[io.Model.Output(tooltip="The Step1X-Edit DiT, for Step1X Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str) -> bool | str:
        # Naming ckpt_name here replaces ComfyUI's own "Value not in list" check of the combo (which
        # newer ComfyUI applies to V3 combos too) by this message with the folder and the fix.
        if folder_paths.get_full_path(MODEL_FOLDER, ckpt_name) is None:
            return missing_file_message(ckpt_name)
        return True

    @classmethod
    def execute(cls, ckpt_name: str, weight_dtype: str, attention: str, torch_compile: bool = False) -> io.NodeOutput:
        path = folder_paths.get_full_path(MODEL_FOLDER, ckpt_name)
        if path is None:
            raise FileNotFoundError(missing_file_message(ckpt_name))
        try:
            return io.NodeOutput(load_step1x_model(path, weight_dtype, attention, torch_compile))
        except CheckpointError as error:
            raise ValueError(str(error)) from None
