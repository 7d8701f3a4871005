"""Step1X-Edit v1.2's own Qwen2.5-VL between nodes: the ``STEP1X_VLM`` handle (Load Step1X-Edit v1.2 →
v1.2 VLM Encode, Think, Reasoning Edit), loaded on first use as a ComfyUI-managed model
(nodes/encoders/managed_hf_model.py), and :class:`SeededVLM`, the thinker's seeded generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
from comfy_api.latest import io

from .managed_hf_model import managed_hf_runner
from .vlm_v12_hf import HFQwen25VLV12, V12TextEncoderFolders

V12_VLM_SLOT = "v1.2 VLM"  # managed_hf_runner slot: one v1.2 VLM in memory at a time
Step1XVLM = io.Custom("STEP1X_VLM")


@dataclass(frozen=True)
class V12VLM:
    """The ``STEP1X_VLM`` value: where v1.2's own Qwen2.5-VL lives; loaded when a node first needs it."""

    folders: V12TextEncoderFolders

    def runner(self) -> HFQwen25VLV12:
        """The loaded model on ComfyUI's text-encoder device (cached; one v1.2 VLM in memory at a time)."""
        return managed_hf_runner(V12_VLM_SLOT, str(self.folders.model),
                                 lambda dtype, device: HFQwen25VLV12.from_folders(self.folders, dtype=dtype,
                                                                                  device=device))


class SeededVLM:
    """The thinker's ``generate(request)``: v1.2's VLM with seeds ``seed, seed+1, …`` per call, so one seed
    gives one result; loaded again before each call (the DiT may have pushed it off the GPU)."""

    SEED_SPACE = 2**64

    def __init__(self, vlm: V12VLM, seed: int):
        self.vlm = vlm
        self.seed = seed
        self.calls = 0

    def __call__(self, request) -> str:
        mm.throw_exception_if_processing_interrupted()
        answer = self.vlm.runner().generate(request, (self.seed + self.calls) % self.SEED_SPACE)
        self.calls += 1
        return answer
