"""Image side of the VLM encoder (model/vlm/image.py) against the golden ``vlm/`` fixtures."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.unit.vlm_support import case_names, import_pack_module, load_case, tolerance

I = import_pack_module("model.vlm.image")
S = import_pack_module("model.dit.sampling")


@pytest.mark.parametrize("name", case_names())
def test_step1x_resize_size_matches_embedder_input(name):
    case = load_case(name)
    raw_w, raw_h = case.spec["raw_size_wh"]
    assert case.raw_image().size == (raw_w, raw_h)
    expected = tuple(case.spec["embedder_image_size_wh"])
    if case.size_level is None:
        assert expected == (raw_w, raw_h)
    else:
        assert S.size_for_level(raw_w, raw_h, case.size_level) == expected


@pytest.mark.parametrize("name", case_names())
def test_pixel_values_and_grid(name):
    case = load_case(name)
    image = I.resize_for_vlm(case.raw_image(), case.size_level)
    pixel_values, grid_thw = I.qwen2vl_pixel_values(image)
    row = case.rows[0]
    assert grid_thw.tolist() == [row["image_grid_thw"]]
    assert torch.equal(grid_thw, case.tensors["image_grid_thw"])
    assert list(pixel_values.shape) == row["pixel_values_shape"]
    assert I.llm_grid_hw(image)[0] * I.llm_grid_hw(image)[1] == row["num_image_tokens"]
    atol = tolerance("pixel_values_abs")
    head = case.tensors["pixel_values_head"]
    assert (pixel_values[: head.shape[0]] - head).abs().max().item() <= atol
    count = pixel_values.numel()
    assert abs(pixel_values.double().sum().item() - row["pixel_values_sum"]) <= atol * count
    assert abs(pixel_values.double().abs().sum().item() - row["pixel_values_abs_sum"]) <= atol * count


def test_smart_resize_bounds():
    assert I.smart_resize(512, 512, I.STEP1X_MIN_PIXELS, I.STEP1X_MAX_PIXELS) == (504, 504)
    assert I.smart_resize(8, 8, I.FETCH_MIN_PIXELS, I.FETCH_MAX_PIXELS) == (56, 56)
    assert I.smart_resize(56, 56, I.STEP1X_MIN_PIXELS, I.STEP1X_MAX_PIXELS) == (448, 448)
    assert I.smart_resize(42, 70, 0, 10**9) == (56, 56)  # banker's rounding: 1.5 -> 2, 2.5 -> 2
    with pytest.raises(ValueError, match="aspect-ratio"):
        I.smart_resize(10, 2010, I.FETCH_MIN_PIXELS, I.FETCH_MAX_PIXELS)


@pytest.mark.parametrize("size", [(8, 8), (300, 900), (1500, 1000), (513, 17)])
def test_vlm_image_has_256_to_324_tokens(size):
    image = I.resize_for_vlm(Image.new("RGB", size, (10, 20, 30)), None)
    grid_h, grid_w = I.llm_grid_hw(image)
    assert image.width % 28 == 0 and image.height % 28 == 0
    assert 256 <= grid_h * grid_w <= 324


def test_step1x_resize_filter_is_applied_before_the_vlm_resizes():
    image = Image.effect_noise((300, 200), 64).convert("RGB")
    bicubic = I.resize_for_vlm(image, 512)
    lanczos = I.resize_for_vlm(image, 512, Image.Resampling.LANCZOS)
    assert bicubic.size == lanczos.size == (588, 392)
    assert bicubic.tobytes() != lanczos.tobytes()


def test_image_tensor_round_trip_is_exact_for_8bit_values():
    values = torch.arange(256, dtype=torch.uint8)
    frame = values.reshape(16, 16, 1).expand(-1, -1, 3).float() / 255.0
    pil = I.image_tensor_to_pil(frame)
    assert torch.equal(torch.from_numpy(np.array(pil))[..., 0].flatten(), values)
    assert torch.equal(I.pil_to_image_tensor(pil)[0], frame)


def test_image_tensor_channel_handling():
    grey = torch.full((4, 5, 1), 0.5)
    assert I.image_tensor_to_pil(grey).getpixel((0, 0)) == (128, 128, 128)
    rgba = torch.zeros(4, 5, 4)
    rgba[..., 0] = 1.0
    assert I.image_tensor_to_pil(rgba).getpixel((0, 0)) == (255, 0, 0)
    grey_alpha = torch.stack([torch.full((4, 5), 0.2), torch.zeros(4, 5)], dim=-1)
    assert I.image_tensor_to_pil(grey_alpha).getpixel((0, 0)) == (51, 51, 51)
    wide = torch.tensor([[[-0.5, 2.0, float("nan")]]], dtype=torch.float16)
    assert I.image_tensor_to_pil(wide).getpixel((0, 0)) == (0, 255, 0)
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        I.image_tensor_to_pil(torch.zeros(1, 4, 5, 3))
