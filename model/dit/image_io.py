"""Pixel-side pre/post-processing of the official pipelines (``inference.py``
``ImageGenerator.input_process_image``, ``output_process_image`` and the decode in ``generate_image``;
v1.2: the diffusers fork's ``pipeline_step1x_edit_v1p2.py`` ``encode_image`` and its ``VaeImageProcessor``
post-processing).

Images here are uint8 ``[H, W, 3]`` numpy arrays, except the v1.2 resize, which works on float images
``[B, H, W, 3]`` in [0, 1]. PIL resampling matches the reference only with the Pillow release the
fixtures were made with (13.0.0).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from .sampling import size_for_level

# v1.0 used PIL's default filter for resize (bicubic); the v1.1 code switched the input resize to
# LANCZOS; the output is resized back with the default (bicubic) in every release (official
# ``ImageGenerator.input_process_image`` / ``output_process_image``; the diffusers pipelines' resize back).
INPUT_RESAMPLE = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
# v1.2 resizes the VAE input with torch bilinear + antialias on [0, 1] floats (fork ``encode_image``).
BILINEAR_ANTIALIAS = "bilinear-antialias"
RESIZE_FILTERS = (*INPUT_RESAMPLE, BILINEAR_ANTIALIAS)
OUTPUT_RESAMPLE = Image.BICUBIC
U8_MAX = 255
# 8-bit conversion of the decoded image: truncated in v1.0 / v1.1 (official ``generate_image``,
# ``to_pil_image``), rounded in v1.2 (diffusers ``VaeImageProcessor.numpy_to_pil``: ``(images * 255).round()``).
ROUNDINGS = ("truncate", "round")
DEFAULT_ROUNDING = "truncate"


def resize_to_size_level(image: np.ndarray, size_level: int, resample: str = "bicubic") -> np.ndarray:
    """``[H, W, 3]`` uint8 → the Step1X working size (area ≈ size_level², sides multiples of 16)."""
    height, width = image.shape[:2]
    new_w, new_h = size_for_level(width, height, size_level)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), INPUT_RESAMPLE[resample]))


def resize_unit_to_size_level(pixels: torch.Tensor, size_level: int) -> torch.Tensor:
    """v1.2's VAE-input resize: float images ``[B, H, W, 3]`` in [0, 1] → the working size, torch bilinear
    with antialias, no 8-bit step in between (the fork's ``encode_image``)."""
    new_w, new_h = size_for_level(pixels.shape[2], pixels.shape[1], size_level)
    resized = F.interpolate(pixels.permute(0, 3, 1, 2).float(), (new_h, new_w), mode="bilinear", antialias=True)
    return resized.permute(0, 2, 3, 1).clamp(0, 1)


def to_vae_input(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` → ``[1, 3, H, W]`` float32 in [−1, 1] (``to_tensor`` then ``2p − 1``)."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / U8_MAX
    return pixels * 2 - 1


def unit_to_uint8(unit: torch.Tensor, rounding: str = DEFAULT_ROUNDING) -> torch.Tensor:
    """Values in [0, 1] (clamped) → uint8 ×255, truncated (v1.0 / v1.1 ``to_pil_image``) or rounded
    (v1.2 ``VaeImageProcessor``): the release's ``output_rounding`` switch (model/dit/params.py)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown 8-bit rounding {rounding!r}; choose one of {', '.join(ROUNDINGS)}")
    scaled = unit.clamp(0, 1).float() * U8_MAX
    return (scaled.round() if rounding == "round" else scaled).to(torch.uint8)


def decoded_to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """VAE output ``[3, H, W]`` in ≈[−1, 1] → uint8 ``[H, W, 3]``: clamp, ×0.5+0.5, ×255 truncated."""
    return unit_to_uint8(decoded.clamp(-1, 1).float() * 0.5 + 0.5).permute(1, 2, 0).cpu().numpy()


def resize_back(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize the edited image back to the input's original size (PIL bicubic)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), OUTPUT_RESAMPLE))
