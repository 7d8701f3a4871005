"""The Step1X LoRA node's ComfyUI path (nodes/node_lora.py) inside ComfyUI, without a server.

The golden LoRA goes through ModelPatcher patches onto the DiT built by the pack's own loader node
(float32, bf16 and scaled fp8 storage); ComfyUI merges the patches when it loads the model, the way
it does during a prompt. Everything numeric comes from the manifests.
"""
from __future__ import annotations

import logging
import math

import pytest
import torch

from tests.golden import assert_close, model_sets
from tests.unit.comfy_support import import_node_module
from tests.unit.vlm_support import import_pack_module

LORA_FILE = "lora.safetensors"
MERGED_FILE = "lora_merged.safetensors"
LORA_SETS = [s for s in model_sets() if s.has(LORA_FILE) and s.has(MERGED_FILE)]
STACKED_STRENGTHS = (0.75, -0.5)
OTHER_STRENGTH = -1.5
FP8 = torch.float8_e4m3fn
FP8_MANTISSA_BITS = 3  # float8_e4m3fn: spacing 2^(e-3) between normal numbers
FP8_SUBNORMAL_SPACING = 2.0 ** -9
FP8_MIN_NORMAL = 2.0 ** -6
# comfy.float.manual_stochastic_round_to_float8 rounds to one of the two neighbouring fp8 values, but
# works in float16, so just below a power of two it can land one step lower (error < 2 steps).
FP8_ROUNDING_STEPS = 2


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI importable on CPU; returns the pack's LoRA node module."""
    return import_node_module("nodes.node_lora")


@pytest.fixture(scope="module", params=LORA_SETS, ids=[s.version for s in LORA_SETS])
def fixture_set(request):
    return request.param


@pytest.fixture(scope="module")
def lora_sd(fixture_set):
    return fixture_set.tensors(LORA_FILE)


@pytest.fixture(scope="module")
def expected(fixture_set):
    return fixture_set.tensors(MERGED_FILE)


def load_model(comfy, fixture_set, weight_dtype: str = "default"):
    """The DiT as Load Step1X Model builds it: a ModelPatcher over the native Step1X model."""
    loader = import_pack_module("nodes.node_loader")
    with torch.inference_mode():
        return loader.load_step1x_model(str(fixture_set.folder / "tiny_model.safetensors"), weight_dtype, "auto")


def loaded_weights(patcher) -> dict[str, torch.Tensor]:
    """Let ComfyUI load ``patcher`` (applying its patches, unpatching any other) as a prompt would; the DiT's
    weights under their official names."""
    import comfy.model_management as mm

    with torch.inference_mode():
        mm.load_models_gpu([patcher])
    return {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}


def assert_bit_exact(actual: dict, expected: dict, what: str) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, f"{what}: {key} dtype"
        assert torch.equal(actual[key].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), \
            f"{what}: {key} bits differ"


@pytest.fixture(autouse=True)
def unload_models_after(comfy):
    """Each test starts with nothing loaded, as a fresh prompt queue would."""
    import comfy.model_management as mm

    yield
    mm.unload_all_models()


@pytest.fixture
def model(comfy, fixture_set):
    return load_model(comfy, fixture_set)


def test_strength_one_matches_official_merge_and_unpatches_bit_exactly(comfy, fixture_set, model, lora_sd, expected):
    original = loaded_weights(model)
    strength = fixture_set.entry(LORA_FILE)["multiplier"]
    patched = comfy.apply_step1x_lora(model, lora_sd, strength, LORA_FILE)
    assert patched is not model and patched.model is model.model, "a clone sharing the weights, not a copy"
    merged = loaded_weights(patched)
    atol, rtol = fixture_set.tolerance(MERGED_FILE)
    for key, value in expected.items():
        assert_close(merged[key], value, atol, rtol, key)
    unchanged = {k: v for k, v in original.items() if k not in expected}
    assert_bit_exact({k: merged[k] for k in unchanged}, unchanged, "weights the LoRA does not touch")
    assert_bit_exact(loaded_weights(model), original, "after loading the model without the LoRA")


def test_other_strength_scales_the_official_delta(comfy, fixture_set, model, lora_sd, expected):
    original = loaded_weights(model)
    merged = loaded_weights(comfy.apply_step1x_lora(model, lora_sd, OTHER_STRENGTH, LORA_FILE))
    atol, rtol = fixture_set.tolerance(MERGED_FILE)
    for key, value in expected.items():
        target = original[key] + OTHER_STRENGTH * (value - original[key])
        assert_close(merged[key], target, atol * abs(OTHER_STRENGTH), rtol, key)


def test_stacked_loras_add_and_come_off_one_at_a_time(comfy, fixture_set, model, lora_sd, expected):
    original = loaded_weights(model)
    first = comfy.apply_step1x_lora(model, lora_sd, STACKED_STRENGTHS[0], LORA_FILE)
    both = comfy.apply_step1x_lora(first, lora_sd, STACKED_STRENGTHS[1], LORA_FILE)
    only_first = loaded_weights(first)
    stacked = loaded_weights(both)
    atol, rtol = fixture_set.tolerance(MERGED_FILE)
    total = sum(STACKED_STRENGTHS)
    for key, value in expected.items():
        assert_close(stacked[key], original[key] + total * (value - original[key]), atol, rtol, key)
    assert_bit_exact(loaded_weights(first), only_first, "removing the second LoRA")
    assert_bit_exact(loaded_weights(model), original, "removing both")


def test_bf16_weights_get_the_official_cast_back(comfy, fixture_set, lora_sd):
    """bf16 storage: ComfyUI's fp32 patch then round-to-nearest equals model/weights/lora.py's official rule
    within one bf16 step (only the order of the float32 factors differs)."""
    lora_module = import_pack_module("model.weights.lora")
    model = load_model(comfy, fixture_set, "bf16")
    original = loaded_weights(model)
    merged = loaded_weights(comfy.apply_step1x_lora(model, lora_sd, 1.0, LORA_FILE))
    parsed = lora_module.parse_kohya_lora(lora_sd, lora_module.linear_weight_shapes(model.model.diffusion_model))
    official = lora_module.merge_lora(original, parsed, 1.0)
    for key, value in official.items():
        assert merged[key].dtype == torch.bfloat16
        bf16_step = torch.finfo(torch.bfloat16).eps * value.float().abs()
        assert ((merged[key].float() - value.float()).abs() <= bf16_step).all(), key
    assert_bit_exact(loaded_weights(model), original, "bf16 after unpatching")


def test_alpha_zero_reads_as_rank_like_the_official_loader(comfy, model, lora_sd):
    """ComfyUI alone would scale by 0/rank; the official ``LoRAModule`` uses alpha = rank (scale 1)."""
    lora_module = import_pack_module("model.weights.lora")
    targets = lora_module.kohya_targets(lora_module.linear_weight_shapes(model.model.diffusion_model))
    name = next(n for n in sorted({k.partition(".")[0] for k in lora_sd}) if n in targets and targets[n].covered)
    key = targets[name].weight_key
    original = loaded_weights(model)
    zeroed = dict(lora_sd, **{f"{name}.alpha": torch.zeros(())})
    merged = loaded_weights(comfy.apply_step1x_lora(model, zeroed, 1.0, LORA_FILE))
    up, down = lora_sd[f"{name}.lora_up.weight"], lora_sd[f"{name}.lora_down.weight"]
    assert torch.equal(merged[key], original[key] + up @ down)


def fp8_spacing(x: torch.Tensor) -> torch.Tensor:
    """Distance between neighbouring float8_e4m3fn values around ``|x|`` (x in units of the scale)."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=FP8_MIN_NORMAL)))
    return torch.where(x.abs() < FP8_MIN_NORMAL, torch.full_like(x, FP8_SUBNORMAL_SPACING),
                       2.0 ** (exponent - FP8_MANTISSA_BITS))


def test_scaled_fp8_weights_are_patched_like_comfyui_does(comfy, fixture_set, lora_sd, expected):
    """fp8 storage: each patched weight is the fp32 merge requantised by ComfyUI's stochastic rounding —
    with the layer's own scale, clamped to its range (scaled-fp8 layers), or with a new absmax scale
    (per-layer comfy_quant layers) — and comes back bit-exactly."""
    scale_key = import_node_module("nodes.runtime.comfy_compat").FP8_SCALE_KEY
    model = load_model(comfy, fixture_set, "fp8_e4m3fn")
    original = loaded_weights(model)
    base = fixture_set.tensors("tiny_model.safetensors")
    merged = loaded_weights(comfy.apply_step1x_lora(model, lora_sd, 1.0, LORA_FILE))
    fp8_keys = [k for k in expected if original[k].dtype == FP8]
    assert fp8_keys, "the fp8 model has no fp8 weight the LoRA patches"
    for key in fp8_keys:
        before = original[key].float() * original[key.removesuffix("weight") + scale_key]
        scale = merged[key.removesuffix("weight") + scale_key]
        target = (before + expected[key] - base[key]) / scale
        after = merged[key].float()
        in_range = target.abs() <= torch.finfo(FP8).max
        error = (after[in_range] - target[in_range]).abs()
        assert error.le(FP8_ROUNDING_STEPS * fp8_spacing(target[in_range])).all(), key
        assert torch.equal(after[~in_range], target[~in_range].sign() * torch.finfo(FP8).max), key
        assert (after - target).abs().mean() < (before / scale - target).abs().mean(), f"{key} did not move"
    assert_bit_exact(loaded_weights(model), original, "fp8 after unpatching")


def test_ignored_keys_are_logged_with_count_and_examples(comfy, fixture_set, model, lora_sd, caplog):
    ignored = sorted(fixture_set.entry(LORA_FILE)["ignored_keys"])
    with caplog.at_level(logging.INFO):
        comfy.apply_step1x_lora(model, lora_sd, 1.0, LORA_FILE)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{len(ignored)} module(s)" in m and ignored[0] in m for m in warnings), warnings


@pytest.fixture
def lora_folder(comfy, tmp_path, monkeypatch, lora_sd):
    """models/loras pointing at a temporary folder holding the golden LoRA and a FLUX-like one."""
    import folder_paths
    from safetensors.torch import save_file

    save_file(lora_sd, str(tmp_path / LORA_FILE))
    wider = {k: v.repeat(2, 1) if k.endswith("lora_up.weight") else v for k, v in lora_sd.items()}
    save_file(wider, str(tmp_path / "flux_like.safetensors"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, comfy.LORA_FOLDER, ([str(tmp_path)], {".safetensors"}))
    return tmp_path


def test_node_execute(comfy, model, lora_folder):
    node = comfy.Step1XLoraLoader
    with torch.inference_mode():
        patched = node.execute(model, LORA_FILE, 1.0).result[0]
        assert patched is not model and len(patched.patches) > 0
        assert node.execute(model, LORA_FILE, 0.0).result[0] is model
        with pytest.raises(ValueError, match=r"flux_like\.safetensors: .*FLUX\.1"):
            node.execute(model, "flux_like.safetensors", 1.0)
        with pytest.raises(FileNotFoundError, match="models/loras"):
            node.execute(model, "missing.safetensors", 1.0)
        with pytest.raises(ValueError, match="not a Step1X-Edit model"):
            node.execute(object(), LORA_FILE, 1.0)
    assert "finite" in node.validate_inputs(math.nan, LORA_FILE)
    assert node.validate_inputs(1.0, LORA_FILE) is True
    assert node.validate_inputs(1.0, "missing.safetensors") == (
        "missing.safetensors is not in models/loras: put the LoRA there and press R in ComfyUI to refresh the list.")
