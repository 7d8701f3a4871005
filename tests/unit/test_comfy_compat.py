"""nodes/runtime/comfy_compat.py: what the pack needs from ComfyUI is probed at import, by capability."""
from __future__ import annotations

import importlib

import pytest
import torch

from tests.unit.comfy_support import import_node_module


@pytest.fixture
def compat():
    return import_node_module("nodes.runtime.comfy_compat")


def test_this_comfyui_has_one_kind_of_fp8_layer(compat):
    assert compat.FP8_LAYERS in (compat.PER_LAYER_QUANT, compat.SCALED_FP8_OPS)
    assert compat.QWEN_VL_MISSING == []


def test_the_fp8_layers_take_the_packs_scaled_weights(compat):
    """A Linear of fp8_operations loads an fp8 weight with its ``scale_weight`` and computes ``x·(w·s)ᵀ``."""
    generator = torch.Generator().manual_seed(0)
    weight, x = torch.randn(32, 16, generator=generator), torch.randn(3, 16, generator=generator)
    scale = weight.abs().max() / torch.finfo(torch.float8_e4m3fn).max
    fp8 = (weight / scale).to(torch.float8_e4m3fn)
    with torch.device("meta"):
        linear = compat.fp8_operations(False, torch.float32).Linear(16, 32, bias=False)
    linear.load_state_dict({"weight": fp8, "scale_weight": scale}, strict=True, assign=True)
    stored = linear.state_dict()
    assert stored["weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(stored[compat.FP8_SCALE_KEY].float().reshape(()), scale)
    with torch.no_grad():
        torch.testing.assert_close(linear(x), x @ (fp8.float() * scale).T)


def test_a_missing_requirement_stops_the_import_with_its_name(compat, monkeypatch):
    import comfy.ops

    monkeypatch.delattr(comfy.ops, "pick_operations")
    with pytest.raises(ImportError, match=r"cannot run on this ComfyUI: it lacks comfy\.ops\.pick_operations\. "
                                          r"Update ComfyUI"):
        importlib.reload(compat)
    monkeypatch.undo()
    importlib.reload(compat)


def test_without_either_kind_of_fp8_layer_the_import_names_both(compat, monkeypatch):
    import comfy.ops

    monkeypatch.delattr(comfy.ops, "mixed_precision_ops")
    monkeypatch.delattr(comfy.ops, "scaled_fp8_ops", raising=False)
    with pytest.raises(ImportError, match=r"lacks fp8 layers \(comfy\.ops\.mixed_precision_ops reading per-layer "
                                          r"comfy_quant entries, or comfy\.ops\.scaled_fp8_ops\)"):
        importlib.reload(compat)
    monkeypatch.undo()
    importlib.reload(compat)
