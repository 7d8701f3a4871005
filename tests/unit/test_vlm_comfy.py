"""Route 1 (nodes/encoders/vlm_comfy.py) inside ComfyUI itself, without a server.

ComfyUI's real Qwen tokenizer must give the fixtures' ids; a tiny model built from ComfyUI's own
Qwen2.5-VL classes (sizes from the fixture folder's config.json, weights from its safetensors)
must reproduce every golden ``vlm/`` case.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.environment import TINY_MODELS_DIR
from tests.unit.comfy_support import import_node_module
from tests.unit.vlm_support import (VLM_DIR, assert_v11_sdpa_semantics, case_names, import_pack_module, load_case, max_abs_error,
                                    tolerance, window)

TINY_FOLDER = VLM_DIR / "tiny-qwen25vl"
sys.path.insert(0, str(TINY_MODELS_DIR))

P = import_pack_module("model.vlm.prompt")
I = import_pack_module("model.vlm.image")


@pytest.fixture(scope="module")
def vlm_comfy():
    """ComfyUI importable on CPU; returns the pack's ComfyUI route module."""
    return import_node_module("nodes.encoders.vlm_comfy")


def _tiny_clip():
    """A comfy.sd.CLIP holding ComfyUI's Qwen2.5-VL classes at the tiny fixture sizes (config.json), loaded
    from the fixture's weights in the layout of ComfyUI's qwen_2.5_vl_7b file, as the tiny stand-in file
    of tests/tiny_models/make_tiny_weights.py holds them."""
    from make_tiny_weights import comfy_text_encoder
    from tiny_clip_loader import tiny_qwen_clip

    config = json.loads((TINY_FOLDER / "config.json").read_text())
    return tiny_qwen_clip(config, comfy_text_encoder(load_file(str(TINY_FOLDER / "model.safetensors"))))


@pytest.fixture(scope="module")
def comfy_tokenize(vlm_comfy):
    """ComfyUI's bundled Qwen2.5 tokenizer (comfy/text_encoders/qwen25_tokenizer), as Qwen-Image loads it."""
    from comfy.text_encoders.qwen_image import QwenImageTokenizer

    tokenizer = QwenImageTokenizer().qwen25_7b.tokenizer
    return lambda text: list(tokenizer(text)["input_ids"])


@pytest.fixture(scope="module")
def encoder(vlm_comfy):
    encoder = vlm_comfy.ComfyQwen25VL(_tiny_clip())
    encoder.load()
    return encoder


def test_this_comfyui_has_every_internal_the_clip_route_uses(vlm_comfy):
    vlm_comfy.check_comfy_internals()


def test_a_missing_internal_is_named_with_the_way_out(vlm_comfy, monkeypatch):
    monkeypatch.setattr(vlm_comfy, "QWEN_VL_MISSING", ["llama.Qwen25_7BVLI"])
    with pytest.raises(RuntimeError, match=r"lacks llama\.Qwen25_7BVLI\. Use the Hugging Face folder input"):
        vlm_comfy.check_comfy_internals()


def test_vit_tokens_come_out_in_raster_order_whatever_this_comfyui_returns(vlm_comfy):
    """Whichever order this ComfyUI's ViT returns (window order in 0.3.75), the route sees raster order,
    as the official Hugging Face model gives it. A ViT without blocks maps each merged token from its own
    patches only, so raster order is the merger of the patch embedding."""
    import comfy.ops
    from comfy.text_encoders import qwen_vl

    generator = torch.Generator().manual_seed(1)
    width = vlm_comfy.PROBE_WIDTH
    vit = qwen_vl.Qwen2VLVisionTransformer(hidden_size=width, output_hidden_size=width, intermediate_size=width,
                                           num_heads=1, num_layers=0, ops=comfy.ops.manual_cast)
    with torch.no_grad():
        for parameter in vit.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    grid = torch.tensor([vlm_comfy.PROBE_GRID])
    pixels = torch.randn(vlm_comfy.PROBE_GRID[1] * vlm_comfy.PROBE_GRID[2], vit.patch_embed.proj.weight[0].numel(),
                         generator=generator)
    with torch.no_grad():
        raster = vit.merger(vit.patch_embed(pixels))
        with vlm_comfy._raster_order(vit):
            out = vit(pixels, grid)
    torch.testing.assert_close(out, raster)


def test_order_probe_needs_no_comfyui_layer_weights(vlm_comfy, monkeypatch):
    """With dynamic VRAM (ComfyUI on NVIDIA) a comfy.ops layer has no weight until a patcher loads its model,
    and nothing loads the probe: the probe must run on plain torch layers."""
    import comfy.ops
    from comfy.text_encoders import qwen_vl

    def unloaded(self, *args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'device'")

    vit_class = qwen_vl.Qwen2VLVisionTransformer
    answer = vlm_comfy.vit_returns_window_order(vit_class)
    for ops in (comfy.ops.manual_cast, comfy.ops.disable_weight_init):
        for layer in (ops.Linear, ops.Conv3d, ops.RMSNorm):
            monkeypatch.setattr(layer, "forward", unloaded)
    vlm_comfy.vit_returns_window_order.cache_clear()
    try:
        assert vlm_comfy.vit_returns_window_order(vit_class) == answer
    finally:
        vlm_comfy.vit_returns_window_order.cache_clear()


@pytest.mark.parametrize("name", case_names())
def test_comfyui_tokenizer_gives_reference_ids(name, comfy_tokenize):
    for row in load_case(name).rows:
        tokens = P.tokenize_step1x(comfy_tokenize, row["prompt"], window()["prefix"])
        assert tokens.piece_ids == row["split_segment_ids"]
        assert P.expand_image_pad(tokens.ids, row["num_image_tokens"]) == row["input_ids"]


@pytest.mark.parametrize("name", case_names())
def test_comfyui_route_matches_reference(name, encoder):
    case = load_case(name)
    image = I.resize_for_vlm(case.raw_image(), case.size_level)
    grid = I.llm_grid_hw(image)
    for k, row in enumerate(case.rows):
        out = P.encode_prompt(encoder, row["prompt"], image, grid, **window())
        assert out.input_ids.tolist() == row["input_ids"][: len(out.input_ids)]
        assert torch.equal(out.mask, case.tensors["mask"][k])
        err = max_abs_error(out.emb, case.tensors["emb"][k])
        assert err <= tolerance("emb_abs"), f"{name} row {k}: emb max abs error {err:.3e}"


@pytest.mark.parametrize("name", case_names())
def test_comfyui_route_v1_1_sdpa_semantics(name, encoder):
    assert_v11_sdpa_semantics(encoder, name)


def test_other_text_encoders_are_refused_by_name(vlm_comfy):
    import comfy.sd
    from comfy import sd1_clip

    clip_l = comfy.sd.CLIP(no_init=True)
    clip_l.cond_stage_model = sd1_clip.SD1ClipModel(model_options={"clip_l_model_config": {
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}})
    with pytest.raises(ValueError, match=r"SD1ClipModel with clip_l \(CLIPTextModel\).*qwen_image"):
        vlm_comfy.check_qwen25_vl_clip(clip_l)
    with pytest.raises(ValueError, match="not Qwen2.5-VL"):
        vlm_comfy.ComfyQwen25VL(object())


@pytest.fixture(scope="module")
def node(vlm_comfy):
    return import_pack_module("nodes.node_vlm_encode")


def _first_pipeline_case():
    return next(load_case(name) for name in case_names() if load_case(name).size_level is not None)


def _check_row(conditioning, index, case, k):
    emb, options = conditioning[0]
    assert torch.equal(options["attention_mask"][index], case.tensors["mask"][k])
    err = max_abs_error(emb[index], case.tensors["emb"][k])
    assert err <= tolerance("emb_abs"), f"{case.name} row {k}: emb max abs error {err:.3e}"


def test_node_schema_has_the_agreed_interface(node):
    schema = node.Step1XVLMEncode.define_schema()
    assert (schema.node_id, schema.display_name, schema.category) == (
        "Step1XVLMEncode", "VLM Encode Instruction + Image", "Step1X-Edit")
    assert [i.id for i in schema.inputs] == [
        "image", "instruction", "negative_instruction", "size_level", "resize_filter", "clip", "hf_folder",
        "release"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    assert [i.optional for i in schema.inputs[-3:]] == [True, True, True]


def test_node_encodes_each_frame_with_both_prompts(node, encoder):
    """RGBA batch of two: frame 0 is a fixture image, frame 1 its mirror image."""
    case = _first_pipeline_case()
    rgb = torch.from_numpy(np.array(case.raw_image(), dtype=np.float32) / 255.0)
    alpha = torch.rand(rgb.shape[:2] + (1,), generator=torch.Generator().manual_seed(0))
    frames = torch.stack([torch.cat([rgb, alpha], -1), torch.cat([rgb.flip(1), alpha], -1)])
    cond, uncond = case.rows[0]["prompt"], case.rows[1]["prompt"]
    out = node.Step1XVLMEncode.execute(frames, cond, uncond, case.size_level, "bicubic", clip=encoder.clip)
    positive, negative = out.result
    for conditioning in (positive, negative):
        emb, options = conditioning[0]
        assert emb.dtype == torch.float32 and emb.shape == (2, window()["max_length"], encoder.hidden_size)
        assert options["attention_mask"].dtype == torch.int64
        assert options["step1x_edit"] == node.DEFAULT_RELEASE
    _check_row(positive, 0, case, 0)
    _check_row(negative, 0, case, 1)
    mirrored = I.resize_for_vlm(I.image_tensor_to_pil(frames[1]), case.size_level)
    expected = P.encode_prompt(encoder, cond, mirrored, I.llm_grid_hw(mirrored))
    assert max_abs_error(positive[0][0][1], expected.emb) == 0.0
    assert not torch.allclose(positive[0][0][1], positive[0][0][0])


def test_node_hf_folder_route(node, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda name: [str(TINY_FOLDER.parent)])
    monkeypatch.setattr(node.mm, "should_use_bf16", lambda *args, **kwargs: False)
    assert TINY_FOLDER.name in node.list_hf_folders()
    assert node.Step1XVLMEncode.validate_inputs(TINY_FOLDER.name) is True
    assert node.Step1XVLMEncode.validate_inputs(node.NO_HF_FOLDER) is True
    assert node.Step1XVLMEncode.validate_inputs("Qwen-missing") == (
        "no Hugging Face folder 'Qwen-missing' with a config.json under models/text_encoders: put the "
        "Qwen2.5-VL-7B-Instruct download there and press R to refresh")
    case = _first_pipeline_case()
    frames = I.pil_to_image_tensor(case.raw_image())
    out = node.Step1XVLMEncode.execute(frames, case.rows[0]["prompt"], case.rows[1]["prompt"], case.size_level,
                                       "bicubic", hf_folder=TINY_FOLDER.name)
    positive, negative = out.result
    _check_row(positive, 0, case, 0)
    _check_row(negative, 0, case, 1)


def test_node_needs_exactly_one_encoder(node, encoder):
    with pytest.raises(ValueError, match="connect 'Load CLIP'"):
        node.pick_runner(None, node.NO_HF_FOLDER)
    with pytest.raises(ValueError, match="both a CLIP input and hf_folder"):
        node.pick_runner(encoder.clip, "some-folder")
