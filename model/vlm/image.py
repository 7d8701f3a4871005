"""The reference image as Step1X-Edit's Qwen2.5-VL sees it.

Three PIL resizes on uint8, as in the official pipeline: Step1X's own ``input_process_image``
(size level; bicubic in v1.0), then bicubic ``qwen_vl_utils.fetch_image`` (0.0.10 defaults) and the HF
``Qwen2VLImageProcessor`` (4.49, slow) with Step1X's pixel bounds; then normalisation and the
Qwen2-VL patch layout. PIL, numpy and torch only. The Pillow version changes bicubic pixels:
the fixtures use Pillow 13.0.0.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..dit.image_io import U8_MAX
from ..dit.sampling import size_for_level

# Qwen2.5-VL vision geometry (preprocessor_config.json): 14-pixel patches, 2×2 merge, 2 frames.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
RESIZE_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: one merged (LLM) token per 28×28 pixels
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# qwen_vl_utils 0.0.10 ``fetch_image`` defaults: MIN_PIXELS = 4·28², MAX_PIXELS = 16384·28².
FETCH_MIN_PIXELS = 4 * RESIZE_FACTOR**2
FETCH_MAX_PIXELS = 16384 * RESIZE_FACTOR**2
# Official embedder ``AutoProcessor(min_pixels=256*28*28, max_pixels=324*28*28)``: 256…324 tokens.
STEP1X_MIN_PIXELS = 256 * RESIZE_FACTOR**2
STEP1X_MAX_PIXELS = 324 * RESIZE_FACTOR**2
# qwen_vl_utils / HF ``smart_resize`` refuse more extreme aspect ratios.
MAX_ASPECT_RATIO = 200


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int,
                 factor: int = RESIZE_FACTOR) -> tuple[int, int]:
    """qwen_vl_utils ``smart_resize`` (HF's equals it for sides ≥ factor): (h, w) multiples of
    ``factor`` with min_pixels ≤ h·w ≤ max_pixels, aspect ratio kept as far as possible."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"a {width}×{height} image exceeds Qwen2.5-VL's aspect-ratio limit of "
                         f"{MAX_ASPECT_RATIO}:1; crop it")
    h_bar = max(factor, round(height / factor) * factor)  # round(): banker's rounding, as upstream
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _resize_bicubic(image: Image.Image, height: int, width: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.BICUBIC)


def resize_for_vlm(image: Image.Image, size_level: int | None,
                   step1x_resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """The RGB uint8 image the Qwen2.5-VL patchifier receives in the official pipeline.

    ``size_level`` None skips Step1X's own resize (the image goes straight to the embedder);
    ``step1x_resample`` is that resize's filter (v1.0 code: bicubic, v1.1 code: LANCZOS, official
    ``ImageGenerator.input_process_image``). The result has sides that are multiples of 28 and 256…324 merged tokens.
    """
    image = image.convert("RGB")
    if size_level is not None:
        image = image.resize(size_for_level(image.width, image.height, size_level), step1x_resample)
    height, width = smart_resize(image.height, image.width, FETCH_MIN_PIXELS, FETCH_MAX_PIXELS)
    image = _resize_bicubic(image, height, width)
    height, width = smart_resize(image.height, image.width, STEP1X_MIN_PIXELS, STEP1X_MAX_PIXELS)
    return _resize_bicubic(image, height, width)


def llm_grid_hw(image: Image.Image) -> tuple[int, int]:
    """Merged-token grid (rows, cols) of a VLM-sized image: one LLM token per 28×28 pixels."""
    return image.height // RESIZE_FACTOR, image.width // RESIZE_FACTOR


def qwen2vl_pixel_values(image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised patches in the Qwen2-VL layout, for an image already sized by :func:`resize_for_vlm`.

    Returns pixel_values [(H/14)·(W/14), 3·2·14·14] float32 (merge-window major: each 2×2 block of
    patches, rows then columns; inside a row: channel, time, 14×14 pixels) and grid_thw [1, 3]
    int64 = (1, H/14, W/14).
    """
    if image.width % RESIZE_FACTOR or image.height % RESIZE_FACTOR:
        raise ValueError(f"image {image.width}×{image.height} is not VLM-sized (multiples of "
                         f"{RESIZE_FACTOR}): pass it through resize_for_vlm first")
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)) / U8_MAX
    mean = torch.tensor(IMAGE_MEAN)
    std = torch.tensor(IMAGE_STD)
    pixels = ((pixels - mean) / std).permute(2, 0, 1)  # [3, H, W]
    grid_h, grid_w = image.height // PATCH_SIZE, image.width // PATCH_SIZE
    frames = pixels.unsqueeze(0).expand(TEMPORAL_PATCH_SIZE, -1, -1, -1)  # [T, C, H, W]
    patches = frames.reshape(TEMPORAL_PATCH_SIZE, 3,
                             grid_h // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE,
                             grid_w // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE)
    # -> [gh/2, gw/2, 2, 2, C, T, 14, 14]
    patches = patches.permute(2, 5, 3, 6, 1, 0, 4, 7)
    pixel_values = patches.reshape(grid_h * grid_w, 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE)
    grid_thw = torch.tensor([[1, grid_h, grid_w]], dtype=torch.long)
    return pixel_values.contiguous(), grid_thw


def image_tensor_to_pil(frame: torch.Tensor) -> Image.Image:
    """One ComfyUI IMAGE frame [H, W, C] (floats in 0…1) as an RGB uint8 PIL image.

    Grey (C=1) is repeated, grey+alpha (C=2) and RGBA (C=4) lose alpha like PIL's
    ``convert("RGB")``; values are clamped and rounded, which is exact for frames that came from
    8-bit files (k/255) and the nearest 8-bit value for deeper ones.
    """
    if frame.ndim != 3 or frame.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"expected an image frame [H, W, C] with C in 1…4, got {tuple(frame.shape)}")
    frame = frame.detach().to(device="cpu", dtype=torch.float32)
    channels = frame.shape[-1]
    if channels <= 2:
        frame = frame[..., :1].expand(-1, -1, 3)
    else:
        frame = frame[..., :3]
    pixels = torch.nan_to_num(frame, nan=0.0).clamp(0.0, 1.0).mul(U8_MAX).round().to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def pil_to_image_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image as a ComfyUI IMAGE batch of one: [1, H, W, 3] float32 = uint8 / 255."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / U8_MAX
    return torch.from_numpy(pixels).unsqueeze(0)
