"""Step1X LoRA: an official kohya-format Step1X-Edit LoRA as ComfyUI weight patches.

Nothing is merged here and no weight is copied: the node clones the ModelPatcher and adds one
``LoRAAdapter`` patch per module (``comfy.lora.load_lora`` with the pack's own key map, which adds the
official loader's family checks and alpha rule; core's LoraLoaderModelOnly finds the same kohya names on
the native model through ``comfy.lora.model_lora_keys_unet``, without them). ComfyUI applies the patches when it loads the
model and puts the backed-up weights back when the model is loaded without them, so LoRAs stack
(each node adds its own patches) and removing the node restores the weights exactly.

ComfyUI's LoRA maths against the official ``LoRAInfModule.merge_to``
(``W ← cast_back(W₃₂ + m·(up@down)·alpha/rank)``):
``ModelPatcher.patch_weight_to_device`` copies W to float32, adds ``(m·alpha/rank)·(up₃₂@down₃₂)``
and casts back (round to nearest for bf16/fp16) — the same formula, factors multiplied in another
order, so results can differ by float32 rounding only. Differences: ComfyUI reads ``alpha = 0`` as
scale 0 where the official loader uses alpha = rank (we pass the effective alpha, so both agree);
fp8 weights are dequantised, patched and requantised with stochastic rounding, with the layer's
existing scale on ComfyUI's scaled-fp8 layers (values beyond that scale's range clamp) or a new absmax
scale on its per-layer (``comfy_quant``) layers (nodes/runtime/comfy_compat.py); under --lowvram the patch is applied
per forward in the compute dtype (bf16) instead of float32.
"""
from __future__ import annotations

import logging
import math

import comfy.lora
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..model.weights.lora import ALPHA, DOWN, UP, LoraError, ParsedLora, linear_weight_shapes, parse_kohya_lora
from .runtime.common import CATEGORY
from .runtime.native_model import is_step1x_model

logger = logging.getLogger(__name__)

LORA_FOLDER = "loras"
# Strength range of the widget: the official merge uses 1.0 (``inference.py``); ±4 leaves room to
# exaggerate or invert an effect, like ComfyUI's own LoRA loaders allow.
STRENGTH_DEFAULT = 1.0
STRENGTH_LIMIT = 4.0
STRENGTH_STEP = 0.01
# Where the DiT's parameters sit in the native model's state dict (comfy/model_base.py BaseModel.diffusion_model).
DIFFUSION_MODEL_PREFIX = "diffusion_model."


def comfy_patches(parsed: ParsedLora) -> dict:
    """Model weight key (``diffusion_model.`` + official key, nodes/runtime/native_model.py) → ComfyUI weight patch (a
    ``LoRAAdapter``) for every module of the LoRA.

    The tensors are re-keyed by official module path with the effective alpha (official
    ``LoRAModule``: alpha 0 means alpha = rank), and ``comfy.lora.load_lora`` builds the adapters.
    """
    state: dict[str, torch.Tensor] = {}
    key_map: dict[str, str] = {}
    for weight_key, lora in parsed.modules.items():
        module = weight_key.removesuffix(".weight")
        state[f"{module}.{UP}"] = lora.up
        state[f"{module}.{DOWN}"] = lora.down
        state[f"{module}.{ALPHA}"] = torch.tensor(lora.effective_alpha, dtype=torch.float32)
        key_map[module] = DIFFUSION_MODEL_PREFIX + weight_key
    return comfy.lora.load_lora(state, key_map, log_missing=False)


def apply_step1x_lora(model: comfy.model_patcher.ModelPatcher, lora_state: dict[str, torch.Tensor],
                      strength: float, lora_name: str) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` carrying the LoRA's patches at ``strength``; raises :class:`LoraError`."""
    parsed = parse_kohya_lora(lora_state, linear_weight_shapes(model.model.diffusion_model))
    summary = parsed.ignored_summary()
    if summary is not None:
        logger.warning("%s: skipped %s", lora_name, summary)
    patches = comfy_patches(parsed)
    patched = model.clone()
    applied = set(patched.add_patches(patches, strength))
    if applied != set(patches):
        missing = sorted(set(patches) - applied)
        raise LoraError(f"{lora_name}: ComfyUI did not accept patches for {len(missing)} weight(s), e.g. "
                        f"{', '.join(missing[:3])}; the model's state dict does not have these keys.")
    logger.info("%s: %d Step1X-Edit modules patched at strength %g", lora_name, len(applied), strength)
    return patched


def _missing_lora(name: str) -> str:
    return f"{name} is not in models/{LORA_FOLDER}: put the LoRA there and press R in ComfyUI to refresh the list."


class Step1XLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XLoraLoader",
            display_name="Step1X LoRA",
            category=CATEGORY,
            description="Applies a Step1X-Edit LoRA (official kohya format, 'lora_unet_…' keys) from models/loras "
                        "to the DiT, the way the official inference merges it. Chain several to stack LoRAs.",
            inputs=[
                io.Model.Input("model", tooltip="The Step1X-Edit DiT from Load Step1X Model (or another Step1X LoRA)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list(LORA_FOLDER),
                               tooltip="A LoRA trained for Step1X-Edit with the official scripts (kohya format). "
                                       "FLUX.1, SDXL, text-encoder and diffusers/PEFT LoRAs are refused."),
                io.Float.Input("strength", default=STRENGTH_DEFAULT, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT,
                               step=STRENGTH_STEP,
                               tooltip="Multiplier m in W + m·(up@down)·alpha/rank. 1.0 = the official merge, "
                                       "0 = no change, negative values invert the effect."),
            ],
            outputs=[io.Model.Output(tooltip="The same DiT with the LoRA patched in when it is loaded; the "
                                             "input MODEL is left unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, strength: float, lora_name: str) -> bool | str:
        # ComfyUI's range check lets NaN through (every comparison with NaN is false).
        if not math.isfinite(strength):
            return f"strength must be a finite number, got {strength}; 1.0 is the official merge."
        # Naming lora_name replaces ComfyUI's generic "Value not in list" (newer ComfyUI checks V3 combos too).
        if folder_paths.get_full_path(LORA_FOLDER, lora_name) is None:
            return _missing_lora(lora_name)
        return True

    @classmethod
    def execute(cls, model, lora_name: str, strength: float) -> io.NodeOutput:
        if not is_step1x_model(model):
            raise ValueError("this MODEL is not a Step1X-Edit model: connect 'Load Step1X Model' (or another "
                             "Step1X LoRA) to the model input. For other models use ComfyUI's LoraLoaderModelOnly.")
        if strength == 0:
            return io.NodeOutput(model)
        path = folder_paths.get_full_path(LORA_FOLDER, lora_name)
        if path is None:
            raise FileNotFoundError(_missing_lora(lora_name))
        lora_state = comfy.utils.load_torch_file(path, safe_load=True)
        try:
            return io.NodeOutput(apply_step1x_lora(model, lora_state, strength, lora_name))
        except LoraError as error:
            raise ValueError(f"{lora_name}: {error}") from None
