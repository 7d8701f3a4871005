"""Step1X Sampler: the official edit in one node, for every release.

Official noise (CPU-seeded, model/dit/sampling.py make_noise), the official schedule, Euler, CFG and its
renormalisation, computed through core's sampling machinery (nodes/runtime/cfg_guider.py sample_step1x: a CFGGuider
over the native model of nodes/runtime/native_model.py), so model patches and wrappers apply. v1.0 / v1.1
instruction and negative run as one CFG batch; v1.2's, of different lengths, as one DiT call each.
"""
from __future__ import annotations

import logging
import math

import torch
from comfy_api.latest import io

from ..model.dit.sampling import make_noise
from .runtime.cfg_guider import sample_step1x
from .runtime.common import (CATEGORY, CONDITIONING_MARKER, DEFAULT_CFG, DEFAULT_SEED, DEFAULT_STEPS, MAX_SEED,
                             MAX_STEPS, ORIGINAL_SIZE_KEY, OUTPUT_ROUNDING_KEY, RENORM_CHOICES, RENORM_MODEL_DEFAULT,
                             RENORM_TOOLTIP, renorm_threshold)
from .runtime.native_model import check_conditioning, not_step1x_message, sampling_latent

logger = logging.getLogger(__name__)

CFG_MIN, CFG_MAX = 0.0, 100.0


def single_conditioning(conditioning, role: str) -> tuple[torch.Tensor, dict]:
    """The one ``(embedding [B, L, D], options)`` entry of a Step1X CONDITIONING; refuses other model families
    and combined conditioning (the official edit has one instruction and one negative per image)."""
    if not conditioning or len(conditioning[0]) != 2 or CONDITIONING_MARKER not in conditioning[0][1]:
        raise ValueError(not_step1x_message(role))
    if len(conditioning) > 1:
        raise ValueError(f"the {role} conditioning holds {len(conditioning)} entries (combined or concatenated "
                         "conditioning); connect the VLM Encode output directly.")
    return conditioning[0]


def common_batch(**sizes: int) -> int:
    """The batch all inputs share; inputs of batch 1 are repeated to it."""
    batch = max(sizes.values())
    if any(size not in (1, batch) for size in sizes.values()):
        listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise ValueError(f"batch sizes do not match ({listed}). Give every input the same batch size, or batch 1 to "
                         "use it for all images (e.g. encode the instruction with the same image batch).")
    return batch


def warn_on_release_mismatch(conditioning, version: str) -> None:
    release = conditioning[0][1].get(CONDITIONING_MARKER)
    if release in ("v1.0", "v1.1") and version in ("v1.0", "v1.1") and release != version:
        logger.warning("the conditioning was encoded as Step1X-Edit %s but the model is %s: set VLM Encode's "
                       "'release' (and both resize filters) to match the model for the official result.",
                       release, version)


class Step1XSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XSampler",
            display_name="Step1X Sampler",
            category=CATEGORY,
            description="Edits the reference latent as the instruction says (official Step1X-Edit sampler: shifted "
                        "schedule, Euler steps, CFG). Without a reference latent it generates from text (v1.1).",
            inputs=[
                io.Model.Input("model", tooltip="From Load Step1X Model."),
                io.Conditioning.Input("positive", tooltip="Instruction encoding from VLM Encode Instruction + Image."),
                io.Conditioning.Input("negative", tooltip="Negative encoding from the same VLM Encode node."),
                io.Latent.Input("ref_latent", optional=True,
                                tooltip="Reference from Pack Ref Latent (editing). Leave unconnected for "
                                        "text-to-image and connect empty_latent instead."),
                io.Latent.Input("empty_latent", optional=True,
                                tooltip="Text-to-image only (v1.1): size and batch from EmptySD3LatentImage, "
                                        "e.g. 1024×1024; sides multiples of 16."),
                io.Int.Input("seed", default=DEFAULT_SEED, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed (CPU generator: the same seed gives the same noise on any device). "
                                     "Official default 42."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS,
                             tooltip="Sampling steps. Official: 28. Time grows linearly (about 1 s per step at 512² "
                                     "on an H100)."),
                io.Float.Input("cfg", default=DEFAULT_CFG, min=CFG_MIN, max=CFG_MAX, step=0.1, round=0.01,
                               tooltip="Guidance scale. Official: 6.0. 1.0 still runs the negative row (no speed-up)."),
                io.Combo.Input("cfg_renorm", options=list(RENORM_CHOICES), default=RENORM_MODEL_DEFAULT,
                               tooltip=RENORM_TOOLTIP),
                io.Boolean.Input("shift_schedule", default=True,
                                 tooltip="Resolution-dependent timestep shift (official: on; μ = 0.63 at 512², "
                                         "1.15 at 1024²)."),
            ],
            outputs=[io.Latent.Output(tooltip="The edited latent (raw FLUX latent, for Unpack/Decode or VAEDecode).")],
        )

    @classmethod
    def validate_inputs(cls, cfg: float) -> bool | str:
        # ComfyUI's own range check lets NaN through (every comparison with NaN is false), and it skips
        # inputs this method takes, so the range is checked here too.
        if not math.isfinite(cfg):
            return f"cfg must be a finite number, got {cfg}. The official value is {DEFAULT_CFG}."
        if not CFG_MIN <= cfg <= CFG_MAX:
            return f"cfg must be between {CFG_MIN} and {CFG_MAX}, got {cfg}. The official value is {DEFAULT_CFG}."
        return True

    @classmethod
    def execute(cls, model, positive, negative, seed: int, steps: int, cfg: float, cfg_renorm: str,
                shift_schedule: bool, ref_latent: dict | None = None, empty_latent: dict | None = None
                ) -> io.NodeOutput:
        latent, is_edit = sampling_latent(model, ref_latent, empty_latent)
        net = model.model.diffusion_model
        params = net.params
        embeddings = {}
        for role, conditioning in (("positive", positive), ("negative", negative)):
            embeddings[role], options = single_conditioning(conditioning, role)
            check_conditioning(net, embeddings[role], options, role, is_edit)
        warn_on_release_mismatch(positive, params.version)
        batch = common_batch(positive=embeddings["positive"].shape[0], negative=embeddings["negative"].shape[0],
                             latent=latent.shape[0])
        noise = make_noise(seed, batch, *latent.shape[2:])
        samples = sample_step1x(model, positive, negative, latent if is_edit else None, noise, steps, cfg,
                                renorm_threshold(cfg_renorm, params), shift_schedule, seed)
        out = {"samples": samples, OUTPUT_ROUNDING_KEY: params.switches.output_rounding}
        if ref_latent is not None and ORIGINAL_SIZE_KEY in ref_latent:
            out[ORIGINAL_SIZE_KEY] = ref_latent[ORIGINAL_SIZE_KEY]
        return io.NodeOutput(out)
