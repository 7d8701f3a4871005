"""Pack Ref Latent / Unpack-Decode with a stand-in VAE: Step1X sizing, original size kept and restored,
VAE family and image size checks, 8-bit conversions."""
from __future__ import annotations

import pytest
import torch

from tests.unit.comfy_support import import_node_module
from tests.unit.vlm_support import import_pack_module

PHOTO_W, PHOTO_H = 451, 300
SIZE_LEVEL = 256


class StandInVAE:
    """The VAE surface the nodes use: 16 channels at 1/8 size, like ComfyUI's FLUX VAE."""

    latent_dim = 2

    def __init__(self, channels: int = 16, downscale: int = 8):
        self.latent_channels = channels
        self.downscale = downscale
        self.encoded_shape = None

    def spacial_compression_encode(self) -> int:
        return self.downscale

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.encoded_shape = tuple(pixels.shape)
        batch, height, width, _ = pixels.shape
        return torch.zeros(batch, self.latent_channels, height // self.downscale, width // self.downscale)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = samples.shape
        return torch.full((batch, height * self.downscale, width * self.downscale, 3), 0.5)


@pytest.fixture(scope="module")
def latent_nodes():
    return import_node_module("nodes.node_latent")


@pytest.fixture(scope="module")
def sampling():
    return import_pack_module("model.dit.sampling")


def photo(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, PHOTO_H, PHOTO_W, 3)


def test_pack_resizes_by_the_step1x_rule_and_remembers_the_size(latent_nodes, sampling):
    vae = StandInVAE()
    latent = latent_nodes.Step1XPackRefLatent.execute(photo(), vae, SIZE_LEVEL, "lanczos").result[0]
    width, height = sampling.size_for_level(PHOTO_W, PHOTO_H, SIZE_LEVEL)
    assert vae.encoded_shape == (2, height, width, 3)
    assert latent["samples"].shape == (2, 16, height // 8, width // 8)
    assert latent["step1x_original_size"] == (PHOTO_W, PHOTO_H)


@pytest.mark.parametrize("output_size, expected", [("original", (PHOTO_H, PHOTO_W)), ("sampled", None)])
def test_unpack_restores_the_original_size_or_keeps_the_working_size(latent_nodes, sampling, output_size, expected):
    vae = StandInVAE()
    latent = latent_nodes.Step1XPackRefLatent.execute(photo(), vae, SIZE_LEVEL, "bicubic").result[0]
    image = latent_nodes.Step1XUnpackDecode.execute(latent, vae, output_size).result[0]
    width, height = sampling.size_for_level(PHOTO_W, PHOTO_H, SIZE_LEVEL)
    assert image.shape == (2, *(expected or (height, width)), 3)


def test_a_latent_without_original_size_decodes_at_its_own_size(latent_nodes):
    image = latent_nodes.Step1XUnpackDecode.execute({"samples": torch.zeros(1, 16, 8, 6)}, StandInVAE(),
                                                    "original").result[0]
    assert image.shape == (1, 64, 48, 3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_latent_is_refused_before_decoding_with_the_causes(latent_nodes, sampling, bad):
    samples = torch.zeros(1, 16, 8, 6)
    samples[0, 3, 2, 1] = bad

    class CountingVAE(StandInVAE):
        decoded = 0

        def decode(self, samples):
            CountingVAE.decoded += 1
            return super().decode(samples)

    with pytest.raises(sampling.NonFiniteResult,
                       match="latent to decode holds NaN or infinite values.*damaged weights"):
        latent_nodes.Step1XUnpackDecode.execute({"samples": samples}, CountingVAE(), "original")
    assert CountingVAE.decoded == 0


@pytest.mark.parametrize("vae, words", [(StandInVAE(channels=4), "4-channel"), (StandInVAE(downscale=16), "1/16")])
def test_a_vae_that_is_not_the_flux_vae_is_refused(latent_nodes, vae, words):
    with pytest.raises(ValueError, match=words):
        latent_nodes.check_flux_vae(vae)


@pytest.mark.parametrize("width, height, words", [(15, 100, "at least 16"), (16385, 20, "limit is 16384")])
def test_images_out_of_range_are_refused(latent_nodes, width, height, words):
    with pytest.raises(ValueError, match=words):
        latent_nodes.check_image_size(width, height)


def test_input_pixels_round_and_decoded_pixels_truncate(latent_nodes):
    common = import_pack_module("nodes.runtime.common")
    levels = torch.arange(256, dtype=torch.float32).reshape(1, 16, 16, 1).repeat(1, 1, 1, 3) / 255
    assert (common.image_to_uint8(levels)[0][..., 0].ravel() == list(range(256))).all()
    decoded = torch.full((1, 2, 2, 3), 254.9 / 255)
    assert (common.decoded_to_uint8(decoded)[0] == 254).all()


class RecordingVAE(StandInVAE):
    """Keeps the pixels it was asked to encode and decodes to a fixed value."""

    def __init__(self, decoded_value: float = 0.5):
        super().__init__()
        self.pixels = None
        self.decoded_value = decoded_value

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.pixels = pixels
        return super().encode(pixels)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.full_like(super().decode(samples), self.decoded_value)


def test_bilinear_antialias_resizes_the_float_image_as_v12_does(latent_nodes, sampling):
    """v1.2 (fork ``encode_image``): torch bilinear + antialias on [0, 1] floats, no 8-bit step, filter recorded."""
    image = photo(1)
    vae = RecordingVAE()
    latent = latent_nodes.Step1XPackRefLatent.execute(image, vae, SIZE_LEVEL, "bilinear-antialias").result[0]
    width, height = sampling.size_for_level(PHOTO_W, PHOTO_H, SIZE_LEVEL)
    expected = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), (height, width), mode="bilinear",
                                               antialias=True).permute(0, 2, 3, 1).clamp(0, 1)
    assert vae.pixels.shape == (1, height, width, 3)
    assert torch.equal(vae.pixels, expected)
    assert not torch.equal(vae.pixels * 255, (vae.pixels * 255).round())  # not quantised to 8 bits
    assert latent["step1x_resize_filter"] == "bilinear-antialias"
    pil_vae = RecordingVAE()
    latent_nodes.Step1XPackRefLatent.execute(image, pil_vae, SIZE_LEVEL, "lanczos")
    assert (pil_vae.pixels - vae.pixels).abs().max().item() > 1 / 255  # a different filter, visibly


@pytest.mark.parametrize("output_size, shape", [("original", (1, 20, 30, 3)), ("sampled", (1, 32, 32, 3))])
@pytest.mark.parametrize("rounding, expected", [(None, 254), ("truncate", 254), ("round", 255)])
def test_unpack_converts_to_8_bits_by_the_sampled_release(latent_nodes, output_size, shape, rounding, expected):
    latent = {"samples": torch.zeros(1, 16, 4, 4), "step1x_original_size": (30, 20)}
    if rounding:
        latent["step1x_output_rounding"] = rounding
    image = latent_nodes.Step1XUnpackDecode.execute(latent, RecordingVAE(254.6 / 255), output_size).result[0]
    assert image.shape == shape
    assert torch.equal(image, torch.full_like(image, expected / 255))


def test_each_release_names_its_pixel_rules():
    """The switches Pack Ref Latent's warning and Unpack/Decode's rounding follow."""
    params = import_pack_module("model.dit.params")
    image_io = import_pack_module("model.dit.image_io")
    rules = {version: (switches.input_resize, switches.output_rounding) for version, switches in params.VERSIONS.items()}
    assert rules == {"v1.0": ("bicubic", "truncate"), "v1.1": ("lanczos", "truncate"),
                     "v1.2": ("bilinear-antialias", "round")}
    assert {resize for resize, _ in rules.values()} <= set(image_io.RESIZE_FILTERS)
    with pytest.raises(ValueError, match="unknown 8-bit rounding 'nearest'; choose one of truncate, round"):
        image_io.unit_to_uint8(torch.zeros(2), "nearest")
