"""What the pack's nodes share: category, the conditioning marker, LATENT keys, the cfg_renorm choices,
image conversions."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ...model.dit.image_io import DEFAULT_ROUNDING, U8_MAX, unit_to_uint8
from ...model.dit.params import RENORM_EVERY_STEP, RENORM_NEVER, RENORM_OFFICIAL, VERSIONS, Step1XParams
from ...model.dit.sampling import LATENT_CHANNELS, PIXELS_PER_TOKEN, VAE_DOWNSCALE

logger = logging.getLogger(__name__)

CATEGORY = "Step1X-Edit"
# Key the VLM encoder puts in each conditioning's options dict (nodes/node_vlm_encode.py); its value is
# the encoder release. Conditioning without it comes from another model family (e.g. Qwen-Image).
CONDITIONING_MARKER = "step1x_edit"
# v1.2 encodings (Step1X v1.2 VLM Encode, nodes/runtime/v12_edit.py to_conditioning) carry the marker value
# V12_RELEASE and, per prompt, the DiT's text ids, the quoted-token input embeddings and their mask.
V12_RELEASE = "v1.2"
TXT_IDS_KEY, TEXT_EMBEDS_KEY, TEXT_MASK_KEY = "txt_ids", "text_embeds", "text_mask"
# Extra LATENT key set by Pack Ref Latent: the (width, height) of the input image, so Unpack/Decode
# can resize the edit back (official ``ImageGenerator.output_process_image``). Core nodes ignore unknown
# LATENT keys.
ORIGINAL_SIZE_KEY = "step1x_original_size"
# Pack Ref Latent records the resize filter it used (the sampler warns when the model's release resizes
# otherwise); Step1X Sampler records the release's 8-bit rounding for Unpack/Decode (model/dit/params.py).
RESIZE_FILTER_KEY = "step1x_resize_filter"
OUTPUT_ROUNDING_KEY = "step1x_output_rounding"
# The current official pipeline (v1.1 code: ``ImageGenerator.input_process_image``, ``Qwen25VL_7b_Embedder``):
# LANCZOS input resize and SDPA in the VLM. Pack Ref Latent and VLM Encode share these defaults so both
# see the same image.
DEFAULT_RELEASE = "v1.1"
DEFAULT_RESIZE_FILTER = VERSIONS[DEFAULT_RELEASE].input_resize
# size_level of Pack Ref Latent and VLM Encode (one range, both nodes must see one value): official
# default 512 (``inference.py`` ``main``; the Gradio app suggests 512, 768, 1024); sides come out in
# multiples of 16.
DEFAULT_SIZE_LEVEL = 512
MIN_SIZE_LEVEL, MAX_SIZE_LEVEL, SIZE_LEVEL_STEP = 256, 2048, 16
FLUX_LATENT_CHANNELS = LATENT_CHANNELS
FLUX_VAE_DOWNSCALE = VAE_DOWNSCALE
# cfg_renorm, the norm-rescaled CFG threshold (official ``ImageGenerator.denoise`` ``timesteps_truncate``; the
# diffusers fork's pipelines compare it with σ·1000) of Step1X Sampler and Step1X Reasoning Edit:
# guidance is renormalised on the steps with t > threshold. 1.0 is off (the v1.0 pipeline), 0.93 the
# official v1.1 rule, 0.00093 every step (the v1.2 release); "model default" (None) follows the loaded
# file's release. Workflows store the labels, so a renamed label breaks them.
RENORM_MODEL_DEFAULT = "model default"
RENORM_V12_RELEASE = "every step (v1.2 release)"
RENORM_CHOICES = {RENORM_MODEL_DEFAULT: None, "1.0 (off, v1.0)": RENORM_NEVER, "0.93 (v1.1)": RENORM_OFFICIAL,
                  RENORM_V12_RELEASE: RENORM_EVERY_STEP}
RENORM_TOOLTIP = (f"Norm-rescaled CFG on the steps with t > threshold. 1.0 (off, v1.0): t > {RENORM_NEVER:g}, no "
                  f"step; 0.93 (v1.1): t > {RENORM_OFFICIAL:g}, steps 0-3 of 28 at 512² (0-5 at 1024²); every step "
                  f"(v1.2 release): t > {RENORM_EVERY_STEP:g}, all steps. model default: 1.0 for v1.0 files, 0.93 "
                  "for v1.1, every step for v1.2.")


def renorm_threshold(choice: str, params: Step1XParams) -> float:
    """The threshold of a cfg_renorm label; "model default" gives the loaded release's (``params.switches``)."""
    threshold = RENORM_CHOICES[choice]
    return params.switches.renorm_threshold if threshold is None else threshold


def image_to_uint8(image: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE ``[B, H, W, C]`` float 0..1 → RGB uint8 frames (rounded: LoadImage stores k/255 exactly)."""
    return list(unit_to_uint8(image[..., :3], "round").cpu().numpy())


def decoded_to_uint8(image: torch.Tensor, rounding: str = DEFAULT_ROUNDING) -> list[np.ndarray]:
    """VAE decoder output (IMAGE, 0..1) → uint8 ×255, truncated (v1.0 / v1.1 ``to_pil_image``)
    or rounded (v1.2): the release's ``output_rounding``."""
    return list(unit_to_uint8(image[..., :3], rounding).cpu().numpy())


def uint8_to_image(frames: list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 frames of one size → ComfyUI IMAGE ``[B, H, W, 3]`` float32 0..1."""
    return torch.from_numpy(np.stack(frames).astype(np.float32) / U8_MAX)


# Sampler settings shared by Step1X Sampler, Step1X Reasoning Edit and Step1X Think.
DEFAULT_SEED = 42      # official CLI default (``inference.py`` ``main``)
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # core KSampler's seed range (64 bits)
DEFAULT_STEPS = 28     # official default
DEFAULT_CFG = 6.0      # official default
MAX_STEPS = 1000


def check_latent(latent: torch.Tensor, role: str) -> None:
    if latent.ndim != 4 or latent.shape[1] != FLUX_LATENT_CHANNELS:
        raise ValueError(f"the {role} latent has shape {tuple(latent.shape)}; Step1X-Edit needs FLUX latents "
                         f"[B, {FLUX_LATENT_CHANNELS}, h, w] (Pack Ref Latent, or EmptySD3LatentImage for text-to-image).")
    if latent.shape[2] % 2 or latent.shape[3] % 2:
        raise ValueError(f"the {role} latent is {latent.shape[3]}×{latent.shape[2]}; both sides must be even "
                         f"(image sides multiples of {PIXELS_PER_TOKEN} px).")


def warn_on_resize_mismatch(ref_latent: dict, params) -> None:
    """Log when Pack Ref Latent's filter is not the one the model's release resizes with (edits still run)."""
    used = ref_latent.get(RESIZE_FILTER_KEY)
    if used is not None and used != params.switches.input_resize:
        logger.warning("the reference latent was resized with %s but Step1X-Edit %s resizes with %s: set Pack Ref "
                       "Latent's resize_filter to %s for the official result.", used, params.version,
                       params.switches.input_resize, params.switches.input_resize)


def check_flux_vae(vae) -> None:
    """Step1X-Edit works in the 16-channel, 8× FLUX latent space; refuse anything else early."""
    channels = getattr(vae, "latent_channels", None)
    downscale = vae.spacial_compression_encode() if hasattr(vae, "spacial_compression_encode") else None
    if channels != FLUX_LATENT_CHANNELS or downscale != FLUX_VAE_DOWNSCALE or getattr(vae, "latent_dim", 2) != 2:
        raise ValueError(
            f"this VAE makes {channels}-channel latents at 1/{downscale} size; Step1X-Edit needs the FLUX VAE "
            f"({FLUX_LATENT_CHANNELS} channels, 1/{FLUX_VAE_DOWNSCALE} size). Load ae.safetensors (Step1X-Edit's "
            "vae.safetensors is the same file) with the Load VAE node."
        )
