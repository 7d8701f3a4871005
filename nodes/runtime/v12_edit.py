"""One Step1X-Edit v1.2 edit inside ComfyUI: the v1.2 conditioning layout, the release's pixel paths, and
:class:`V12Editor`, the release's single edit (``encode_prompt`` → ``__call__``, sampled by Step1X Sampler's
runner, nodes/runtime/cfg_guider.py) used as the reasoning loop's ``edit`` callable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import comfy.model_management as mm
import torch
from PIL import Image

from ...model.dit.image_io import OUTPUT_RESAMPLE, resize_unit_to_size_level, unit_to_uint8
from ...model.dit.params import VERSIONS
from ...model.dit.sampling import LATENT_CHANNELS
from ...model.vlm.image import pil_to_image_tensor
from ...model.vlm.v12_encode import V12Encoding, encode_v12, vlm_source_image
from ..encoders.v12_vlm import V12VLM
from .cfg_guider import sample_step1x
from .common import CONDITIONING_MARKER, TEXT_EMBEDS_KEY, TEXT_MASK_KEY, TXT_IDS_KEY, V12_RELEASE
from .native_model import is_step1x_model, needs_v12_model_message

V12_SIZE_LEVEL = 1024  # the v1.2 pipeline's default size_level (``Step1XEditPipelineV1P2.__call__``)


def to_conditioning(encoding: V12Encoding) -> list:
    """A v1.2 encoding as ComfyUI CONDITIONING: ``[[embedding [1, V, D], {mask, marker, v1.2 extras}]]``."""
    device = mm.intermediate_device()
    return [[encoding.embedding.to(device), {
        "attention_mask": encoding.mask.to(device), CONDITIONING_MARKER: V12_RELEASE,
        TXT_IDS_KEY: encoding.txt_ids.to(device), TEXT_EMBEDS_KEY: encoding.text_embeds.to(device),
        TEXT_MASK_KEY: encoding.text_mask.to(device)}]]


def check_v12_model(model) -> None:
    """Refuses a MODEL that is not a Step1X-Edit v1.2 DiT (v1.2 conditioning needs v1.2's text inputs)."""
    version = model.model.diffusion_model.params.version if is_step1x_model(model) else "not Step1X-Edit"
    if version != V12_RELEASE:
        raise ValueError(needs_v12_model_message(version))


def vae_pixels(image: Image.Image, size_level: int) -> torch.Tensor:
    """The v1.2 VAE input as a ComfyUI IMAGE ``[1, h, w, 3]``: torch bilinear with antialias on [0, 1]
    floats to the size-level size (``encode_image``; unlike the VLM's LANCZOS copy)."""
    return resize_unit_to_size_level(pil_to_image_tensor(image), size_level)


def decoded_to_pil(decoded: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """VAE output (IMAGE, 0..1) → 8-bit by the release's rounding, resized back to ``size`` with PIL's
    default filter, bicubic (``_output_process_image``)."""
    pixels = unit_to_uint8(decoded[0, ..., :3], VERSIONS[V12_RELEASE].output_rounding).cpu().numpy()
    image = Image.fromarray(pixels)
    return image if image.size == size else image.resize(size, OUTPUT_RESAMPLE)


@dataclass
class V12Editor:
    """The release's single edit (``encode_image`` → ``encode_prompt`` ×2 → sampling → decode → resize back)
    as the reasoning loop's ``edit(image, prompt, negative_prompt) -> image``.

    Noise comes from one CPU generator seeded once, so later tries draw new noise (as in the release) and the
    first try equals a plain edit with the same seed.
    """

    model: object
    vlm: V12VLM
    vae: object
    size_level: int
    seed: int
    steps: int
    cfg: float
    threshold: float
    generator: torch.Generator = field(init=False)

    def __post_init__(self):
        self.generator = torch.Generator("cpu").manual_seed(self.seed)

    def encode(self, image: Image.Image, prompt: str, negative_prompt: str) -> tuple[list, list]:
        """The instruction's and the negative prompt's v1.2 CONDITIONING."""
        runner = self.vlm.runner()
        vlm_image = vlm_source_image(image, self.size_level)
        return (to_conditioning(encode_v12(runner, prompt, vlm_image)),
                to_conditioning(encode_v12(runner, negative_prompt, vlm_image)))

    def __call__(self, image: Image.Image, prompt: str, negative_prompt: str) -> Image.Image:
        positive, negative = self.encode(image, prompt, negative_prompt)
        ref_latent = self.vae.encode(vae_pixels(image, self.size_level))
        _, _, latent_h, latent_w = ref_latent.shape
        noise = torch.randn((1, LATENT_CHANNELS, latent_h, latent_w), generator=self.generator, dtype=torch.float32)
        latent = sample_step1x(self.model, positive, negative, ref_latent, noise, self.steps, self.cfg, self.threshold,
                               seed=self.seed)
        return decoded_to_pil(self.vae.decode(latent), image.size)
