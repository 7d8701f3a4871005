"""A Hugging Face (transformers) Qwen2.5-VL as a ComfyUI-managed model: model_management moves it onto the
text-encoder device when a node needs it and offloads it when the DiT needs the memory.

Both transformers routes use it: VLM Encode's Hugging Face folder (nodes/node_vlm_encode.py, runner
nodes/encoders/vlm_hf.py) and v1.2's own Qwen2.5-VL (nodes/encoders/v12_vlm.py, runner
nodes/encoders/vlm_v12_hf.py). Each has its own slot holding one model at a time, so the two do not evict
each other.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import comfy.model_management as mm
import comfy.model_patcher
import torch

from .vlm_hf import HFQwen25VL

Runner = TypeVar("Runner", bound=HFQwen25VL)

# slot → ((folder, dtype), the patcher over that folder's model)
_patchers: dict[str, tuple[tuple[str, torch.dtype], comfy.model_patcher.ModelPatcher]] = {}


class HFModelHolder(torch.nn.Module):
    """What ModelPatcher manages: it sets ``.device`` on its model, which a transformers model (read-only
    ``device`` property) does not allow. The weights are the sub-module ``qwen25_vl``; ``runner`` is what
    callers get back."""

    def __init__(self, runner: HFQwen25VL) -> None:
        super().__init__()
        self.qwen25_vl = runner.model
        self.runner = runner
        self.device = None


def managed_hf_runner(slot: str, folder: str, build: Callable[[torch.dtype, torch.device], Runner]) -> Runner:
    """The runner of ``folder`` kept in ``slot``, loaded onto ComfyUI's text-encoder device.

    On first use (or when ``slot`` held another folder or dtype, which is dropped first) the runner is built by
    ``build(dtype, offload_device)``: bf16 where the text-encoder device supports it, float32 otherwise, weights
    on the text-encoder offload device.
    """
    load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
    dtype = torch.bfloat16 if mm.should_use_bf16(load_device) else torch.float32
    key = (folder, dtype)
    if _patchers.get(slot, (None, None))[0] != key:
        _patchers.pop(slot, None)
        patcher = comfy.model_patcher.ModelPatcher(HFModelHolder(build(dtype, offload_device)),
                                                   load_device=load_device, offload_device=offload_device)
        _patchers[slot] = (key, patcher)
    patcher = _patchers[slot][1]
    mm.load_models_gpu([patcher], force_full_load=True)
    return patcher.model.runner
