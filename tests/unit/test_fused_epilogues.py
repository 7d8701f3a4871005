"""The fused-epilogue forms of the blocks (model/dit/layers.py FusedEpilogues) compute the unfused function.

On CPU they are off by default (so the fp32 parity tests run the reference's exact op order); here
they are forced on and compared in float64, where only summation order differs.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.dit import layers
from model.dit.attention import embed_positions
from model.dit.transformer import Step1XEdit
from model.dit.params import FULL_SIZE

HIDDEN, HEADS, AXES = 64, 4, (4, 6, 6)
BATCH, TXT, IMG = 2, 6, 14


def _random(module: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.1)
    return module


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    ids = torch.randint(0, 10, (BATCH, TXT + IMG, 3), generator=generator)
    return dict(txt=randn(BATCH, TXT, HIDDEN), img=randn(BATCH, IMG, HIDDEN), vec=randn(BATCH, HIDDEN),
                pe=embed_positions(ids, AXES, 10_000).double())


def _blocks():
    single = _random(layers.SingleStreamBlock(HIDDEN, HEADS, 4.0, dtype=torch.float64))
    double = _random(layers.DoubleStreamBlock(HIDDEN, HEADS, 4.0, True, dtype=torch.float64))
    return single, double


def _run(single, double, inputs, fuse):
    single.fuse_epilogues = double.fuse_epilogues = fuse
    x = torch.cat((inputs["txt"], inputs["img"]), dim=1)
    return (single(x, inputs["vec"], inputs["pe"]), *double(inputs["img"], inputs["txt"], inputs["vec"], inputs["pe"]))


def test_fused_blocks_equal_unfused_blocks(inputs):
    single, double = _blocks()
    unfused = _run(single, double, inputs, False)
    fused = _run(single, double, inputs, True)
    for a, b in zip(fused, unfused):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-12
        assert b.abs().max().item() > 0.1  # the comparison is not between zeros


def test_fused_is_off_on_cpu_by_default(inputs):
    single, _ = _blocks()
    x = torch.cat((inputs["txt"], inputs["img"]), dim=1)
    assert single.fuse_epilogues is None
    assert not single._fuse(x, single.linear1, single.linear2)
    single.fuse_epilogues = True
    assert single._fuse(x, single.linear1, single.linear2)


@pytest.mark.parametrize("change", ["weight dtype", "comfy_cast_weights", "weight_function", "bias_function", "no bias"])
def test_layers_that_cast_or_patch_at_call_time_are_not_fused(change):
    linear = torch.nn.Linear(8, 16, dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)
    assert layers.uses_stored_weights(linear, x)
    if change == "weight dtype":
        linear.to(torch.float32)
    elif change == "comfy_cast_weights":
        linear.comfy_cast_weights = True
    elif change == "no bias":
        linear.bias = None
    else:
        setattr(linear, change, [lambda w: 2 * w])
    assert not layers.uses_stored_weights(linear, x)


class ScaledLinear(torch.nn.Linear):
    """A Linear subclass with its own forward (like ComfyUI's cublas or mixed-precision ops)."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_hooks_and_own_forwards_are_respected(inputs):
    x = torch.randn(3, 8, dtype=torch.float64)
    hooked = torch.nn.Linear(8, 16, dtype=torch.float64)
    hooked.register_forward_hook(lambda module, args, out: out * 0)
    assert not layers.uses_stored_weights(hooked, x)
    pre_hooked = torch.nn.Linear(8, 16, dtype=torch.float64)
    pre_hooked.register_forward_pre_hook(lambda module, args: None)
    assert not layers.uses_stored_weights(pre_hooked, x)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        assert not layers.uses_stored_weights(torch.nn.Linear(8, 16, dtype=torch.float64), x)
    finally:
        handle.remove()
    scaled = ScaledLinear(8, 16, dtype=torch.float64)
    assert not layers.uses_stored_weights(scaled, x)
    assert layers.uses_stored_weights(scaled, x, frozenset({ScaledLinear.forward}))


def test_a_hook_on_a_fused_layer_still_reaches_the_output(inputs):
    single, double = _blocks()
    base = _run(single, double, inputs, True)
    double.img_mlp[0].register_forward_hook(lambda module, args, out: out * 0)
    hooked = _run(single, double, inputs, True)
    assert (hooked[1] - base[1]).abs().max().item() > 1e-3
    assert (hooked[1] - _run(single, double, inputs, False)[1]).abs().max().item() == 0.0


def test_only_allowed_linear_classes_are_fused():
    full = FULL_SIZE["v1.1"]
    tiny = dataclasses.replace(full, dit=dataclasses.replace(full.dit, hidden_size=64, num_heads=1, depth=1,
                                                             depth_single_blocks=1, axes_dim=(16, 24, 24)))

    class Operations:
        Linear = ScaledLinear
        LayerNorm = torch.nn.LayerNorm

    with torch.device("meta"):
        net = Step1XEdit(tiny, operations=Operations)
    block = net.single_blocks[0]
    x = torch.empty(1, 2, 64, device="meta")
    block.fuse_epilogues = True
    assert not block._fuse(x, block.linear1, block.linear2)
    net.allow_fused_linears(ScaledLinear)
    assert block._fuse(x, block.linear1, block.linear2)
    assert net.double_blocks[0].plain_linear_forwards == frozenset({ScaledLinear.forward})


def test_fused_blocks_compile(inputs):
    single, double = _blocks()
    expected = _run(single, double, inputs, True)
    torch._dynamo.reset()
    single.compile(backend="eager")
    double.compile(backend="eager")
    try:
        got = _run(single, double, inputs, True)
    finally:
        torch._dynamo.reset()
    for a, b in zip(got, expected):
        assert (a - b).abs().max().item() == 0.0


def test_patched_layer_keeps_its_own_forward(inputs):
    """A queued weight patch (what ComfyUI's low-VRAM LoRA path does) must reach the output even when forced."""
    single, double = _blocks()
    base = _run(single, double, inputs, True)
    single.linear2.weight_function = [lambda w: 2 * w]
    single.linear2.forward = lambda x: torch.nn.functional.linear(x, 2 * single.linear2.weight, single.linear2.bias)
    patched = _run(single, double, inputs, True)
    assert (patched[0] - base[0]).abs().max().item() > 1e-3
    expected = _run(single, double, inputs, False)
    assert (patched[0] - expected[0]).abs().max().item() == 0.0


def test_linear_gelu_tanh_is_the_tanh_gelu_off_cuda():
    generator = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(*s, generator=generator) for s in ((5, 8), (16, 8), (16,)))
    expected = torch.nn.functional.gelu(x @ w.t() + b, approximate="tanh")
    assert torch.allclose(layers.linear_gelu_tanh(x, w, b), expected, atol=1e-6)
    assert not torch.allclose(layers.linear_gelu_tanh(x, w, b), torch.nn.functional.gelu(x @ w.t() + b), atol=1e-6)
