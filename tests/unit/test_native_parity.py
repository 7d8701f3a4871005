"""Every golden sampling case through Step1X Sampler's own path inside ComfyUI (no server): the node's
execute, the native model (nodes/runtime/native_model.py) under core's CFGGuider, calc_cond_batch and Euler KSAMPLER.

Configs, inputs, seeds, guidance and tolerances come from the manifests (model sets and diffusers sets);
the per-step predictions are read at the DiT's final layer, the batch order from core's
``transformer_options["cond_or_uncond"]``.
"""
from __future__ import annotations

import pytest
import torch

from tests.golden import assert_close, diffusers_sets, model_sets
from tests.unit.comfy_support import import_node_module
from tests.unit.vlm_support import import_pack_module

CPU = torch.device("cpu")
EDIT, T2I = "sampling.safetensors", "t2i_sampling.safetensors"
CASES = ([(s, EDIT) for s in model_sets()] + [(s, T2I) for s in model_sets() if s.has(T2I)]
         + [(s, EDIT) for s in diffusers_sets()])
CASE_IDS = [f"{s.version}-{name.removesuffix('.safetensors')}" for s, name in CASES]
COND, UNCOND = 0, 1   # comfy/samplers.py calc_cond_batch: index of the positive and the negative conds


@pytest.fixture(scope="module")
def sampler():
    return import_node_module("nodes.node_sampler")


def is_diffusers(fixtures) -> bool:
    return "connector_heads_num" in fixtures.manifest["config"]


def native_patcher(fixtures):
    """The set's tiny DiT (manifest config) as the native model in a ModelPatcher, float32 on the CPU."""
    import comfy.model_patcher
    import comfy.ops

    loader = import_pack_module("model.weights.loader")
    native = import_pack_module("nodes.runtime.native_model")
    cfg = fixtures.manifest["config"]
    heads, axes = ((cfg["connector_heads_num"], cfg["axes_dims_rope"]) if is_diffusers(fixtures)
                   else (cfg["connector"]["heads_num"], cfg["dit"]["axes_dim"]))
    info = loader.inspect_checkpoint(str(fixtures.folder / "tiny_model.safetensors"), heads, None, axes)
    net = loader.build_step1x_dit(info, dtype=torch.float32, operations=comfy.ops.disable_weight_init,
                                  model_class=native.Step1XDiffusion)
    assert net.params.version == fixtures.version
    return comfy.model_patcher.ModelPatcher(native.Step1XModel(net, torch.float32, torch.float32), CPU, CPU)


def conditioning(fixtures, t) -> tuple[list, list]:
    """The set's instruction and negative as the encoder nodes hand them over."""
    common = import_pack_module("nodes.runtime.common")
    if is_diffusers(fixtures):
        def branch(role):
            return [[t[f"{role}_llm_embedding"], {
                "attention_mask": t[f"{role}_mask"], common.CONDITIONING_MARKER: common.V12_RELEASE,
                common.TXT_IDS_KEY: t[f"{role}_txt_ids"], common.TEXT_EMBEDS_KEY: t[f"{role}_text_embeds"],
                common.TEXT_MASK_KEY: t[f"{role}_text_mask"]}]]
        return branch("cond"), branch("uncond")
    rows = [[[t["llm_embedding"][i:i + 1], {"attention_mask": t["mask"][i:i + 1],
                                             common.CONDITIONING_MARKER: fixtures.version}]] for i in (0, 1)]
    return rows[0], rows[1]


def renorm_label(entry, params, schedule: torch.Tensor) -> str:
    """The cfg_renorm choice that renormalises the steps the manifest names (and, where the manifest gives
    the official threshold, has that threshold)."""
    common = import_pack_module("nodes.runtime.common")
    steps = len(schedule) - 1
    expected = entry.get("renormalised_steps", [])
    expected = list(range(steps)) if expected == "all" else expected
    for label in common.RENORM_CHOICES:
        threshold = common.renorm_threshold(label, params)
        if "timesteps_truncate" in entry and threshold != entry["timesteps_truncate"]:
            continue
        if [s for s, t in enumerate(schedule[:-1].tolist()) if t > threshold] == expected:
            return label
    raise AssertionError(f"no cfg_renorm choice renormalises steps {expected}")


def recording(patcher):
    """A clone of ``patcher`` that records each DiT call's ``(cond_or_uncond, final-layer output)``."""
    import comfy.patcher_extension

    calls, outputs = [], []
    net = patcher.model.diffusion_model
    hook = net.final_layer.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))

    def wrapper(executor, *args, **kwargs):
        result = executor(*args, **kwargs)
        calls.append((list(args[-1]["cond_or_uncond"]), outputs.pop()))
        return result

    clone = patcher.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "record", wrapper)
    return clone, calls, hook


def predictions_by_step(calls) -> list[dict[int, torch.Tensor]]:
    """Per step, branch index → that branch's final-layer output ``[1, N_img, 64]``."""
    steps, current = [], {}
    for order, output in calls:
        for branch, rows in zip(order, output.chunk(len(order))):
            current[branch] = rows
        if {COND, UNCOND} <= set(current):
            steps.append(current)
            current = {}
    assert not current, "a step ran only one CFG branch"
    return steps


@pytest.mark.parametrize("fixtures, filename", CASES, ids=CASE_IDS)
def test_golden_case_through_the_step1x_sampler_node(sampler, fixtures, filename):
    sampling = import_pack_module("model.dit.sampling")
    entry, t = fixtures.entry(filename), fixtures.tensors(filename)
    atol, rtol = fixtures.tolerance(filename)
    patcher = native_patcher(fixtures)
    params = patcher.model.diffusion_model.params
    noise = t["noise"]
    latent_h, latent_w = noise.shape[2:]
    seed = entry["seed"] if "seed" in entry else entry["noise_seed"]
    assert torch.equal(sampling.make_noise(seed, 1, latent_h, latent_w), noise), "the node draws the set's noise"
    schedule = sampling.get_schedule(entry["num_steps"], (latent_h // 2) * (latent_w // 2))
    positive, negative = conditioning(fixtures, t)
    latent_format = patcher.model.latent_format
    latent = {"samples": latent_format.process_out(t["ref_latent"] if "ref_latent" in t else torch.zeros_like(noise))}
    inputs = {"ref_latent": latent} if "ref_latent" in t else {"empty_latent": latent}
    model, calls, hook = recording(patcher)
    try:
        with torch.no_grad():
            (out,) = sampler.Step1XSampler.execute(
                model, positive, negative, seed=seed, steps=entry["num_steps"],
                cfg=entry["cfg_guidance"] if "cfg_guidance" in entry else entry["true_cfg_scale"],
                cfg_renorm=renorm_label(entry, params, schedule), shift_schedule=True, **inputs).result
    finally:
        hook.remove()
    steps = predictions_by_step(calls)
    assert len(steps) == entry["num_steps"]
    n_noise = (latent_h // 2) * (latent_w // 2)
    for step, pred in enumerate(steps):
        if is_diffusers(fixtures):
            assert len(calls) == 2 * entry["num_steps"], "v1.2 texts of different lengths run as separate calls"
            assert_close(pred[COND][:, :n_noise], t[f"step{step}_pred_cond"], atol, rtol, f"step {step} cond")
            assert_close(pred[UNCOND][:, :n_noise], t[f"step{step}_pred_uncond"], atol, rtol, f"step {step} uncond")
        else:
            assert_close(torch.cat((pred[COND], pred[UNCOND])), t[f"step{step}_pred"], atol, rtol, f"step {step} pred")
        if f"step{step}_diff_norm" in t:
            diff = pred[COND][:, :n_noise] - pred[UNCOND][:, :n_noise]
            norm = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
            assert_close(norm, t[f"step{step}_diff_norm"], atol, rtol, f"step {step} diff norm")
    assert_close(latent_format.process_in(out["samples"]), t["final_latent"], atol, rtol, "final latent")
