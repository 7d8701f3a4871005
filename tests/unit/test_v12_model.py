"""v1.2 DiT, loader and sampling against the diffusers-layout golden sets (golden ``v1_2/``).

Configs, inputs and tolerances come from each set's manifest; the diffusers config names are mapped
onto :class:`model.dit.params.DiTParams` here.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from model.dit import sampling
from model.dit.branch_sampling import BranchText, sample_per_branch
from model.weights.checkpoint import CheckpointError
from model.weights.key_map import group_official, official_to_diffusers
from model.weights.loader import inspect_checkpoint, load_step1x_dit
from tests.golden import assert_close, diffusers_sets
from tests.unit.shard_files import INDEX_NAME, write_shards

SETS = diffusers_sets()
pytestmark = pytest.mark.skipif(not SETS, reason="no diffusers-layout (v1.2) golden set")
CPU = torch.device("cpu")


def loader_kwargs(fixtures) -> dict:
    cfg = fixtures.manifest["config"]
    return {"connector_heads": cfg["connector_heads_num"], "axes_dim": cfg["axes_dims_rope"], "dtype": torch.float32}


@pytest.fixture(scope="module", params=SETS, ids=[s.folder.name for s in SETS])
def fixtures(request):
    return request.param


@pytest.fixture(scope="module")
def model(fixtures):
    net, info = load_step1x_dit(str(fixtures.folder / "tiny_model.safetensors"), **loader_kwargs(fixtures))
    assert info.layout.layout == "diffusers"
    return net.eval()


def test_version_and_config_detected_from_keys(fixtures, model):
    cfg = fixtures.manifest["config"]
    p = model.params
    assert p.version == fixtures.version
    assert (p.dit.depth, p.dit.depth_single_blocks) == (cfg["num_layers"], cfg["num_single_layers"])
    assert (p.dit.num_heads, p.dit.head_dim) == (cfg["num_attention_heads"], cfg["attention_head_dim"])
    assert (p.dit.in_channels, p.dit.out_channels) == (cfg["in_channels"], cfg["out_channels"])
    assert (p.dit.context_in_dim, p.dit.vec_in_dim) == (cfg["joint_attention_dim"], cfg["vector_in_dim"])
    assert (p.dit.mlp_ratio, p.dit.theta) == (cfg["mlp_ratio"], cfg["theta"])
    assert list(p.dit.axes_dim) == cfg["axes_dims_rope"]
    assert p.connector.in_channels == cfg["connector_in_channels"]
    assert p.connector.hidden_size == cfg["connector_hidden_size"]
    assert p.connector.depth == cfg["connector_depth"]
    assert p.switches.text_token_mapping == cfg["enable_text_token_mapping"]
    assert list(model.text_token_mapping.weight.shape[::-1]) == cfg["text_token_mapping"]
    assert not p.switches.ref_id_offset_spatial and p.switches.ref_id_offset == 1.0


def test_dit_forward(fixtures, model):
    t = fixtures.tensors("dit_forward.safetensors")
    atol, rtol = fixtures.tolerance("dit_forward.safetensors")
    with torch.no_grad():
        out = model(t["img"], t["img_ids"][None], t["txt_ids"][None], t["timestep"], t["llm_embedding"],
                    t["timestep"], t["mask"], t["text_embeds"], t["text_mask"])
        txt, y = model.connector(t["llm_embedding"], t["timestep"], t["mask"])
        mapped = model.text_token_mapping(t["text_embeds"]) * t["text_mask"][..., None]
    assert_close(out, t["out"], atol, rtol, "dit out")
    assert_close(txt, t["connector_txt"], atol, rtol, "connector txt")
    assert_close(y, t["connector_y"], atol, rtol, "connector y")
    assert_close(mapped, t["text_mapped"], atol, rtol, "text_token_mapping term")
    with pytest.raises(ValueError, match="needs text_embeds"):
        model(t["img"], t["img_ids"][None], t["txt_ids"][None], t["timestep"], t["llm_embedding"],
              t["timestep"], t["mask"])


def _branch(t, role) -> BranchText:
    return BranchText(t[f"{role}_llm_embedding"], t[f"{role}_mask"], t[f"{role}_txt_ids"],
                      t[f"{role}_text_embeds"], t[f"{role}_text_mask"])


def test_sampling_loop_with_separate_branches(fixtures, model):
    entry = fixtures.entry("sampling.safetensors")
    t = fixtures.tensors("sampling.safetensors")
    atol, rtol = fixtures.tolerance("sampling.safetensors")
    latent_h, latent_w = t["noise"].shape[2:]
    n_noise = (latent_h // 2) * (latent_w // 2)
    timesteps = sampling.get_schedule(entry["num_steps"], n_noise)
    assert_close(timesteps, t["sigmas"], atol, rtol, "sigmas")
    assert sampling.schedule_shift(n_noise) == pytest.approx(entry["mu"], abs=1e-12)
    ids = sampling.sequence_ids(latent_h, latent_w, model.params.switches, with_reference=True)
    assert torch.equal(ids, t["img_ids"])
    inputs, predictions = [], []
    hooks = [model.img_in.register_forward_hook(lambda m, a, out: inputs.append(a[0].clone())),
             model.final_layer.register_forward_hook(lambda m, a, out: predictions.append(out[:, :n_noise]))]
    cond, uncond = _branch(t, "cond"), _branch(t, "uncond")
    try:
        with torch.no_grad():
            final = sample_per_branch(model, t["noise"], t["ref_latent"], cond, uncond, timesteps,
                                      entry["true_cfg_scale"], model.params.switches.renorm_threshold,
                                      torch.float32, CPU)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(predictions) == 2 * entry["num_steps"]
    assert len(inputs) == entry["num_steps"]  # the image tokens are embedded once per step for both branches
    for step in range(entry["num_steps"]):
        pred_cond, pred_uncond = predictions[2 * step], predictions[2 * step + 1]
        assert_close(inputs[step], t[f"step{step}_img"], atol, rtol, f"step {step} model input")
        assert_close(pred_cond, t[f"step{step}_pred_cond"], atol, rtol, f"step {step} cond prediction")
        assert_close(pred_uncond, t[f"step{step}_pred_uncond"], atol, rtol, f"step {step} uncond prediction")
        norm = torch.linalg.vector_norm(pred_cond - pred_uncond, dim=-1, keepdim=True)
        assert_close(norm, t[f"step{step}_diff_norm"], atol, rtol, f"step {step} diff norm")
        divisor = torch.where(norm > 1, norm.pow(entry["process_norm_power"]), torch.ones_like(norm))
        assert_close(divisor, t[f"step{step}_divisor"], atol, rtol, f"step {step} divisor")
    threshold = model.params.switches.renorm_threshold
    renormalised = [s for s in range(entry["num_steps"]) if timesteps[s].item() > threshold]
    expected = entry["renormalised_steps"]
    assert renormalised == (list(range(entry["num_steps"])) if expected == "all" else expected)
    assert_close(final, t["final_latent"], atol, rtol, "final latent")


def test_sharded_transformer_folder_loads_like_the_single_file(fixtures, model, tmp_path):
    state = load_file(str(fixtures.folder / "tiny_model.safetensors"))
    write_shards(tmp_path / "Step1X-Edit-v1p2" / "transformer", state)
    for path in (tmp_path / "Step1X-Edit-v1p2", tmp_path / "Step1X-Edit-v1p2" / "transformer",
                 tmp_path / "Step1X-Edit-v1p2" / "transformer" / INDEX_NAME):
        sharded, info = load_step1x_dit(str(path), **loader_kwargs(fixtures))
        assert info.params.version == fixtures.version and info.layout.layout == "diffusers"
        assert len(set(info.file_of.values())) == 2
        for key, value in model.state_dict().items():
            assert torch.equal(sharded.state_dict()[key], value), key


def test_key_map_round_trip_is_exact(fixtures):
    """diffusers → official (the loader's map) → diffusers gives back every tensor bit for bit."""
    diffusers = load_file(str(fixtures.folder / "tiny_model.safetensors"))
    official = {key: source.combine([diffusers[k] for k in source.keys])
                for key, source in group_official(diffusers).items()}
    again = official_to_diffusers(official)
    assert set(again) == set(diffusers)
    for key, value in diffusers.items():
        assert torch.equal(again[key], value), key


def test_incomplete_shard_folder_names_the_missing_shard(fixtures, tmp_path):
    state = load_file(str(fixtures.folder / "tiny_model.safetensors"))
    folder = tmp_path / "transformer"
    write_shards(folder, state, count=2)
    missing = sorted(folder.glob("*.safetensors"))[1]
    missing.unlink()
    with pytest.raises(CheckpointError, match=f"lacks 1 of its 2 shards.*{missing.name}"):
        inspect_checkpoint(str(tmp_path), **{k: v for k, v in loader_kwargs(fixtures).items() if k != "dtype"})
