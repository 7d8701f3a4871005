"""scripts/convert_to_comfy_fp8.py: the bf16 DiT as a ComfyUI-native fp8 file (per-layer ``comfy_quant``),
and every fp8 file kind Load Step1X Model reads: converted, community scaled fp8, plain fp8."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.environment import TINY_MODELS_DIR
from tests.golden import REPO_ROOT
from tests.unit.comfy_support import import_node_module
from tests.unit.test_nodes_loader import edit_once, relative_l2
from tests.unit.vlm_support import import_pack_module

sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(TINY_MODELS_DIR))
import convert_to_comfy_fp8  # noqa: E402
from make_tiny_weights import make_dit  # noqa: E402

FP8 = torch.float8_e4m3fn
BLOCKS = ("double_blocks.", "single_blocks.")
# One DiT forward of the tiny model, converted against bf16 (relative L2): measured 1.2e-2.
FORWARD_RELATIVE_L2 = 0.05
# The 2-step edit of the tiny model with its block weights cast to fp8 unscaled: measured 2.0e-2.
PLAIN_FP8_EDIT_RELATIVE_L2 = 0.05


@pytest.fixture(scope="module")
def loader():
    return import_node_module("nodes.node_loader")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny v1.1 DiT in bf16 (as released), its conversion, and the community fp8 kinds of it."""
    folder = tmp_path_factory.mktemp("fp8-files")
    bf16 = {k: v.to(torch.bfloat16) for k, v in make_dit("v1.1", torch.Generator().manual_seed(0)).items()}
    paths = {"bf16": folder / "step1x-edit-v1p1-official.safetensors"}
    save_file(bf16, str(paths["bf16"]))
    converted = convert_to_comfy_fp8.convert(str(paths["bf16"]))
    paths["comfy_fp8"] = folder / "step1x-edit-v1p1-comfy-fp8.safetensors"
    save_file(converted, str(paths["comfy_fp8"]))
    scaled = {}   # ComfyUI's older scaled-fp8 layout of the same quantised weights
    for key, tensor in converted.items():
        if key.endswith(".comfy_quant"):
            continue
        scaled[key.replace(".weight_scale", ".scale_weight")] = tensor
    scaled["scaled_fp8"] = torch.empty(0, dtype=FP8)
    paths["scaled_fp8"] = folder / "step1x-edit-v1p1-scaled-fp8.safetensors"
    save_file(scaled, str(paths["scaled_fp8"]))
    plain = {k: v.to(FP8) if v.ndim == 2 and k.startswith(BLOCKS) else v for k, v in bf16.items()}
    paths["plain_fp8"] = folder / "step1x-edit-v1p1-plain-fp8.safetensors"
    save_file(plain, str(paths["plain_fp8"]))
    return {name: str(path) for name, path in paths.items()}


def read_all(path: str) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def test_block_linears_become_comfyui_fp8_layers_and_the_rest_is_kept(files):
    source, converted = read_all(files["bf16"]), read_all(files["comfy_fp8"])
    layers = sorted(k.removesuffix(".comfy_quant") for k in converted if k.endswith(".comfy_quant"))
    block_linears = sorted(k.removesuffix(".weight") for k, v in source.items()
                           if k.startswith(BLOCKS) and k.endswith(".weight") and v.ndim == 2)
    assert layers == block_linears
    for layer in layers:
        assert json.loads(bytes(converted[f"{layer}.comfy_quant"].tolist())) == {"format": "float8_e4m3fn"}
        assert converted[f"{layer}.comfy_quant"].dtype == torch.uint8
        weight, scale = converted[f"{layer}.weight"], converted[f"{layer}.weight_scale"]
        assert weight.dtype == FP8 and scale.dtype == torch.float32 and scale.shape == ()
        assert weight.float().abs().max() == torch.finfo(FP8).max   # absmax scaling uses the whole range
        dequantised = weight.float() * scale
        assert relative_l2(dequantised, source[f"{layer}.weight"]) < 0.05
    kept = {k for k in source if k.removesuffix(".weight") not in layers}
    assert kept == {k for k in converted if k.removesuffix(".weight").removesuffix(".weight_scale")
                    .removesuffix(".comfy_quant") not in layers}
    for key in kept:
        assert torch.equal(converted[key], source[key]) and converted[key].dtype == source[key].dtype, key


# Only a ComfyUI with per-layer quantized layers (comfy/ops.py mixed_precision_ops) has this round trip to
# test; on an older one the loader feeds the converted file to its scaled-fp8 layers (the test below).
COMPAT = import_node_module("nodes.runtime.comfy_compat")

if COMPAT.FP8_LAYERS == COMPAT.PER_LAYER_QUANT:
    def test_comfyui_per_layer_fp8_layers_read_and_write_the_entries_as_stored(files):
        """Where this ComfyUI has per-layer quantized layers, they take the converted layer as it is and give
        back the same entries (comfy/ops.py _load_quantized_module / _quantized_weight_state_dict)."""
        import comfy.ops

        converted = read_all(files["comfy_fp8"])
        layer = "double_blocks.0.img_attn.qkv"
        entries = {k.removeprefix(layer + "."): v for k, v in converted.items() if k.startswith(layer + ".")}
        out_features, in_features = entries["weight"].shape
        ops = comfy.ops.mixed_precision_ops(COMPAT.MIXED_OPS_QUANT_CONFIG, torch.bfloat16)   # the file's dtype
        linear = ops.Linear(in_features, out_features)
        linear.load_state_dict(dict(entries), strict=True)
        assert linear.quant_format == "float8_e4m3fn"
        written = linear.state_dict()
        assert set(written) == set(entries)
        for key, value in entries.items():
            assert written[key].dtype == value.dtype and torch.equal(written[key].reshape(-1).view(torch.uint8),
                                                                     value.reshape(-1).view(torch.uint8)), key


def test_converted_file_loads_as_the_bf16_file_quantised_at_load(loader, files):
    from_file = loader.load_step1x_model(files["comfy_fp8"], "default", "auto")
    at_load = loader.load_step1x_model(files["bf16"], "fp8_e4m3fn", "auto")
    assert from_file.model.diffusion_model.double_blocks[0].img_attn.qkv.state_dict()["weight"].dtype == FP8
    torch.testing.assert_close(edit_once(from_file), edit_once(at_load), rtol=0, atol=0)


def test_one_forward_of_the_converted_model_is_close_to_bf16(loader, files):
    """The pure-torch forward of the loaded network (model/dit/transformer.py), without ComfyUI's sampling around it."""
    forward = import_pack_module("model.dit.transformer").Step1XEdit.forward
    outputs = {}
    for name, choice in (("bf16", "default"), ("comfy_fp8", "default")):
        net = loader.load_step1x_model(files[name], choice, "auto").model.diffusion_model
        generator = torch.Generator().manual_seed(3)
        width, tokens, text = net.params.connector.in_channels, 16, 8
        with torch.no_grad():
            outputs[name] = forward(
                net,
                img=torch.randn(1, tokens, net.params.dit.in_channels, generator=generator),
                img_ids=torch.zeros(1, tokens, 3), txt_ids=torch.zeros(1, text, 3), timesteps=torch.tensor([0.5]),
                llm_embedding=torch.randn(1, text, width, generator=generator), t_vec=torch.tensor([0.5]),
                mask=torch.ones(1, text, dtype=torch.int64))
    assert 0 < relative_l2(outputs["comfy_fp8"], outputs["bf16"]) < FORWARD_RELATIVE_L2


@pytest.mark.parametrize("kind", ["scaled_fp8", "plain_fp8"])
def test_community_fp8_files_load_with_fp8_weights(loader, files, kind):
    patcher = loader.load_step1x_model(files[kind], "default", "auto")
    assert patcher.model.diffusion_model.double_blocks[0].img_attn.qkv.state_dict()["weight"].dtype == FP8
    result = edit_once(patcher)
    if kind == "scaled_fp8":   # the same quantised weights as the converted file
        expected = edit_once(loader.load_step1x_model(files["comfy_fp8"], "default", "auto"))
        torch.testing.assert_close(result, expected, rtol=0, atol=0)
    else:
        full = edit_once(loader.load_step1x_model(files["bf16"], "default", "auto"))
        assert relative_l2(result, full) < PLAIN_FP8_EDIT_RELATIVE_L2


def test_other_comfyui_quantized_formats_are_refused_with_the_fix(loader, files, tmp_path):
    converted = read_all(files["comfy_fp8"])
    layer = "double_blocks.0.img_attn.qkv"
    out_features, in_features = converted[f"{layer}.weight"].shape
    converted[f"{layer}.weight"] = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
    converted[f"{layer}.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    path = tmp_path / "step1x-nvfp4.safetensors"
    save_file(converted, str(path))
    with pytest.raises(ValueError, match=r"1 layers quantized to a ComfyUI format other than fp8 \(e\.g\. "
                                         r"double_blocks\.0\.img_attn\.qkv, stored U8\).*convert_to_comfy_fp8"):
        loader.load_step1x_model(str(path), "default", "auto")
