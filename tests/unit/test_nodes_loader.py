"""Load Step1X Model: the DiT sits in a ModelPatcher built from comfy.ops layers, so ComfyUI can stream
it layer by layer (--lowvram) with the same result; fp8 keeps fp8 weights with per-layer scales."""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.environment import TINY_MODELS_DIR
from tests.unit.comfy_support import import_node_module
from tests.unit.vlm_support import import_pack_module

STEPS, LATENT_SIDE, TEXT_LEN = 2, 8, 12
# fp8 block weights (one absmax scale per tensor) against full precision, relative L2 of the tiny
# model's 2-step edit: measured 2.1e-2 with either kind of ComfyUI fp8 layer.
FP8_EDIT_RELATIVE_L2 = 0.05


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


@pytest.fixture(scope="module")
def loader():
    return import_node_module("nodes.node_loader")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    sys.path.insert(0, str(TINY_MODELS_DIR))
    from make_tiny_weights import make_dit

    path = tmp_path_factory.mktemp("dit") / "step1x-edit-v1p1-official.safetensors"
    save_file(make_dit("v1.1", torch.Generator().manual_seed(0)), str(path))
    return str(path)


def edit_once(patcher) -> torch.Tensor:
    sampling = import_pack_module("model.dit.sampling")
    net = patcher.model.diffusion_model
    width = net.params.connector.in_channels
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(1, TEXT_LEN, dtype=torch.int64)
    inputs = sampling.SamplingInputs(
        noise=sampling.make_noise(2, 1, LATENT_SIDE, LATENT_SIDE),
        ref_latent=torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=generator),
        cond=torch.randn(1, TEXT_LEN, width, generator=generator), cond_mask=mask,
        uncond=torch.randn(1, TEXT_LEN, width, generator=generator), uncond_mask=mask,
        timesteps=sampling.get_schedule(STEPS, (LATENT_SIDE // 2) ** 2))
    with torch.no_grad():
        return sampling.sample(net, inputs, 6.0, 0.93, net.params.switches, net.compute_dtype, torch.device("cpu"))


def test_every_linear_is_a_comfy_ops_layer(loader, tiny_checkpoint):
    patcher = loader.load_step1x_model(tiny_checkpoint, "default", "auto")
    linears = [m for m in patcher.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(hasattr(m, "comfy_cast_weights") for m in linears)
    assert import_pack_module("nodes.runtime.native_model").is_step1x_model(patcher)
    assert patcher.model.latent_format.scale_factor == 0.3611


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_streamed_lowvram_load_gives_the_full_load_result(loader, tiny_checkpoint, weight_dtype):
    full = loader.load_step1x_model(tiny_checkpoint, weight_dtype, "auto")
    full.load(torch.device("cpu"), full_load=True)
    expected = edit_once(full)
    streamed = loader.load_step1x_model(tiny_checkpoint, weight_dtype, "auto")
    streamed.load(torch.device("cpu"), lowvram_model_memory=1)   # 1 byte "free": every layer streams
    assert streamed.model.model_lowvram
    is_linear = import_pack_module("model.dit.layers").is_linear
    linears = [m for m in streamed.model.modules() if is_linear(m)]
    assert linears and all(m.comfy_cast_weights for m in linears)
    torch.testing.assert_close(edit_once(streamed), expected, rtol=0, atol=0)


def test_fp8_weight_dtype_keeps_fp8_weights_with_scales(loader, tiny_checkpoint):
    compat = import_node_module("nodes.runtime.comfy_compat")
    patcher = loader.load_step1x_model(tiny_checkpoint, "fp8_e4m3fn", "auto")
    stored = patcher.model.diffusion_model.double_blocks[0].img_attn.qkv.state_dict()
    assert stored["weight"].dtype == torch.float8_e4m3fn
    assert stored[compat.FP8_SCALE_KEY].dtype == torch.float32 and stored[compat.FP8_SCALE_KEY].numel() == 1
    embedder = patcher.model.diffusion_model.img_in.state_dict()   # outside the blocks: compute dtype
    assert embedder["weight"].dtype == patcher.model.diffusion_model.compute_dtype
    assert patcher.model.diffusion_model.compute_dtype in (torch.bfloat16, torch.float32)
    result = edit_once(patcher)
    assert torch.isfinite(result).all()
    full = edit_once(loader.load_step1x_model(tiny_checkpoint, "default", "auto"))
    assert 0 < relative_l2(result, full) < FP8_EDIT_RELATIVE_L2


def test_fast_fp8_falls_back_to_the_fp8_result_without_fp8_matmul(loader, tiny_checkpoint):
    """On a device without fp8 tensor cores (this CPU) fp8_e4m3fn_fast stores fp8 and computes like fp8_e4m3fn."""
    plain = edit_once(loader.load_step1x_model(tiny_checkpoint, "fp8_e4m3fn", "auto"))
    fast_patcher = loader.load_step1x_model(tiny_checkpoint, "fp8_e4m3fn_fast", "auto")
    stored = fast_patcher.model.diffusion_model.double_blocks[0].img_attn.qkv.state_dict()
    assert stored["weight"].dtype == torch.float8_e4m3fn
    torch.testing.assert_close(edit_once(fast_patcher), plain, rtol=0, atol=0)


def test_checkpoint_headers_are_read_once(loader, tiny_checkpoint, monkeypatch):
    model_loader = import_pack_module("model.weights.loader")
    read_headers = model_loader.read_headers
    reads = []

    def counted_read_headers(files):
        reads.append(files.name)
        return read_headers(files)

    monkeypatch.setattr(model_loader, "read_headers", counted_read_headers)
    patcher = loader.load_step1x_model(tiny_checkpoint, "default", "auto")
    assert reads == ["step1x-edit-v1p1-official.safetensors"]
    assert patcher.model.diffusion_model.params.version == "v1.1"


def test_a_missing_file_is_refused_at_validation_with_the_folder_and_the_fix(loader, tiny_checkpoint, monkeypatch):
    import folder_paths

    folder = str(Path(tiny_checkpoint).parent)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, loader.MODEL_FOLDER, ([folder], {".safetensors"}))
    node = loader.Step1XModelLoader
    assert node.validate_inputs(Path(tiny_checkpoint).name) is True
    message = node.validate_inputs("step1x-edit-missing.safetensors")
    assert "step1x-edit-missing.safetensors is not in models/diffusion_models" in message and "press R" in message
    with pytest.raises(FileNotFoundError, match="press R"):
        node.execute("step1x-edit-missing.safetensors", "default", "auto")


def test_the_model_gets_the_patcher_core_loaders_use_and_compiling_opts_out(loader, tiny_checkpoint, monkeypatch):
    """Dynamic VRAM: core loaders build comfy.model_patcher.CoreModelPatcher (the dynamic class when comfy-aimdo
    runs; on this CPU a stand-in), torch.compile takes a plain ModelPatcher as core's TorchCompileModel does, and
    ComfyUI can rebuild the model without dynamic VRAM (clone(disable_dynamic=True), where it has that)."""
    import comfy.model_patcher as mp

    class Dynamic(mp.ModelPatcher):
        def is_dynamic(self):
            return True

    monkeypatch.setattr(mp, "CoreModelPatcher", Dynamic, raising=False)
    patcher = loader.load_step1x_model(tiny_checkpoint, "default", "auto")
    assert type(patcher) is Dynamic and import_pack_module("nodes.runtime.native_model").is_step1x_model(patcher)
    assert type(loader.load_step1x_model(tiny_checkpoint, "default", "auto", torch_compile=True)) is mp.ModelPatcher
    assert type(loader.load_step1x_model(tiny_checkpoint, "default", "auto", disable_dynamic=True)) is mp.ModelPatcher
    if "disable_dynamic" in inspect.signature(mp.ModelPatcher.clone).parameters:
        plain = patcher.clone(disable_dynamic=True)
        assert type(plain) is mp.ModelPatcher and plain.model is not patcher.model
        torch.testing.assert_close(edit_once(plain), edit_once(patcher), rtol=0, atol=0)
