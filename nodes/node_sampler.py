"""Step1X Sampler: the official flow-matching Euler loop for every release.

v1.0 / v1.1 conditioning runs as one CFG batch (model.sampling.sample); v1.2 conditioning, whose
instruction and negative differ in length, as one DiT call per branch (model.branch_sampling). ComfyUI
supplies the rest through the per-step callback (nodes/dit_runtime.py): progress bar, latent previews
and interruption between steps.
"""
from __future__ import annotations

import logging
import math

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..model.attention import set_attention_backend
from ..model.sampling import PIXELS_PER_TOKEN, SamplingInputs, get_schedule, make_noise, sample
from .common import (CATEGORY, CONDITIONING_MARKER, FLUX_LATENT_CHANNELS, ORIGINAL_SIZE_KEY, OUTPUT_ROUNDING_KEY,
                     RENORM_CHOICES, RENORM_MODEL_DEFAULT, RENORM_TOOLTIP, RESIZE_FILTER_KEY, renorm_threshold)
from .dit_runtime import ACTIVATION_ELEMENTS_PER_TOKEN_PER_HIDDEN, run_compiled_or_eager, step_callback
from .node_loader import is_step1x_model
from .v12_runtime import V12_RELEASE, branch_from_conditioning, sample_v12

logger = logging.getLogger(__name__)

DEFAULT_SEED = 42      # official CLI default (``inference.py`` ``main``)
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # core KSampler's seed range (64 bits)
DEFAULT_STEPS = 28     # official default
DEFAULT_CFG = 6.0      # official default
MAX_STEPS = 1000
CFG_MIN, CFG_MAX = 0.0, 100.0


def split_conditioning(conditioning, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Step1X VLM conditioning → (embedding [B, L, D], mask [B, L]); refuses other model families."""
    if not conditioning or len(conditioning[0]) != 2 or CONDITIONING_MARKER not in conditioning[0][1]:
        raise ValueError(
            f"the {role} conditioning is not from 'VLM Encode Instruction + Image' (it has no '{CONDITIONING_MARKER}' "
            "marker; e.g. Qwen-Image or CLIP Text Encode conditioning). Step1X-Edit needs its own encoding: connect "
            "the VLM Encode node's output."
        )
    if len(conditioning) > 1:
        raise ValueError(f"the {role} conditioning holds {len(conditioning)} entries (combined or concatenated "
                         "conditioning); connect the VLM Encode output directly.")
    embedding, options = conditioning[0]
    mask = options.get("attention_mask")
    if mask is None:
        mask = torch.ones(embedding.shape[:2], dtype=torch.int64)
    return embedding, mask


def common_batch(**sizes: int) -> int:
    """The batch all inputs share; inputs of batch 1 are repeated to it."""
    batch = max(sizes.values())
    if any(size not in (1, batch) for size in sizes.values()):
        listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise ValueError(f"batch sizes do not match ({listed}). Give every input the same batch size, or batch 1 to "
                         "use it for all images (e.g. encode the instruction with the same image batch).")
    return batch


def repeat_to(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    return tensor if tensor.shape[0] == batch else tensor.repeat(batch, *([1] * (tensor.ndim - 1)))


def check_latent(latent: torch.Tensor, role: str) -> None:
    if latent.ndim != 4 or latent.shape[1] != FLUX_LATENT_CHANNELS:
        raise ValueError(f"the {role} latent has shape {tuple(latent.shape)}; Step1X-Edit needs FLUX latents "
                         f"[B, {FLUX_LATENT_CHANNELS}, h, w] (Pack Ref Latent, or EmptySD3LatentImage for text-to-image).")
    if latent.shape[2] % 2 or latent.shape[3] % 2:
        raise ValueError(f"the {role} latent is {latent.shape[3]}×{latent.shape[2]}; both sides must be even "
                         f"(image sides multiples of {PIXELS_PER_TOKEN} px).")


def warn_on_release_mismatch(conditioning, version: str) -> None:
    release = conditioning[0][1].get(CONDITIONING_MARKER)
    if release in ("v1.0", "v1.1") and version in ("v1.0", "v1.1") and release != version:
        logger.warning("the conditioning was encoded as Step1X-Edit %s but the model is %s: set VLM Encode's "
                       "'release' (and both resize filters) to match the model for the official result.",
                       release, version)


def warn_on_resize_mismatch(ref_latent: dict, params) -> None:
    """Log when Pack Ref Latent's filter is not the one the model's release resizes with (edits still run)."""
    used = ref_latent.get(RESIZE_FILTER_KEY)
    if used is not None and used != params.switches.input_resize:
        logger.warning("the reference latent was resized with %s but Step1X-Edit %s resizes with %s: set Pack Ref "
                       "Latent's resize_filter to %s for the official result.", used, params.version,
                       params.switches.input_resize, params.switches.input_resize)


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
        if not is_step1x_model(model):
            raise ValueError("this MODEL is not a Step1X-Edit model: load it with the 'Load Step1X Model' node.")
        if (ref_latent is None) == (empty_latent is None):
            raise ValueError("connect exactly one of ref_latent (editing, from Pack Ref Latent) and empty_latent "
                             "(text-to-image, from EmptySD3LatentImage).")
        params = model.model.params
        latent = (ref_latent if ref_latent is not None else empty_latent)["samples"]
        check_latent(latent, "reference" if ref_latent is not None else "empty")
        if ref_latent is not None:
            warn_on_resize_mismatch(ref_latent, params)
        threshold = renorm_threshold(cfg_renorm, params)
        callback = step_callback(model, steps, *latent.shape[2:])
        if is_v12_conditioning(positive):
            if ref_latent is None:
                raise ValueError("v1.2 conditioning edits an image: connect ref_latent (Pack Ref Latent).")
            noise = make_noise(seed, latent.shape[0], *latent.shape[2:])
            samples = sample_v12(model, branch_from_conditioning(positive, "positive"),
                                 branch_from_conditioning(negative, "negative"), latent, noise, steps, cfg, threshold,
                                 callback, shift=shift_schedule)
        else:
            samples = sample_batched(model, positive, negative, latent, ref_latent is not None, seed, steps, cfg,
                                     threshold, shift_schedule, callback)
        out = {"samples": samples, OUTPUT_ROUNDING_KEY: params.switches.output_rounding}
        if ref_latent is not None and ORIGINAL_SIZE_KEY in ref_latent:
            out[ORIGINAL_SIZE_KEY] = ref_latent[ORIGINAL_SIZE_KEY]
        return io.NodeOutput(out)


def is_v12_conditioning(conditioning) -> bool:
    return bool(conditioning) and len(conditioning[0]) == 2 and conditioning[0][1].get(CONDITIONING_MARKER) == V12_RELEASE


def sample_batched(model, positive, negative, latent: torch.Tensor, is_edit: bool, seed: int, steps: int, cfg: float,
                   threshold: float, shift: bool, callback) -> torch.Tensor:
    """v1.0 / v1.1 conditioning: one CFG batch per step → raw FLUX latent on the intermediate device."""
    net = model.model
    params = net.params
    if params.switches.text_token_mapping:
        raise ValueError(f"{net.checkpoint_name} is Step1X-Edit {params.version}: encode with 'Step1X v1.2 VLM "
                         "Encode' (its own Qwen2.5-VL), not 'VLM Encode Instruction + Image'.")
    cond, cond_mask = split_conditioning(positive, "positive")
    uncond, uncond_mask = split_conditioning(negative, "negative")
    warn_on_release_mismatch(positive, params.version)
    for role, embedding in (("positive", cond), ("negative", uncond)):
        if embedding.shape[-1] != params.connector.in_channels:
            raise ValueError(
                f"the {role} conditioning is {embedding.shape[-1]} wide but {net.checkpoint_name} expects "
                f"{params.connector.in_channels} (its Qwen2.5-VL hidden size): the text encoder does not match "
                "this checkpoint (Step1X-Edit uses Qwen2.5-VL-7B-Instruct, 3584).")
    if not is_edit and not params.switches.supports_text_to_image:
        raise ValueError(f"{net.checkpoint_name} is Step1X-Edit {params.version}, which only edits; text-to-image "
                         "needs the v1.1 file (step1x-edit-v1p1-official.safetensors).")
    batch = common_batch(positive=cond.shape[0], negative=uncond.shape[0], latent=latent.shape[0])
    _, _, latent_h, latent_w = latent.shape
    latent_format = net.latent_format
    inputs = SamplingInputs(
        noise=make_noise(seed, batch, latent_h, latent_w),
        ref_latent=latent_format.process_in(repeat_to(latent, batch).float()) if is_edit else None,
        cond=repeat_to(cond, batch), cond_mask=repeat_to(cond_mask, batch),
        uncond=repeat_to(uncond, batch), uncond_mask=repeat_to(uncond_mask, batch),
        timesteps=get_schedule(steps, (latent_h // 2) * (latent_w // 2), shift=shift),
    )
    tokens = cond.shape[1] + (latent_h // 2) * (latent_w // 2) * (2 if is_edit else 1)
    element_bytes = torch.finfo(net.compute_dtype).bits // 8
    memory = tokens * batch * params.dit.hidden_size * ACTIVATION_ELEMENTS_PER_TOKEN_PER_HIDDEN * element_bytes
    mm.load_models_gpu([model], memory_required=memory)
    set_attention_backend(net.attention_backend)
    result = run_compiled_or_eager(net, lambda: sample(net, inputs, cfg, threshold, params.switches,
                                                       net.compute_dtype, model.load_device, callback=callback))
    return latent_format.process_out(result).to(mm.intermediate_device())
