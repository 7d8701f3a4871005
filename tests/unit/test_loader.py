"""Loader behaviour on good and bad files, built from the golden tiny models (no constants from them)."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.weights.checkpoint import CheckpointError, quantize_fp8
from model.weights.key_map import group_official, official_to_diffusers
from model.dit.transformer import Step1XEdit
from model.weights.loader import RELEASE_BLOCKS, block_gaps, check_block_layout, inspect_checkpoint, load_step1x_dit
from model.dit.params import FULL_SIZE, block_indices
from tests.golden import model_sets
from tests.unit.shard_files import write_shards

SETS = {s.version: s for s in model_sets()}
V10, V11 = SETS["v1.0"], SETS["v1.1"]


def tiny_state(fixtures) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures.folder / "tiny_model.safetensors"))


def heads(fixtures) -> dict:
    cfg = fixtures.manifest["config"]
    return {"connector_heads": cfg["connector"]["heads_num"], "axes_dim": cfg["dit"]["axes_dim"]}


def load(path, fixtures, **kw):
    return load_step1x_dit(str(path), dtype=torch.float32, **heads(fixtures), **kw)


def assert_same_weights(model, state):
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("fixtures", [V10, V11], ids=["v1.0", "v1.1"])
def test_versions_told_apart_by_keys(fixtures):
    info = inspect_checkpoint(str(fixtures.folder / "tiny_model.safetensors"), **heads(fixtures))
    assert info.params.version == fixtures.version
    assert info.layout.layout == "official" and info.layout.prefix == ""
    switches = info.params.switches
    assert switches.connector_scale_factor == (fixtures.version == "v1.0")
    assert switches.ref_id_offset == (0.0 if fixtures.version == "v1.0" else 1.0)


def test_prefixed_file_loads_identically(tmp_path):
    state = tiny_state(V11)
    path = tmp_path / "prefixed.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(path))
    model, info = load(path, V11)
    assert info.layout.prefix == "model.diffusion_model."
    assert_same_weights(model, state)


def test_diffusers_layout_maps_onto_official_keys(tmp_path):
    """Split the official tensors as the fork's diffusers conversion does, then load: every weight comes back."""
    state = tiny_state(V11)
    hidden = state["img_in.weight"].shape[0]
    mlp = state["double_blocks.0.img_mlp.0.weight"].shape[0]
    diffusers = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "double_blocks" and parts[3] == "qkv":
            names = ("to_q", "to_k", "to_v") if parts[2] == "img_attn" else ("add_q_proj", "add_k_proj", "add_v_proj")
            for name, chunk in zip(names, value.chunk(3)):
                diffusers[f"transformer_blocks.{parts[1]}.attn.{name}.{parts[-1]}"] = chunk
        elif parts[0] == "single_blocks" and parts[2] == "linear1":
            for name, chunk in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), value.split([hidden] * 3 + [mlp])):
                diffusers[f"single_transformer_blocks.{parts[1]}.{name}.{parts[-1]}"] = chunk
        elif key.startswith("final_layer.adaLN_modulation.1."):
            shift, scale = value.chunk(2)
            diffusers[f"norm_out.linear.{parts[-1]}"] = torch.cat((scale, shift))
        else:
            diffusers[key] = value
    renamed = {}
    reverse = {
        "img_in.": "x_embedder.", "txt_in.": "context_embedder.", "time_in.": "time_embed.", "vector_in.": "vec_embed.",
        "final_layer.linear.": "proj_out.",
    }
    block_names = {
        "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear", "img_attn.proj": "attn.to_out.0",
        "txt_attn.proj": "attn.to_add_out", "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
        "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
        "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
        "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
        "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
        "modulation.lin": "norm.linear", "linear2": "proj_out",
        "norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight",
    }
    for key, value in diffusers.items():
        new = key
        for old, repl in reverse.items():
            if key.startswith(old):
                new = repl + key[len(old):]
        parts = key.split(".")
        if parts[0] in ("double_blocks", "single_blocks"):
            head = "transformer_blocks" if parts[0] == "double_blocks" else "single_transformer_blocks"
            inner = ".".join(parts[2:])
            for old, repl in block_names.items():
                if inner == old or inner.startswith(old + "."):
                    new = f"{head}.{parts[1]}.{repl}{inner[len(old):]}"
                    break
        renamed[new] = value
    assert len(group_official(renamed)) == len(state)
    path = tmp_path / "diffusers.safetensors"
    save_file(renamed, str(path))
    model, info = load(path, V11)
    assert info.layout.layout == "diffusers"
    assert_same_weights(model, state)


def test_v11_in_diffusers_shards_loads_as_v11(tmp_path):
    """v1.1 weights written in the diffusers layout (sharded) load as v1.1, every tensor intact."""
    state = tiny_state(V11)
    write_shards(tmp_path / "transformer", official_to_diffusers(state), count=3)
    model, info = load(tmp_path, V11)
    assert info.params.version == "v1.1" and info.layout.layout == "diffusers" and model.text_token_mapping is None
    assert_same_weights(model, state)

@pytest.mark.parametrize("with_scales,fp8_bias", [(True, False), (False, False), (True, True)])
def test_fp8_files_are_dequantised(tmp_path, with_scales, fp8_bias):
    state = tiny_state(V10)
    stored, expected = {}, {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            if with_scales:
                q, scale = quantize_fp8(value)
                stored[key], stored[key[:-6] + "scale_weight"] = q, scale
                expected[key] = q.float() * scale
            else:
                stored[key] = value.to(torch.float8_e4m3fn)
                expected[key] = stored[key].float()
        elif fp8_bias and key.endswith(".bias"):
            stored[key] = value.to(torch.float8_e4m3fn)
            expected[key] = stored[key].float()
        else:
            stored[key] = expected[key] = value
    if with_scales:
        stored["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "fp8.safetensors"
    save_file(stored, str(path))
    model, info = load(path, V10)
    assert info.is_fp8 and info.layout.fp8_scaled == with_scales
    assert_same_weights(model, expected)


def _save(tmp_path, name, tensors):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_bad_files_get_messages_that_name_the_fix(tmp_path):
    state = tiny_state(V10)
    cases = {}
    pickle_path = tmp_path / "model.ckpt"
    pickle_path.write_bytes(pickle.dumps({"a": 1}))
    cases[pickle_path] = "pickle checkpoint"
    renamed_pickle = tmp_path / "renamed.safetensors"
    renamed_pickle.write_bytes(pickle.dumps({"a": 1}) * 10)
    cases[renamed_pickle] = "not a safetensors file"
    full = _save(tmp_path, "full.safetensors", state)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases[truncated] = "is truncated"
    flux = {k: v for k, v in state.items() if not k.startswith("connector.")}
    cases[_save(tmp_path, "flux1-dev.safetensors", flux)] = "FLUX.1-style DiT without Step1X-Edit's connector"
    qwen = {"transformer_blocks.0.img_mod.1.weight": torch.zeros(4, 4), "txt_norm.weight": torch.zeros(4)}
    cases[_save(tmp_path, "qwen_image.safetensors", qwen)] = "Qwen-Image DiT"
    vae = {"encoder.down.0.block.0.conv1.weight": torch.zeros(2, 2, 3, 3), "decoder.up.0.block.0.conv1.weight": torch.zeros(1)}
    cases[_save(tmp_path, "ae.safetensors", vae)] = "it is a VAE"
    last_single = max(int(k.split(".")[1]) for k in state if k.startswith("single_blocks."))
    damaged = {k: v for k, v in state.items() if not k.startswith(f"single_blocks.{last_single}.linear2.")}
    cases[_save(tmp_path, "missing.safetensors", damaged)] = "is missing 2 of the"
    extra = dict(state, **{"guidance_in.in_layer.weight": torch.zeros(2, 2)})
    cases[_save(tmp_path, "extra.safetensors", extra)] = "does not use"
    cases[tmp_path / "nope.safetensors"] = "checkpoint not found"
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load(path, V10)


def test_forced_version_drops_the_v10_factor_with_a_warning(tmp_path, caplog):
    model, info = load(V10.folder / "tiny_model.safetensors", V10, version="v1.1")
    assert info.params.version == "v1.1" and model.connector.scale_factor is None
    assert "ignoring connector.scale_factor" in caplog.text


@pytest.mark.parametrize("hidden, width", [(112, 115), (112, 122), (112, 230), (64, 256)])
def test_detected_mlp_width_is_rebuilt_exactly(hidden, width):
    """Widths that ``int(hidden · width / hidden)`` would round down still give back the file's width."""
    from model.dit.params import detect_params

    shapes = {k: tuple(v.shape) for k, v in tiny_state(V10).items()}
    shapes["img_in.weight"] = (hidden, shapes["img_in.weight"][1])
    shapes["double_blocks.0.img_mlp.0.weight"] = (width, hidden)
    shapes["double_blocks.0.img_attn.norm.query_norm.scale"] = (hidden // 2,)
    params = detect_params(shapes, connector_heads=1, axes_dim=(hidden // 2 - 8, 4, 4))
    assert params.dit.mlp_hidden == width


# ---- block layout: full-width key sets (headers only; a full-width file would be 25 GB) -----------------

@pytest.fixture(scope="module")
def release_keys() -> set[str]:
    """Every official key of a full-width (release) DiT, from a model built on the meta device."""
    with torch.device("meta"):
        return set(Step1XEdit(FULL_SIZE["v1.1"]).state_dict())


def without_blocks(keys: set[str], stack: str, numbers) -> set[str]:
    return {k for k in keys if not any(k.startswith(f"{stack}.{n}.") for n in numbers)}


FULL_WIDTH_DAMAGE = [
    ("double block 6 gone", [("double_blocks", [6])], {"double_blocks": ([6], [])},
     "is damaged: double_blocks 6 is missing ("),
    ("single blocks cut to half", [("single_blocks", range(19, 38))], {"single_blocks": (list(range(19, 38)), [])},
     "is damaged: single_blocks 19–37 are missing ("),
    ("gaps in both stacks", [("double_blocks", [0, 5, 6, 7]), ("single_blocks", [37])],
     {"double_blocks": ([0, 5, 6, 7], []), "single_blocks": ([37], [])},
     "double_blocks 0, 5–7 are missing; single_blocks 37 is missing"),
]


@pytest.mark.parametrize("case, removed, gaps, message", FULL_WIDTH_DAMAGE, ids=[c[0] for c in FULL_WIDTH_DAMAGE])
def test_full_width_file_with_missing_blocks_is_refused_by_name(release_keys, case, removed, gaps, message):
    keys = release_keys
    for stack, numbers in removed:
        keys = without_blocks(keys, stack, numbers)
    assert block_gaps(keys, RELEASE_BLOCKS.hidden_size) == gaps
    with pytest.raises(CheckpointError) as error:
        check_block_layout("step1x-edit-v1p1-official.safetensors", keys, RELEASE_BLOCKS.hidden_size)
    text = str(error.value)
    assert text.startswith("step1x-edit-v1p1-official.safetensors ") and message in text
    assert "has double_blocks 0–18 and single_blocks 0–37" in text and text.endswith("Download the file again.")


def test_release_layout_passes_and_a_surplus_block_is_named(release_keys):
    assert block_gaps(release_keys, RELEASE_BLOCKS.hidden_size) == {}
    check_block_layout("ok.safetensors", release_keys, RELEASE_BLOCKS.hidden_size)
    surplus = release_keys | {"double_blocks.19.img_attn.qkv.weight"}
    with pytest.raises(CheckpointError, match="not a Step1X-Edit release's DiT .*: double_blocks 19 is surplus"):
        check_block_layout("big.safetensors", surplus, RELEASE_BLOCKS.hidden_size)


def test_full_width_diffusers_layout_names_its_own_stacks(release_keys):
    """The v1.2 / v1.1-diffusers key names, mapped through model/weights/key_map.py like the loader maps them."""
    kept = without_blocks(without_blocks(release_keys, "single_blocks", range(19, 38)), "double_blocks", [3])
    with torch.device("meta"):
        state = {k: v for k, v in Step1XEdit(FULL_SIZE["v1.2"]).state_dict().items() if k in kept}
    diffusers_keys = official_to_diffusers(state)
    assert not any(k.startswith(("single_transformer_blocks.19.", "transformer_blocks.3.")) for k in diffusers_keys)
    with pytest.raises(CheckpointError) as error:
        check_block_layout("transformer", group_official(diffusers_keys), RELEASE_BLOCKS.hidden_size, "diffusers")
    assert str(error.value) == (
        "transformer is damaged: transformer_blocks 3 is missing; single_transformer_blocks 19–37 are missing "
        "(every Step1X-Edit release at width 3072 has transformer_blocks 0–18 and single_transformer_blocks 0–37). "
        "Download the file again.")


# ---- block layout: tiny files through the loader ----------------------------------------------------

def test_tiny_file_with_a_gap_in_its_blocks_is_refused(tmp_path):
    """The last single block renumbered one up: the file has a hole where it was."""
    state = tiny_state(V11)
    last = max(block_indices(state, "single_blocks"))
    gapped = {k.replace(f"single_blocks.{last}.", f"single_blocks.{last + 1}.", 1): v for k, v in state.items()}
    with pytest.raises(CheckpointError) as error:
        load(_save(tmp_path, "gapped.safetensors", gapped), V11)
    assert str(error.value) == (
        f"gapped.safetensors is damaged: single_blocks {last} is missing (the blocks of each stack must be "
        "numbered from 0 without gaps). Download the file again.")
    write_shards(tmp_path / "transformer", official_to_diffusers(gapped), count=2)
    with pytest.raises(CheckpointError, match=f"^transformer is damaged: single_transformer_blocks {last} is missing"):
        load(tmp_path, V11)


def test_tiny_file_without_its_first_double_block_is_named_damaged(tmp_path):
    """Block 0 is what layout detection used to look for: without it the file still reads as the official
    layout, and the block check names the gap."""
    state = {k: v for k, v in tiny_state(V11).items() if not k.startswith("double_blocks.0.")}
    with pytest.raises(CheckpointError) as error:
        load(_save(tmp_path, "no-block-0.safetensors", state), V11)
    assert str(error.value).startswith("no-block-0.safetensors is damaged: double_blocks 0 is missing (")


def test_tiny_file_with_fewer_blocks_still_loads(tmp_path):
    """A narrow model may have any block count, as long as the numbers run from 0 without gaps."""
    state = tiny_state(V11)
    last = max(block_indices(state, "single_blocks"))
    fewer = {k: v for k, v in state.items() if not k.startswith(f"single_blocks.{last}.")}
    model, info = load(_save(tmp_path, "fewer.safetensors", fewer), V11)
    assert info.params.dit.depth_single_blocks == last
    assert_same_weights(model, fewer)
