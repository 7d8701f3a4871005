"""Pack Ref Latent (IMAGE → reference LATENT) and Unpack/Decode (LATENT → IMAGE at the input's size).

LATENT samples stay raw FLUX-VAE latents, as core VAEEncode/VAEDecode produce and expect; the
Step1X scaling (FLUX latent format, 0.3611·(z − 0.1159), official ``AutoEncoder.encode``) is applied
by the sampler.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..model.dit.image_io import (BILINEAR_ANTIALIAS, DEFAULT_ROUNDING, RESIZE_FILTERS, resize_back,
                                  resize_to_size_level, resize_unit_to_size_level)
from ..model.dit.sampling import NON_FINITE_CAUSES, NonFiniteResult
from .runtime.common import (CATEGORY, DEFAULT_RESIZE_FILTER, DEFAULT_SIZE_LEVEL, MAX_SIZE_LEVEL, MIN_SIZE_LEVEL,
                             ORIGINAL_SIZE_KEY, OUTPUT_ROUNDING_KEY, RESIZE_FILTER_KEY, SIZE_LEVEL_STEP, check_flux_vae,
                             decoded_to_uint8, image_to_uint8, uint8_to_image)

MIN_IMAGE_SIDE = 16                          # one DiT token covers 16×16 pixels (VAE 8× and 2×2 patches)
MAX_IMAGE_SIDE = 16384                       # ComfyUI's own image size limit (nodes.py MAX_RESOLUTION)
OUTPUT_SIZES = ("original", "sampled")


def check_finite_latent(latent: torch.Tensor) -> None:
    """Refuse a latent holding NaN or ±inf before decoding it to a black image. Step1X Sampler checks its own
    steps; this covers latents from core samplers (KSampler, SamplerCustomAdvanced) and anything else."""
    if not bool(torch.isfinite(latent).all()):
        raise NonFiniteResult(
            "the latent to decode holds NaN or infinite values, so it would decode to a black image (if a core "
            f"sampler made it, Step1X Sampler names the first bad step). {NON_FINITE_CAUSES}"
        )


def check_image_size(width: int, height: int) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(f"the image is {width}×{height} px; Step1X-Edit needs at least {MIN_IMAGE_SIDE} px on each "
                         "side. Use a larger image or upscale it first.")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ValueError(f"the image is {width}×{height} px; the limit is {MAX_IMAGE_SIDE} px per side. Downscale it "
                         "first (the size level decides the working size anyway).")


class Step1XPackRefLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XPackRefLatent",
            display_name="Pack Ref Latent",
            category=CATEGORY,
            description="Resizes the image by the Step1X rule (area ≈ size_level², sides multiples of 16) and "
                        "encodes it with the FLUX VAE into the reference latent the edit starts from.",
            inputs=[
                io.Image.Input("image", tooltip="The photo to edit. A batch gives a batch of edits."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors = Step1X-Edit's vae.safetensors, 335 MB)."),
                io.Int.Input("size_level", default=DEFAULT_SIZE_LEVEL, min=MIN_SIZE_LEVEL, max=MAX_SIZE_LEVEL,
                             step=SIZE_LEVEL_STEP,
                             tooltip="Working resolution: the image is resized to about size_level² pixels. "
                                     "Official: 512 (default), 768, 1024; 1024 is ~4× slower than 512. Use the same "
                                     "value in VLM Encode."),
                io.Combo.Input("resize_filter", options=list(RESIZE_FILTERS), default=DEFAULT_RESIZE_FILTER,
                               tooltip="Filter for the resize to the working size, as each release does it: v1.1 "
                                       "lanczos (PIL), v1.0 bicubic (PIL), v1.2 bilinear-antialias (torch, on the "
                                       "float image). v1.0/v1.1: use the same filter in VLM Encode."),
            ],
            outputs=[io.Latent.Output(display_name="ref_latent",
                                      tooltip="Raw FLUX latent [B, 16, h/8, w/8] that remembers the original size.")],
        )

    @classmethod
    def execute(cls, image, vae, size_level: int, resize_filter: str) -> io.NodeOutput:
        check_flux_vae(vae)
        height, width = image.shape[1], image.shape[2]
        check_image_size(width, height)
        if resize_filter == BILINEAR_ANTIALIAS:
            pixels = resize_unit_to_size_level(image[..., :3], size_level)
        else:
            pixels = uint8_to_image([resize_to_size_level(frame, size_level, resize_filter)
                                     for frame in image_to_uint8(image)])
        return io.NodeOutput({"samples": vae.encode(pixels), ORIGINAL_SIZE_KEY: (width, height),
                              RESIZE_FILTER_KEY: resize_filter})


class Step1XUnpackDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XUnpackDecode",
            display_name="Unpack/Decode",
            category=CATEGORY,
            description="Decodes the edited latent with the FLUX VAE and resizes it back to the input image's size "
                        "(8-bit, bicubic, as the official pipelines do: truncated to 8 bits for v1.0/v1.1, rounded "
                        "for v1.2, as the sampler's model release says).",
            inputs=[
                io.Latent.Input("samples", tooltip="The edited latent from Step1X Sampler."),
                io.Vae.Input("vae", tooltip="The same FLUX VAE as in Pack Ref Latent."),
                io.Combo.Input("output_size", options=list(OUTPUT_SIZES), default="original",
                               tooltip="original: the input image's size (official behaviour). sampled: the working "
                                       "size (multiples of 16), no resize."),
            ],
            outputs=[io.Image.Output(tooltip="The edited image.")],
        )

    @classmethod
    def execute(cls, samples: dict, vae, output_size: str) -> io.NodeOutput:
        check_flux_vae(vae)
        check_finite_latent(samples["samples"])
        frames = decoded_to_uint8(vae.decode(samples["samples"]), samples.get(OUTPUT_ROUNDING_KEY, DEFAULT_ROUNDING))
        original = samples.get(ORIGINAL_SIZE_KEY)
        if output_size == "original" and original is not None:
            frames = [resize_back(frame, *original) for frame in frames]
        return io.NodeOutput(uint8_to_image(frames))
