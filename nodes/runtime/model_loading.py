"""Loading a Step1X-Edit DiT file into ComfyUI: the MODEL (a ModelPatcher over the native Step1X model of
nodes/runtime/native_model.py, which holds model.dit.transformer.Step1XEdit as its diffusion model), for
Load Step1X Model and the v1.2 loader.

The network is built with ComfyUI's operations (comfy.ops.pick_operations: manual_cast when the
weight dtype is not the compute dtype; for fp8 weights the fp8 layers of this ComfyUI, chosen in
nodes/runtime/comfy_compat.py), so ComfyUI can load it whole, stream it layer by layer under --lowvram /
--novram or dynamic VRAM, and offload it between prompts. The patcher is the class core loaders use
(dynamic VRAM where it runs), and records how to rebuild the model without it, as core loaders do.
"""
from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch

from ...model.weights.loader import build_step1x_dit, inspect_checkpoint
from .cfg_guider import Step1XGuidance
from .comfy_compat import fp8_operations, model_patcher_class
from .dit_runtime import DiTRunSettings
from .native_model import Step1XDiffusion, Step1XModel, Step1XModelConfig

MODEL_FOLDER = "diffusion_models"
WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn,
                 "fp8_e4m3fn_fast": torch.float8_e4m3fn}
# ComfyUI's name (core UNETLoader) for fp8 storage plus fp8 matrix multiplication on GPUs that have it:
# activations are cast to fp8 unscaled (clamped to ±448). H100, 1024², compiled: 12.8 s per edit
# instead of 16.2 s (benchmarks/README.md).
FAST_FP8 = "fp8_e4m3fn_fast"
COMPUTE_DTYPES = Step1XModelConfig.supported_inference_dtypes
FP8 = torch.float8_e4m3fn
# Bytes per element of safetensors dtype names: a parameter count from the file size, for
# ComfyUI's dtype heuristics (mm.unet_dtype).
SAFETENSORS_DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def _weight_and_compute_dtypes(choice: str, file_is_fp8: bool, n_params: int, load_device):
    weight_dtype = WEIGHT_DTYPES[choice]
    if weight_dtype is None:
        weight_dtype = FP8 if file_is_fp8 else mm.unet_dtype(load_device, n_params, COMPUTE_DTYPES)
    manual_cast = mm.unet_manual_cast(weight_dtype, load_device, COMPUTE_DTYPES)
    return weight_dtype, manual_cast if manual_cast is not None else weight_dtype


def load_step1x_model(path: str, weight_dtype_choice: str, attention: str, torch_compile: bool = False,
                      disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """The DiT at ``path`` in the patcher core loaders use. ``disable_dynamic`` (or ``torch_compile``, as
    core's TorchCompileModel does) gives a plain ModelPatcher where dynamic VRAM runs."""
    info = inspect_checkpoint(path)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    n_params = info.size_bytes // SAFETENSORS_DTYPE_BYTES.get(info.stored_dtype, 2)
    weight_dtype, compute_dtype = _weight_and_compute_dtypes(weight_dtype_choice, info.is_fp8, n_params, load_device)
    fp8 = weight_dtype == FP8
    if fp8:
        fast = weight_dtype_choice == FAST_FP8 and mm.supports_fp8_compute(load_device)
        operations = fp8_operations(fast, compute_dtype)
    else:
        operations = comfy.ops.pick_operations(weight_dtype, compute_dtype, load_device=load_device)
    net = build_step1x_dit(info, dtype=compute_dtype if fp8 else weight_dtype, device=offload_device,
                           operations=operations, fp8_storage=fp8, model_class=Step1XDiffusion)
    # comfy.ops' Linear is nn.Linear's forward unless it casts or patches (checked per call, model/dit/layers.py).
    net.allow_fused_linears(comfy.ops.disable_weight_init.Linear)
    net.compute_dtype = compute_dtype
    net.run_settings = DiTRunSettings(os.path.basename(path), attention, torch_compile)
    patcher_class = model_patcher_class(dynamic=not (disable_dynamic or torch_compile))
    patcher = patcher_class(Step1XModel(net, weight_dtype, compute_dtype, device=offload_device),
                            load_device=load_device, offload_device=offload_device)
    # Core samplers guide with the release's CFG rule (nodes/runtime/cfg_guider.py); Step1X Sampler sets its own.
    patcher.set_model_sampler_cfg_function(Step1XGuidance(net.params.switches.renorm_threshold))
    # How core rebuilds a model without dynamic VRAM (ModelPatcher.clone(disable_dynamic=True)).
    patcher.cached_patcher_init = (load_step1x_model, (path, weight_dtype_choice, attention, torch_compile))
    return patcher


def missing_file_message(ckpt_name: str) -> str:
    return (f"{ckpt_name} is not in models/{MODEL_FOLDER}: put the Step1X-Edit DiT there and press R in ComfyUI "
            "to refresh the list.")
