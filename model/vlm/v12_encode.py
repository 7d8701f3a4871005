"""Step1X-Edit v1.2 encoding: the VLM's image, the 90-token cut, Qwen-derived text ids.

Pure torch + PIL; the Qwen2.5-VL itself is behind :class:`V12Runner` (``nodes/encoders/vlm_v12_hf.py``
implements it with transformers). Reference: the diffusers fork ``pipeline_step1x_edit_v1p2.py``
(``encode_image``, ``_get_qwenvl_embeds``, ``encode_prompt``, ``set_vision_tokens_position_ids``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image
from torch import Tensor

from ..dit.branch_sampling import BranchText
from ..dit.sampling import size_for_level
from .image import RESIZE_FACTOR, qwen2vl_pixel_values, smart_resize
from .prompt import IMAGE_PAD_ID, mrope_positions
from .v12_prompt import DROPPED_TOKENS, EDIT_PREFIX, MAX_LENGTH, V12Tokens, tokenize_v12

# The pipeline rebuilds its processor with these pixel bounds; they are the ones that act
# (``Step1XEditPipelineV1P2.__init__``).
VLM_MIN_PIXELS = 256 * RESIZE_FACTOR**2
VLM_MAX_PIXELS = 400 * RESIZE_FACTOR**2
# Centre of merged vision token c in the resized image: 28·c + 13.5 (``_get_affine_mat_from_source``).
VISION_TOKEN_CENTER = 13.5
# VAE pixels → latent tokens, ``get_vae_downsample_affine_mat``: (p − 11) / 16.
LATENT_TOKEN_PIXELS = 16
LATENT_TOKEN_OFFSET = 11
# The release keeps its embeddings in bfloat16 (``_get_qwenvl_embeds`` allocates them so).
RELEASE_EMBEDDING_DTYPE = torch.bfloat16


def vlm_source_image(image: Image.Image, size_level: int) -> Image.Image:
    """The image the v1.2 VLM gets: RGB, PIL LANCZOS to the VAE input size (``VaeImageProcessor.resize``)."""
    image = image.convert("RGB")
    size = size_for_level(image.width, image.height, size_level)
    return image.resize(size, Image.Resampling.LANCZOS)


def vision_input(image: Image.Image) -> tuple[Image.Image, Tensor, Tensor]:
    """The processor's smart resize (256…400 merged tokens, PIL bicubic) and its patches.

    Returns (resized image, pixel_values ``[(H/14)(W/14), 1176]``, grid_thw ``[1, 3]``).
    """
    height, width = smart_resize(image.height, image.width, VLM_MIN_PIXELS, VLM_MAX_PIXELS)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    pixel_values, grid_thw = qwen2vl_pixel_values(resized)
    return resized, pixel_values, grid_thw


def affine_source_to_vision_grid(resized_wh: tuple[int, int], source_wh: tuple[int, int]) -> Tensor:
    """``[3, 3]`` float32 map from source pixels (x, y, 1) to vision-token grid coordinates (fork's matrix)."""
    (resized_w, resized_h), (source_w, source_h) = resized_wh, source_wh
    scale = torch.eye(3)
    scale[0, 0] = (resized_w - 1) / (source_w - 1)
    scale[1, 1] = (resized_h - 1) / (source_h - 1)
    offset = -VISION_TOKEN_CENTER / RESIZE_FACTOR
    to_grid = torch.tensor([[1 / RESIZE_FACTOR, 0, offset], [0, 1 / RESIZE_FACTOR, offset], [0, 0, 1]])
    return to_grid @ scale


def vision_token_latent_positions(grid_hw: tuple[int, int], resized_wh: tuple[int, int],
                                  source_wh: tuple[int, int]) -> Tensor:
    """``[gh·gw, 2]`` float32 (row, col) of each merged vision token, raster order, in latent-token units.

    Token (r, c) sits at ``(28·c + 13.5)·(source_w − 1)/(resized_w − 1)`` source pixels, mapped by
    ``(p − 11)/16`` (``set_vision_tokens_position_ids``; the fork inverts the float32 matrix, this is the
    exact composition).
    """
    (grid_h, grid_w), (resized_w, resized_h), (source_w, source_h) = grid_hw, resized_wh, source_wh
    rows = torch.arange(grid_h, dtype=torch.float64).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64).repeat(grid_h)
    y = (RESIZE_FACTOR * rows + VISION_TOKEN_CENTER) * (source_h - 1) / (resized_h - 1)
    x = (RESIZE_FACTOR * cols + VISION_TOKEN_CENTER) * (source_w - 1) / (resized_w - 1)
    to_latent = lambda p: (p - LATENT_TOKEN_OFFSET) / LATENT_TOKEN_PIXELS  # noqa: E731
    return torch.stack((to_latent(y), to_latent(x)), dim=1).float()


def shift_positions(positions: Tensor) -> Tensor:
    """Kept M-RoPE positions ``[3, V]`` → ``[V, 3]`` float32 with the largest axis-0 value at −1."""
    kept = positions.T.float()
    return kept - (kept[:, 0].max() + 1)


def dit_text_ids(shifted: Tensor, kept_ids: Tensor, vision_positions: Tensor) -> Tensor:
    """DiT text ids ``[V, 3]``: axis 0 the shifted Qwen position; axes 1, 2 zero for text and the
    latent (row, col) of the first kept vision tokens, in order (``set_vision_tokens_position_ids``)."""
    ids = shifted.clone()
    ids[:, 1:] = 0
    vision = kept_ids == IMAGE_PAD_ID
    ids[vision, 1:] = vision_positions[: int(vision.sum())].to(ids)
    return ids


class V12Runner(Protocol):
    """What an encoder route provides: its tokenizer and the Qwen2.5-VL's three parts."""

    special_tokens: Sequence[str]

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text`` without added special tokens; ``<|image_pad|>`` stays one id."""

    def token_embeddings(self, ids: Tensor) -> Tensor:
        """``embed_tokens(ids)``: ids ``[L]`` → ``[L, D]`` float32."""

    def image_features(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """Merged vision features ``[gh·gw, D]`` float32, raster order."""

    def language_model(self, embeds: Tensor, positions: Tensor) -> Tensor:
        """Causal LM, no attention mask: embeds ``[L, D]``, positions ``[3, L]`` → final-norm output ``[L, D]``."""


@dataclass(frozen=True)
class V12Encoding:
    """One prompt's encoding. Outputs (the fork's ``TextEmbedderOutput``, V = kept tokens):
    embedding / text_embeds ``[1, V, D]``, mask / text_mask ``[1, V]``, txt_ids ``[V, 3]`` float32.
    Intermediates: tokens (before the drop), positions ``[3, S]``, grid_thw, pixel_values, shifted ``[V, 3]``.
    """

    tokens: V12Tokens
    positions: Tensor
    grid_thw: Tensor
    pixel_values: Tensor
    resized_wh: tuple[int, int]
    shifted: Tensor
    embedding: Tensor
    mask: Tensor
    txt_ids: Tensor
    text_embeds: Tensor
    text_mask: Tensor

    def branch_text(self) -> BranchText:
        return BranchText(self.embedding, self.mask, self.txt_ids, self.text_embeds, self.text_mask)


@torch.no_grad()
def encode_v12(runner: V12Runner, instruction: str, vlm_image: Image.Image, prefix: str = EDIT_PREFIX,
               drop: int = DROPPED_TOKENS, max_length: int = MAX_LENGTH,
               output_dtype: torch.dtype = RELEASE_EMBEDDING_DTYPE) -> V12Encoding:
    """Encode one instruction with the VAE-sized image (:func:`vlm_source_image`) as v1.2 does.

    Only the first ``drop + max_length`` tokens are run (the LM is causal, so the kept states do not
    depend on the cut tail); the vision tower always sees the whole image, and the kept image tokens
    get its first features.
    """
    resized, pixel_values, grid_thw = vision_input(vlm_image)
    grid_hw = (int(grid_thw[0, 1]) // 2, int(grid_thw[0, 2]) // 2)
    tokens = tokenize_v12(runner.tokenize, runner.special_tokens, instruction, grid_hw[0] * grid_hw[1], prefix)
    ids = torch.tensor(tokens.ids, dtype=torch.long)
    if len(ids) <= drop:
        raise ValueError(f"the v1.2 prompt has {len(ids)} tokens, not more than the {drop} dropped ones")
    positions = mrope_positions(ids, grid_hw)
    window = slice(0, drop + max_length)
    run_ids = ids[window]
    embeds = runner.token_embeddings(run_ids)
    image_slots = run_ids == IMAGE_PAD_ID
    if image_slots.any():
        features = runner.image_features(pixel_values, grid_thw)
        embeds[image_slots] = features[: int(image_slots.sum())].to(embeds)
    hidden = runner.language_model(embeds, positions[:, window])
    kept = slice(drop, drop + max_length)
    shifted = shift_positions(positions[:, kept])
    vision_positions = vision_token_latent_positions(grid_hw, resized.size, vlm_image.size)
    text_mask = torch.tensor(tokens.text_mask[kept], dtype=torch.long)[None]
    return V12Encoding(
        tokens=tokens, positions=positions, grid_thw=grid_thw, pixel_values=pixel_values, resized_wh=resized.size,
        shifted=shifted,
        embedding=hidden[drop:].to(output_dtype)[None],
        mask=torch.ones_like(text_mask),
        txt_ids=dit_text_ids(shifted, ids[kept], vision_positions),
        text_embeds=embeds[drop:].to(output_dtype)[None],
        text_mask=text_mask,
    )
