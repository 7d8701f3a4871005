"""What the pack needs from ComfyUI, probed once at import: capabilities, never version numbers.

ComfyUI's internals move between releases (0.3.75 and 0.33 both run this pack). Every difference the
pack adapts to is decided here, from what the running ComfyUI has or does:

* fp8 weights with one scale per tensor. Either ComfyUI's mixed-precision layers read a per-layer
  ``comfy_quant`` entry from the state dict (``comfy/ops.py`` ``mixed_precision_ops``, the path
  core uses for scaled-fp8 files when ``comfy/utils.py`` ``convert_old_quants`` has rewritten them),
  or it has the older ``comfy.ops.scaled_fp8_ops`` (``scale_weight`` per layer). The pack's loader
  (``model/weights/loader.py``) hands in fp8 weights with ``scale_weight`` entries; :func:`fp8_operations`
  returns layers that take them on either kind.
* dynamic VRAM: where ``comfy.model_patcher`` has ``ModelPatcherDynamic``, core loaders build
  ``comfy.model_patcher.CoreModelPatcher`` (``main.py`` points it at the dynamic class when
  comfy-aimdo runs) and record how to rebuild the model without it (``cached_patcher_init``);
  :func:`model_patcher_class` gives the class core would use.
* the Qwen2.5-VL internals the ``clip`` route of VLM Encode drives (:data:`QWEN_VL_MISSING`).

What the DiT nodes cannot run without raises :class:`ImportError` here, naming what is missing; a
missing Qwen2.5-VL internal only disables the ``clip`` route (the Hugging Face folder route works).
"""
from __future__ import annotations

import inspect

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch
from comfy import sd1_clip
from comfy.text_encoders import llama, qwen_vl

from ...model.weights.checkpoint import (COMFY_FP8_FORMAT, COMFY_QUANT_SCALE_SUFFIX, QUANT_FORMAT_SUFFIX,
                                         comfy_quant_entry)
from ...model.weights.loader import FP8_SCALE_KEY as PACK_SCALE_KEY

FP8 = torch.float8_e4m3fn
# Per-layer entries of ComfyUI's mixed-precision layers (model/weights/checkpoint.py names them with the dot).
COMFY_QUANT_SCALE_KEY = COMFY_QUANT_SCALE_SUFFIX.removeprefix(".")
COMFY_QUANT_KEY = QUANT_FORMAT_SUFFIX.removeprefix(".")
# What core passes as quant_config once it finds per-layer comfy_quant entries
# (comfy/utils.py detect_layer_quantization).
MIXED_OPS_QUANT_CONFIG = {"mixed_ops": True}
# Capability names, for messages and tests.
PER_LAYER_QUANT = "comfy.ops.mixed_precision_ops reading per-layer comfy_quant entries"
SCALED_FP8_OPS = "comfy.ops.scaled_fp8_ops"


def _reads_per_layer_quant() -> bool:
    """Whether ``mixed_precision_ops`` turns a layer with a ``comfy_quant`` entry into a quantized weight.

    Probed on one 16×16 layer on the CPU: 0.3.75-era layers take the layout from a per-model dict
    instead and would load the fp8 weight as a plain tensor.
    """
    side = 16
    ops = comfy.ops.mixed_precision_ops(MIXED_OPS_QUANT_CONFIG, torch.float32, full_precision_mm=True)
    layer = ops.Linear(side, side, bias=False, device="cpu")
    state = {"weight": torch.zeros(side, side, dtype=FP8), COMFY_QUANT_SCALE_KEY: torch.ones(()),
             COMFY_QUANT_KEY: comfy_quant_entry(COMFY_FP8_FORMAT)}
    try:
        layer.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError, KeyError):
        return False
    return getattr(layer, "layout_type", None) is not None


def _fp8_capability() -> str | None:
    if hasattr(comfy.ops, "mixed_precision_ops") and _reads_per_layer_quant():
        return PER_LAYER_QUANT
    if hasattr(comfy.ops, "scaled_fp8_ops"):
        return SCALED_FP8_OPS
    return None


def _qwen_vl_missing() -> list[str]:
    """The ComfyUI internals the ``clip`` route of VLM Encode uses (nodes/encoders/vlm_comfy.py) that are missing."""
    checks = {
        "llama.Qwen25_7BVLI": hasattr(llama, "Qwen25_7BVLI"),
        "Llama2_.forward(position_ids=, embeds=)": hasattr(llama, "Llama2_") and {
            "position_ids", "embeds", "attention_mask", "dtype"} <= set(inspect.signature(llama.Llama2_.forward).parameters),
        "SDClipModel.process_tokens(tokens, device)": hasattr(sd1_clip.SDClipModel, "process_tokens") and list(
            inspect.signature(sd1_clip.SDClipModel.process_tokens).parameters) == ["self", "tokens", "device"],
        "Qwen2VLVisionTransformer.get_window_index": hasattr(
            getattr(qwen_vl, "Qwen2VLVisionTransformer", None), "get_window_index"),
    }
    return [name for name, ok in checks.items() if not ok]


def _required_missing() -> list[str]:
    checks = {
        "comfy.ops.pick_operations": hasattr(comfy.ops, "pick_operations"),
        "comfy.ops.disable_weight_init.Linear": hasattr(getattr(comfy.ops, "disable_weight_init", None), "Linear"),
        "comfy.model_patcher.ModelPatcher": hasattr(comfy.model_patcher, "ModelPatcher"),
        "comfy.model_management.load_models_gpu": hasattr(mm, "load_models_gpu"),
        "comfy.model_management.supports_fp8_compute": hasattr(mm, "supports_fp8_compute"),
        "comfy.model_management.unet_manual_cast": hasattr(mm, "unet_manual_cast"),
    }
    return [name for name, ok in checks.items() if not ok]


FP8_LAYERS = _fp8_capability()
QWEN_VL_MISSING = _qwen_vl_missing()

_missing = _required_missing() + ([] if FP8_LAYERS else [f"fp8 layers ({PER_LAYER_QUANT}, or {SCALED_FP8_OPS})"])
if _missing:
    raise ImportError("the Step1X-Edit nodes cannot run on this ComfyUI: it lacks " + "; ".join(_missing)
                      + ". Update ComfyUI, or use a release of the Step1X-Edit pack made for this ComfyUI.")

# The state-dict name of a loaded fp8 layer's scale (tests, benchmarks).
FP8_SCALE_KEY = COMFY_QUANT_SCALE_KEY if FP8_LAYERS == PER_LAYER_QUANT else PACK_SCALE_KEY


def _per_layer_fp8_ops(full_precision_mm: bool, compute_dtype: torch.dtype):
    base = comfy.ops.mixed_precision_ops(MIXED_OPS_QUANT_CONFIG, compute_dtype, full_precision_mm=full_precision_mm)

    class Fp8Ops(base):
        class Linear(base.Linear):
            """Takes the pack's ``scale_weight`` entries: an fp8 weight becomes a ``float8_e4m3fn`` layer."""

            def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
                scale = state_dict.pop(prefix + PACK_SCALE_KEY, None)
                weight = state_dict.get(prefix + "weight")
                if scale is not None and weight is not None and weight.dtype == FP8:
                    state_dict[prefix + COMFY_QUANT_SCALE_KEY] = scale
                    state_dict[prefix + COMFY_QUANT_KEY] = comfy_quant_entry(COMFY_FP8_FORMAT)
                super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    return Fp8Ops


def fp8_operations(fp8_matmul: bool, compute_dtype: torch.dtype):
    """``operations`` for a DiT whose block Linears hold fp8 weights with a ``scale_weight`` each.

    ``fp8_matmul``: multiply in fp8 (activations cast to fp8) where the device supports it; otherwise
    each weight is dequantised to ``compute_dtype`` for the product.
    """
    if FP8_LAYERS == PER_LAYER_QUANT:
        return _per_layer_fp8_ops(not fp8_matmul, compute_dtype)
    return comfy.ops.scaled_fp8_ops(fp8_matrix_mult=fp8_matmul, override_dtype=FP8)


def model_patcher_class(dynamic: bool = True) -> type:
    """The patcher class core loaders use now (``CoreModelPatcher``: dynamic VRAM where comfy-aimdo runs),
    or plain ``ModelPatcher`` when ``dynamic`` is False (torch.compile, as core's TorchCompileModel does)."""
    if dynamic and hasattr(comfy.model_patcher, "CoreModelPatcher"):
        return comfy.model_patcher.CoreModelPatcher
    return comfy.model_patcher.ModelPatcher
