"""Step1X Sampler's input checks: conditioning family, batch sizes, cfg, latent shape; the cfg_renorm
choices it shares with Step1X Reasoning Edit."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.golden import REPO_ROOT
from tests.unit.comfy_support import import_node_module

RENORM_LABELS = ["model default", "1.0 (off, v1.0)", "0.93 (v1.1)", "every step (v1.2 release)"]
RENORM_NODES = ("Step1XSampler", "Step1XReasoningEdit", "Step1XCoreSamplerSetup")
SHIPPED_WORKFLOWS = sorted([*(REPO_ROOT / "workflows").rglob("*.json"),
                            *(REPO_ROOT / "example_workflows").glob("*.json")])


@pytest.fixture(scope="module")
def sampler():
    return import_node_module("nodes.node_sampler")


@pytest.fixture(scope="module")
def common():
    return import_node_module("nodes.runtime.common")


@pytest.fixture(scope="module")
def runtime():
    return import_node_module("nodes.runtime.dit_runtime")


def step1x_conditioning(batch: int, width: int = 16, length: int = 640) -> list:
    mask = torch.zeros(batch, length, dtype=torch.int64)
    mask[:, :5] = 1
    return [[torch.randn(batch, length, width), {"attention_mask": mask, "step1x_edit": "v1.0"}]]


def test_conditioning_from_another_family_is_refused_by_name(sampler):
    qwen_image = [[torch.randn(1, 77, 3584), {"pooled_output": None}]]
    with pytest.raises(ValueError, match="the positive conditioning is not from 'VLM Encode Instruction \\+ Image'"):
        sampler.single_conditioning(qwen_image, "positive")


def test_step1x_conditioning_gives_its_one_entry(sampler):
    conditioning = step1x_conditioning(2)
    embedding, options = sampler.single_conditioning(conditioning, "positive")
    assert embedding is conditioning[0][0] and options is conditioning[0][1]


def test_combined_conditioning_is_refused(sampler):
    combined = step1x_conditioning(1) + step1x_conditioning(1)
    with pytest.raises(ValueError, match="the negative conditioning holds 2 entries"):
        sampler.single_conditioning(combined, "negative")


def test_batch_of_one_is_shared_and_mismatches_are_named(sampler):
    assert sampler.common_batch(positive=3, negative=1, latent=3) == 3
    with pytest.raises(ValueError, match="positive 2, negative 2, latent 3"):
        sampler.common_batch(positive=2, negative=2, latent=3)


@pytest.mark.parametrize("cfg, answer", [(math.nan, "finite"), (math.inf, "finite"), (-0.5, "between"),
                                         (100.5, "between")])
def test_bad_cfg_is_refused_with_the_official_value(sampler, cfg, answer):
    message = sampler.Step1XSampler.validate_inputs(cfg=cfg)
    assert isinstance(message, str) and answer in message and "6.0" in message


def test_official_cfg_is_accepted(sampler):
    assert sampler.Step1XSampler.validate_inputs(cfg=6.0) is True


@pytest.mark.parametrize("shape, words", [((1, 4, 8, 8), "FLUX latents"), ((1, 16, 7, 8), "even")])
def test_latents_that_do_not_pack_are_refused(common, shape, words):
    with pytest.raises(ValueError, match=words):
        common.check_latent(torch.zeros(shape), "reference")


def _tiny_sampling_run(runtime):
    """The tiny fixture model's sampling run, with the run settings a loaded DiT carries."""
    from model.dit import sampling
    from tests.golden import model_sets
    from tests.unit.test_model_parity import edit_loop_inputs, build_model

    fixtures = model_sets()[0]
    net = build_model(fixtures)
    net.run_settings = runtime.DiTRunSettings("the tiny model")
    inputs, entry = edit_loop_inputs(fixtures)

    def run():
        with torch.no_grad():
            return sampling.sample(net, inputs, entry["cfg_guidance"], entry["timesteps_truncate"],
                                   net.params.switches, torch.float32, torch.device("cpu"))
    return net, run


def test_compile_option_off_runs_eagerly(runtime):
    net, run = _tiny_sampling_run(runtime)
    net.run_settings.torch_compile = False
    runtime.run_compiled_or_eager(net, run)
    assert not net.run_settings.blocks_compiled


def test_compiled_blocks_give_the_eager_result(runtime):
    net, run = _tiny_sampling_run(runtime)
    expected = run()
    net.run_settings.torch_compile = True
    torch._dynamo.reset()
    got = runtime.run_compiled_or_eager(net, run, backend="eager")
    assert net.run_settings.blocks_compiled and not net.run_settings.compile_failed
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_compiler_failure_falls_back_to_eager_with_a_warning(runtime, caplog):
    net, run = _tiny_sampling_run(runtime)
    expected = run()

    def broken_backend(graph, example_inputs):
        raise RuntimeError("Cannot find a working triton installation")

    net.run_settings.torch_compile = True
    net.run_settings.checkpoint_name = "tiny.safetensors"
    torch._dynamo.reset()
    got = runtime.run_compiled_or_eager(net, run, backend=broken_backend)
    assert net.run_settings.compile_failed
    assert "torch.compile failed for tiny.safetensors" in caplog.text and "running it uncompiled" in caplog.text
    assert torch.equal(got, expected)
    assert torch.equal(runtime.run_compiled_or_eager(net, run, backend=broken_backend), expected)


def test_a_compiled_run_failing_outside_torch_compiler_errors_runs_uncompiled(runtime, caplog):
    """A tracing failure torch does not wrap as a compiler error (ComfyUI 0.33's fp8 QuantizedTensor under
    dynamic shapes raised an AssertionError) still falls back when the same run succeeds uncompiled."""
    net, run = _tiny_sampling_run(runtime)
    expected = run()
    calls = []

    def fails_unless_eager():
        calls.append(torch.compiler.is_compiling())
        if len(calls) == 1:
            raise AssertionError("Expected return value from __tensor_unflatten__() to have shape equal to (s31, s81)")
        return run()

    net.run_settings.torch_compile = True
    net.run_settings.checkpoint_name = "tiny-fp8.safetensors"
    got = runtime.run_compiled_or_eager(net, fails_unless_eager, backend="eager")
    assert net.run_settings.compile_failed and len(calls) == 2
    assert "torch.compile failed for tiny-fp8.safetensors (AssertionError: Expected return value" in caplog.text
    assert torch.equal(got, expected)


def test_a_run_that_also_fails_uncompiled_raises_its_own_error(runtime):
    net, _ = _tiny_sampling_run(runtime)
    net.run_settings.torch_compile = True

    def broken():
        raise ValueError("reference latent of the wrong size")

    with pytest.raises(ValueError, match="reference latent of the wrong size"):
        runtime.run_compiled_or_eager(net, broken, backend="eager")
    assert not net.run_settings.compile_failed


@pytest.mark.parametrize("error", ["interrupt", "out of memory"])
def test_interrupts_and_out_of_memory_are_not_retried_uncompiled(runtime, error):
    import comfy.model_management as mm

    net, _ = _tiny_sampling_run(runtime)
    net.run_settings.torch_compile = True
    raised = mm.InterruptProcessingException() if error == "interrupt" else torch.OutOfMemoryError("CUDA out of memory")
    calls = []

    def stopped():
        calls.append(1)
        raise raised

    with pytest.raises(type(raised)):
        runtime.run_compiled_or_eager(net, stopped, backend="eager")
    assert calls == [1] and not net.run_settings.compile_failed


def test_quantized_weight_tensors_compile_with_static_shapes(runtime, monkeypatch):
    class QuantizedStandIn(torch.Tensor):
        """A tensor subclass, as ComfyUI 0.33's QuantizedTensor layers hold their fp8 weights."""

    net, run = _tiny_sampling_run(runtime)
    dynamic_args = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: dynamic_args.append(kwargs["dynamic"]))
    net.run_settings.torch_compile = True
    assert not runtime.has_tensor_subclass_weights(net)
    runtime.run_compiled_or_eager(net, run, backend="eager")
    blocks = len(net.double_blocks) + len(net.single_blocks)
    assert dynamic_args == [None] * blocks   # plain weights: torch's automatic dynamic shapes

    weight = net.final_layer.linear.weight
    net.final_layer.linear.weight = torch.nn.Parameter(weight.detach().as_subclass(QuantizedStandIn),
                                                       requires_grad=False)
    assert runtime.has_tensor_subclass_weights(net)
    net.run_settings.blocks_compiled, dynamic_args[:] = False, []
    runtime.run_compiled_or_eager(net, run, backend="eager")
    assert dynamic_args == [False] * blocks


def test_release_mismatch_is_logged(sampler, caplog):
    sampler.warn_on_release_mismatch(step1x_conditioning(1), "v1.1")
    assert "encoded as Step1X-Edit v1.0 but the model is v1.1" in caplog.text
    caplog.clear()
    sampler.warn_on_release_mismatch(step1x_conditioning(1), "v1.0")
    assert caplog.text == ""


@pytest.mark.parametrize("version, used, warned", [
    ("v1.2", "lanczos", True), ("v1.2", "bilinear-antialias", False), ("v1.1", "bicubic", True),
    ("v1.1", "lanczos", False), ("v1.0", "bicubic", False), ("v1.2", None, False),
])
def test_resize_filter_mismatch_is_logged_with_the_fix(common, caplog, version, used, warned):
    params = import_node_module("model.dit.params").Step1XParams(version=version)
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    if used:
        latent["step1x_resize_filter"] = used
    common.warn_on_resize_mismatch(latent, params)
    expected = params.switches.input_resize
    assert (f"resized with {used} but Step1X-Edit {version} resizes with {expected}" in caplog.text) == warned
    assert (f"set Pack Ref Latent's resize_filter to {expected}" in caplog.text) == warned


def cfg_renorm_input(node):
    (renorm,) = [spec for spec in node.define_schema().inputs if spec.id == "cfg_renorm"]
    return renorm


def test_sampler_reasoning_edit_and_core_setup_offer_the_same_renorm_choices(sampler):
    reasoning = import_node_module("nodes.node_reasoning_edit")
    core = import_node_module("nodes.node_core_sampling")
    sampler_renorm = cfg_renorm_input(sampler.Step1XSampler)
    reasoning_renorm = cfg_renorm_input(reasoning.Step1XReasoningEdit)
    core_renorm = cfg_renorm_input(core.Step1XCoreSamplerSetup)
    assert sampler_renorm.options == reasoning_renorm.options == core_renorm.options == RENORM_LABELS
    assert sampler_renorm.default == core_renorm.default == "model default"
    assert reasoning_renorm.default == "every step (v1.2 release)"
    assert sampler_renorm.tooltip == reasoning_renorm.tooltip == core_renorm.tooltip
    for threshold in ("t > 1,", "t > 0.93,", "t > 0.00093,"):
        assert threshold in sampler_renorm.tooltip


@pytest.mark.parametrize("version, model_default", [("v1.0", 1.0), ("v1.1", 0.93), ("v1.2", 0.00093)])
def test_renorm_labels_resolve_to_their_thresholds(version, model_default):
    common = import_node_module("nodes.runtime.common")
    params = import_node_module("model.dit.params").Step1XParams(version=version)
    resolved = [common.renorm_threshold(label, params) for label in RENORM_LABELS]
    assert resolved == pytest.approx([model_default, 1.0, 0.93, 0.00093], rel=1e-12, abs=0)


@pytest.mark.parametrize("path", SHIPPED_WORKFLOWS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_shipped_workflows_use_the_renorm_labels(path):
    workflow = json.loads(path.read_text())
    if "nodes" in workflow:   # UI format: widget values by position, the renorm label among them
        renorm_values = [[value for value in node["widgets_values"] if value in RENORM_LABELS]
                         for node in workflow["nodes"] if node["type"] in RENORM_NODES]
        assert renorm_values and all(len(values) == 1 for values in renorm_values), renorm_values
    else:
        labels = [node["inputs"]["cfg_renorm"] for node in workflow.values() if node["class_type"] in RENORM_NODES]
        assert labels and all(label in RENORM_LABELS for label in labels), labels
