"""model/weights/lora.py against the golden LoRA case (official ``library/lora_module.py``): parsing, ignored
keys, the merge, and the errors for files that are not Step1X-Edit kohya LoRAs. Everything comes from the
manifests."""
from __future__ import annotations

import pytest
import torch

from model.dit.transformer import Step1XEdit
from model.weights.lora import (
    LoraError,
    kohya_targets,
    linear_weight_shapes,
    lora_delta,
    merge_lora,
    merge_weight,
    parse_kohya_lora,
)
from model.dit.params import params_from_config
from tests.golden import assert_close, model_sets

LORA_FILE = "lora.safetensors"
MERGED_FILE = "lora_merged.safetensors"
LORA_SETS = [s for s in model_sets() if s.has(LORA_FILE) and s.has(MERGED_FILE)]
# Multipliers other than the fixture's: the official rule is linear in m (``LoRAInfModule.merge_to``).
OTHER_STRENGTHS = (0.5, -1.25, 2.0)
# The Linears the official ``LoRANetwork`` targets outside the blocks.
INPUT_LAYERS = {"img_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer", "vector_in.out_layer",
                "txt_in"}


@pytest.fixture(scope="module", params=LORA_SETS, ids=[s.version for s in LORA_SETS])
def fixture_set(request):
    return request.param


@pytest.fixture(scope="module")
def linear_shapes(fixture_set) -> dict[str, tuple[int, int]]:
    with torch.device("meta"):
        model = Step1XEdit(params_from_config(fixture_set.manifest["config"], fixture_set.version))
    return linear_weight_shapes(model)


@pytest.fixture(scope="module")
def base(fixture_set) -> dict[str, torch.Tensor]:
    return fixture_set.tensors("tiny_model.safetensors")


@pytest.fixture(scope="module")
def lora_sd(fixture_set) -> dict[str, torch.Tensor]:
    return fixture_set.tensors(LORA_FILE)


@pytest.fixture(scope="module")
def expected(fixture_set) -> dict[str, torch.Tensor]:
    return fixture_set.tensors(MERGED_FILE)


def test_fixture_sets_found():
    assert LORA_SETS, f"no manifest lists both {LORA_FILE} and {MERGED_FILE}"


def test_targets_are_the_official_modules(linear_shapes):
    targets = kohya_targets(linear_shapes)
    covered = {t.weight_key.removesuffix(".weight") for t in targets.values() if t.covered}
    in_blocks = {p for p in linear_shapes if p.startswith(("double_blocks.", "single_blocks."))}
    assert covered == in_blocks | INPUT_LAYERS
    assert not any(p.startswith(("final_layer.", "connector.")) for p in covered)
    for name, target in targets.items():
        assert name == "lora_unet_" + target.weight_key.removesuffix(".weight").replace(".", "_")


def test_merge_matches_official(fixture_set, linear_shapes, base, lora_sd, expected):
    parsed = parse_kohya_lora(lora_sd, linear_shapes)
    merged = merge_lora(base, parsed, fixture_set.entry(LORA_FILE)["multiplier"])
    assert set(merged) == set(expected), "the LoRA must change exactly the weights lora_merged lists"
    atol, rtol = fixture_set.tolerance(MERGED_FILE)
    for key, value in expected.items():
        assert_close(merged[key], value, atol, rtol, key)
        assert not torch.equal(merged[key], base[key]), f"{key} did not change"


def test_ignored_keys_are_the_manifests(fixture_set, linear_shapes, lora_sd):
    ignored = fixture_set.entry(LORA_FILE)["ignored_keys"]
    parsed = parse_kohya_lora(lora_sd, linear_shapes)
    assert set(parsed.ignored) == set(ignored)
    assert parsed.text_encoder == ()
    summary = parsed.ignored_summary()
    assert f"{len(ignored)} module(s)" in summary and sorted(ignored)[0] in summary


@pytest.mark.parametrize("strength", OTHER_STRENGTHS)
def test_strength_scales_the_official_delta(fixture_set, linear_shapes, base, lora_sd, expected, strength):
    parsed = parse_kohya_lora(lora_sd, linear_shapes)
    merged = merge_lora(base, parsed, strength)
    atol, rtol = fixture_set.tolerance(MERGED_FILE)
    for key, value in expected.items():
        target = base[key] + strength * (value - base[key])
        assert_close(merged[key], target, atol * max(1.0, abs(strength)), rtol, f"{key} at strength {strength}")


def test_strength_zero_changes_nothing(linear_shapes, base, lora_sd):
    merged = merge_lora(base, parse_kohya_lora(lora_sd, linear_shapes), 0.0)
    for key, value in merged.items():
        assert torch.equal(value, base[key]), key


def test_merge_casts_back_to_the_weight_dtype(linear_shapes, base, lora_sd):
    parsed = parse_kohya_lora(lora_sd, linear_shapes)
    key, lora = next(iter(parsed.modules.items()))
    weight = base[key].to(torch.bfloat16)
    merged = merge_weight(weight, lora, 1.0)
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, (weight.float() + lora_delta(lora, 1.0)).to(torch.bfloat16))


def _covered_module(lora_sd, linear_shapes) -> tuple[str, str]:
    """(kohya name, official weight key) of the first module of the file the official loader merges."""
    targets = kohya_targets(linear_shapes)
    names = sorted({k.partition(".")[0] for k in lora_sd})
    name = next(n for n in names if n in targets and targets[n].covered)
    return name, targets[name].weight_key


def test_missing_alpha_is_an_error_like_the_official_loader(linear_shapes, lora_sd):
    name, _ = _covered_module(lora_sd, linear_shapes)
    without = {k: v for k, v in lora_sd.items() if k != f"{name}.alpha"}
    with pytest.raises(LoraError, match=rf"{name} has no \.alpha.*official"):
        parse_kohya_lora(without, linear_shapes)


def test_missing_alpha_of_an_ignored_module_is_no_error(fixture_set, linear_shapes, lora_sd):
    ignored = fixture_set.entry(LORA_FILE)["ignored_keys"][0]
    without = {k: v for k, v in lora_sd.items() if k != f"{ignored}.alpha"}
    assert ignored in parse_kohya_lora(without, linear_shapes).ignored


def test_alpha_zero_means_no_scaling(linear_shapes, base, lora_sd):
    """Official ``LoRAModule``: "if alpha == 0 or None, alpha is rank (no scaling)"."""
    name, key = _covered_module(lora_sd, linear_shapes)
    parsed = parse_kohya_lora(dict(lora_sd, **{f"{name}.alpha": torch.zeros(())}), linear_shapes)
    up, down = lora_sd[f"{name}.lora_up.weight"], lora_sd[f"{name}.lora_down.weight"]
    assert parsed.modules[key].scale == 1.0
    assert torch.equal(merge_lora(base, parsed, 1.0)[key], base[key] + up @ down)


def test_underscore_names_resolve_against_real_paths():
    """``a_b.c`` and ``a.b_c`` both read ``lora_unet_a_b_c``: refuse rather than guess."""
    with pytest.raises(LoraError, match=r"a_b\.c\.weight and a\.b_c\.weight, share the kohya name lora_unet_a_b_c, "
                                        r"so a LoRA file cannot say which of them it changes") as error:
        kohya_targets({"a_b.c": (2, 2), "a.b_c": (2, 2)})
    assert "apply the LoRA to the model from 'Load Step1X Model' or 'Load Step1X-Edit v1.2'" in str(error.value)


def test_text_encoder_part_is_reported_not_applied(linear_shapes, lora_sd):
    te = {"lora_te3_model_layers_0_mlp_down_proj.lora_down.weight": torch.zeros(2, 8),
          "lora_te3_model_layers_0_mlp_down_proj.lora_up.weight": torch.zeros(8, 2),
          "lora_te3_model_layers_0_mlp_down_proj.alpha": torch.ones(())}
    parsed = parse_kohya_lora({**lora_sd, **te}, linear_shapes)
    assert parsed.text_encoder == ("lora_te3_model_layers_0_mlp_down_proj",)
    assert "1 text-encoder module(s)" in parsed.ignored_summary()


def _pair(name: str, out: int, rank: int, inp: int, up="lora_up.weight", down="lora_down.weight") -> dict:
    return {f"{name}.{down}": torch.zeros(rank, inp), f"{name}.{up}": torch.zeros(out, rank),
            f"{name}.alpha": torch.ones(())}


def _other_size(lora_sd) -> dict:
    """The fixture LoRA as if made for a model twice as wide (same key names, like a FLUX.1 LoRA)."""
    return {k: v.repeat(2, 1) if k.endswith("lora_up.weight") else v.repeat(1, 2) if k.endswith("lora_down.weight")
            else v for k, v in lora_sd.items()}


FOREIGN_FILES = {
    "sdxl": ({**_pair("lora_unet_input_blocks_4_1_proj_in", 8, 2, 8),
              **_pair("lora_te1_text_model_encoder_layers_0_mlp_fc1", 8, 2, 8)}, "SDXL"),
    "diffusers_flux": ({**_pair("transformer.single_transformer_blocks.0.attn.to_q", 8, 2, 8,
                                up="lora_B.weight", down="lora_A.weight")}, "diffusers/PEFT"),
    "text_encoder_only": (_pair("lora_te3_model_layers_0_mlp_down_proj", 8, 2, 8), "text-encoder"),
    "unknown": ({"model.weight": torch.zeros(2, 2)}, "no LoRA this pack knows"),
    "empty": ({}, "an empty file"),
}


@pytest.mark.parametrize("case", list(FOREIGN_FILES))
def test_wrong_family_is_named(linear_shapes, case):
    state, looks_like = FOREIGN_FILES[case]
    with pytest.raises(LoraError, match="no LoRA for any Step1X-Edit module") as error:
        parse_kohya_lora(state, linear_shapes)
    assert looks_like in str(error.value)


def test_lora_of_another_size_names_flux(linear_shapes, lora_sd):
    with pytest.raises(LoraError, match=r"do not fit this model.*FLUX\.1"):
        parse_kohya_lora(_other_size(lora_sd), linear_shapes)


def test_lycoris_module_is_refused(linear_shapes, lora_sd):
    name, _ = _covered_module(lora_sd, linear_shapes)
    with pytest.raises(LoraError, match="LyCORIS"):
        parse_kohya_lora({**lora_sd, f"{name}.hada_w1_a": torch.zeros(2, 2)}, linear_shapes)


def test_incomplete_pair_is_refused(linear_shapes, lora_sd):
    name, _ = _covered_module(lora_sd, linear_shapes)
    without = {k: v for k, v in lora_sd.items() if k != f"{name}.lora_up.weight"}
    with pytest.raises(LoraError, match=r"has no lora_up\.weight"):
        parse_kohya_lora(without, linear_shapes)
