"""Parity of model/ with the golden fixtures: every config, input and tolerance from the manifests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.dit import image_io, sampling
from model.dit.branch_sampling import BranchText, sample_per_branch
from model.dit.transformer import Step1XEdit
from model.weights.loader import load_step1x_dit
from model.dit.params import VERSIONS, detect_params
from tests.golden import assert_close, model_sets

SETS = model_sets()
SET_IDS = [s.version for s in SETS]


def build_model(fixtures) -> Step1XEdit:
    cfg = fixtures.manifest["config"]
    model, info = load_step1x_dit(
        str(fixtures.folder / "tiny_model.safetensors"),
        dtype=torch.float32,
        connector_heads=cfg["connector"]["heads_num"],
        axes_dim=cfg["dit"]["axes_dim"],
    )
    assert info.params.version == fixtures.version
    return model.eval()


@pytest.fixture(scope="module", params=SETS, ids=SET_IDS)
def fixture_set(request):
    return request.param


@pytest.fixture(scope="module")
def model(fixture_set):
    return build_model(fixture_set)


def test_detected_config_equals_manifest(fixture_set):
    cfg = fixture_set.manifest["config"]
    sd = fixture_set.tensors("tiny_model.safetensors")
    params = detect_params({k: tuple(v.shape) for k, v in sd.items()}, cfg["connector"]["heads_num"], cfg["dit"]["axes_dim"])
    for field, value in cfg["dit"].items():
        got = getattr(params.dit, field)
        if field == "mlp_ratio":  # the file holds the MLP width; any ratio giving that width is the same model
            assert params.dit.mlp_hidden == int(cfg["dit"]["hidden_size"] * value)
            continue
        assert (list(got) if isinstance(got, tuple) else got) == value, field
    for field, value in cfg["connector"].items():
        assert getattr(params.connector, field) == value, field
    assert params.version == fixture_set.version


def test_connector(fixture_set, model):
    t = fixture_set.tensors("connector.safetensors")
    atol, rtol = fixture_set.tolerance("connector.safetensors")
    with torch.no_grad():
        txt, y = model.connector(t["llm_embedding"], t["t_vec"], t["mask"])
    assert_close(txt, t["txt"], atol, rtol, "connector txt")
    assert_close(y, t["y"], atol, rtol, "connector y")


def test_dit_forward_with_intermediates(fixture_set, model):
    t = fixture_set.tensors("dit_forward.safetensors")
    atol, rtol = fixture_set.tolerance("dit_forward.safetensors")
    captured = {}
    hooks = [model.double_blocks[i].register_forward_hook(
        lambda m, a, out, i=i: captured.update({f"double_{i}_img": out[0], f"double_{i}_txt": out[1]})
    ) for i in range(len(model.double_blocks))]
    hooks += [model.single_blocks[j].register_forward_hook(
        lambda m, a, out, j=j: captured.update({f"single_{j}": out})
    ) for j in range(len(model.single_blocks))]
    inputs = {k: t[k] for k in ("img", "img_ids", "txt_ids", "timesteps", "llm_embedding", "t_vec", "mask")}
    try:
        with torch.no_grad():
            out = model(**inputs)
            txt, vec = model.embed(t["timesteps"], t["llm_embedding"], t["t_vec"], t["mask"], torch.float32)
            pe = model.positions(t["txt_ids"], t["img_ids"])
    finally:
        for h in hooks:
            h.remove()
    assert_close(out, t["out"], atol, rtol, "dit out")
    assert_close(vec, t["vec"], atol, rtol, "vec")
    assert_close(pe.expand_as(t["pe"]), t["pe"], atol, rtol, "pe")
    intermediates = [k for k in t if k.startswith(("double_", "single_"))]
    assert len(intermediates) == 2 * len(model.double_blocks) + len(model.single_blocks)
    for name in intermediates:
        assert_close(captured[name], t[name], atol, rtol, name)


def _sampling_case(fixture_set, model, filename):
    entry = fixture_set.entry(filename)
    t = fixture_set.tensors(filename)
    atol, rtol = fixture_set.tolerance(filename)
    noise = t["noise"]
    latent_h, latent_w = noise.shape[2:]
    timesteps = sampling.get_schedule(entry["num_steps"], (latent_h // 2) * (latent_w // 2))
    assert_close(timesteps, t["timesteps"], atol, rtol, "schedule")
    predictions = []
    hook = model.final_layer.register_forward_hook(lambda m, a, out: predictions.append(out))
    inputs = sampling.SamplingInputs(
        noise=noise, ref_latent=t.get("ref_latent"), cond=t["llm_embedding"][:1], cond_mask=t["mask"][:1],
        uncond=t["llm_embedding"][1:], uncond_mask=t["mask"][1:], timesteps=timesteps,
    )
    try:
        with torch.no_grad():
            final = sampling.sample(
                model, inputs, cfg=entry["cfg_guidance"], renorm_threshold=entry["timesteps_truncate"],
                switches=model.params.switches, compute_dtype=torch.float32,
                device=torch.device("cpu"),
            )
    finally:
        hook.remove()
    assert len(predictions) == entry["num_steps"]
    for step, pred in enumerate(predictions):
        assert_close(pred, t[f"step{step}_pred"], atol, rtol, f"step {step} prediction")
        if f"step{step}_diff_norm" in t:
            n = pred.shape[1] if t.get("ref_latent") is None else pred.shape[1] // 2
            norm = torch.linalg.vector_norm(pred[:1, :n] - pred[1:, :n], dim=-1, keepdim=True)
            assert_close(norm, t[f"step{step}_diff_norm"], atol, rtol, f"step {step} diff norm")
    renormalised = [s for s in range(entry["num_steps"]) if f"step{s}_diff_norm" in t]
    assert renormalised == entry.get("renormalised_steps", [])
    assert_close(final, t["final_latent"], atol, rtol, "final latent")


def test_edit_sampling_loop(fixture_set, model):
    _sampling_case(fixture_set, model, "sampling.safetensors")


def test_per_branch_loop_reproduces_the_batched_v11_loop():
    """Two batch-1 calls per step give the batched loop's result within tolerance (v1.1 fixtures)."""
    fixtures = {s.version: s for s in SETS}["v1.1"]
    entry = fixtures.entry("sampling.safetensors")
    t = fixtures.tensors("sampling.safetensors")
    atol, rtol = fixtures.tolerance("sampling.safetensors")
    latent_h, latent_w = t["noise"].shape[2:]
    timesteps = sampling.get_schedule(entry["num_steps"], (latent_h // 2) * (latent_w // 2))
    zeros = torch.zeros(t["llm_embedding"].shape[1], 3)
    cond = BranchText(t["llm_embedding"][:1], t["mask"][:1], zeros)
    uncond = BranchText(t["llm_embedding"][1:], t["mask"][1:], zeros)
    with torch.no_grad():
        final = sample_per_branch(build_model(fixtures), t["noise"], t["ref_latent"], cond, uncond, timesteps,
                                  entry["cfg_guidance"], entry["timesteps_truncate"], torch.float32,
                                  torch.device("cpu"))
    assert_close(final, t["final_latent"], atol, rtol, "per-branch v1.1 final latent")


def test_renorm_defaults_follow_each_release():
    """v1.2 renormalises every step of a 28-step 1024² edit (the fork's σ·1000 > 0.93); the official
    v1.1 rule (σ > 0.93) only the first ones; v1.0 never (official ``ImageGenerator.denoise``; fork ``__call__``)."""
    times = sampling.get_schedule(28, 4096)[:-1]
    renormalised = {v: int((times > s.renorm_threshold).sum()) for v, s in VERSIONS.items()}
    assert renormalised["v1.2"] == 28
    assert 0 < renormalised["v1.1"] < 28
    assert renormalised["v1.0"] == 0

T2I_SETS = [s for s in SETS if s.has("t2i_sampling.safetensors")]


def test_every_text_to_image_release_has_its_fixture():
    t2i_versions = {v for v, switches in VERSIONS.items() if switches.supports_text_to_image}
    for fixtures in SETS:
        if fixtures.version in t2i_versions:
            assert fixtures in T2I_SETS, f"the {fixtures.version} set must hold t2i_sampling.safetensors"


@pytest.mark.parametrize("fixtures", T2I_SETS, ids=lambda s: s.version)
def test_text_to_image_sampling_loop(fixtures):
    _sampling_case(fixtures, build_model(fixtures), "t2i_sampling.safetensors")


def _schedule_sets():
    return [s for s in SETS if s.has("schedule.safetensors")]


@pytest.mark.parametrize("fixtures", _schedule_sets(), ids=lambda s: s.version)
def test_schedule_table(fixtures):
    entry = fixtures.entry("schedule.safetensors")
    t = fixtures.tensors("schedule.safetensors")
    atol, rtol = fixtures.tolerance("schedule.safetensors")
    for row in entry["table"]:
        got = sampling.get_schedule(row["num_steps"], row["image_seq_len"], shift=row.get("shift", True))
        assert_close(got, t[row["tensor"]], atol, rtol, row["tensor"])
        if "mu" in row:
            assert sampling.schedule_shift(row["image_seq_len"]) == pytest.approx(row["mu"], abs=1e-12)
        if f"{row['tensor']}_bf16" in t:
            assert torch.equal(got.to(torch.bfloat16), t[f"{row['tensor']}_bf16"])


def _sizing_rows():
    rows = []
    for s in SETS:
        for name in ("packing.safetensors", "preprocess.safetensors"):
            if s.has(name):
                rows += [(s.version, name, r) for r in s.entry(name)["sizing_table"]]
    return rows


@pytest.mark.parametrize("version,source,row", _sizing_rows())
def test_sizing_rule(version, source, row):
    if "error" in row:
        with pytest.raises(ValueError, match="aspect ratio is too extreme"):
            sampling.size_for_level(row["w"], row["h"], row["size_level"])
        return
    assert sampling.size_for_level(row["w"], row["h"], row["size_level"]) == (row["w_new"], row["h_new"])
    if "latent_hw" in row:
        assert [row["h_new"] // 8, row["w_new"] // 8] == row["latent_hw"]
        assert (row["h_new"] // 16) * (row["w_new"] // 16) == row["noise_tokens"]


def _pixel_sets():
    return [(s, n) for s in SETS for n in ("packing.safetensors", "preprocess.safetensors") if s.has(n)]


@pytest.mark.parametrize("fixtures,filename", _pixel_sets(), ids=lambda x: getattr(x, "version", x))
def test_packing_ids_and_pixels(fixtures, filename):
    entry = fixtures.entry(filename)
    t = fixtures.tensors(filename)
    latent = t["latent"]
    h, w = latent.shape[2:]
    if "packed" in t:
        assert torch.equal(sampling.pack_latent(latent), t["packed"])
        assert torch.equal(sampling.unpack_latent(t["packed"], h, w), latent)
    n_ids = t["img_ids"].shape[1]
    with_reference = n_ids == 2 * (h // 2) * (w // 2)
    ids = sampling.sequence_ids(h, w, VERSIONS[fixtures.version], with_reference)
    assert torch.equal(ids[None], t["img_ids"])
    example = entry["pixel_example"]
    resample = "lanczos" if filename == "preprocess.safetensors" else "bicubic"
    resized = image_io.resize_to_size_level(t["src_image_u8"].numpy(), example["size_level"], resample)
    assert list(resized.shape[1::-1]) == example["resized_wh"]
    np.testing.assert_array_equal(resized, t["resized_u8"].numpy())
    assert torch.equal(image_io.to_vae_input(resized), t["vae_input"])
    if "decoded" in t:
        decoded_u8 = image_io.decoded_to_uint8(t["decoded"][0])
        np.testing.assert_array_equal(decoded_u8, t["decoded_u8"].numpy())
        restored = image_io.resize_back(decoded_u8, *example["src_wh"])
        np.testing.assert_array_equal(restored, t["output_u8"].numpy())


def edit_loop_inputs(fixtures):
    """``(SamplingInputs, manifest entry)`` of the fixture's edit loop (``sampling.safetensors``)."""
    entry = fixtures.entry("sampling.safetensors")
    t = fixtures.tensors("sampling.safetensors")
    h, w = t["noise"].shape[2:]
    inputs = sampling.SamplingInputs(
        noise=t["noise"], ref_latent=t["ref_latent"], cond=t["llm_embedding"][:1], cond_mask=t["mask"][:1],
        uncond=t["llm_embedding"][1:], uncond_mask=t["mask"][1:],
        timesteps=sampling.get_schedule(entry["num_steps"], (h // 2) * (w // 2)),
    )
    return inputs, entry
