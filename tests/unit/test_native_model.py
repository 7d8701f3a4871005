"""The native Step1X model inside ComfyUI (no server): core samplers, wrappers and caches on it, and the
Step1X Sampler path's batch, progress, interruption, non-finite check and torch.compile.

Model, inputs and tolerances come from the golden v1.1 set's manifest (tests/unit/test_native_parity.py
builds the model the same way)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from tests.golden import assert_close, model_sets
from tests.unit.comfy_support import import_node_module
from tests.unit.test_native_parity import conditioning, native_patcher
from tests.unit.vlm_support import import_pack_module

V11 = {s.version: s for s in model_sets()}["v1.1"]
EDIT = "sampling.safetensors"
STEPS = 6
# Core KSampler's "simple" scheduler reads the model's 10000-entry σ table: its σ are within 1e-3 of the
# official ones (measured 7e-5 at 6 steps, 1.3e-4 at 28), and the tiny model's edit then differs from
# Step1X Sampler's by 1.1e-3 relative L2 (measured); an order of magnitude of headroom.
SIMPLE_SCHEDULER_SIGMA_GAP = 1e-3
KSAMPLER_RELATIVE_L2 = 1e-2


@pytest.fixture(scope="module")
def sampler():
    return import_node_module("nodes.node_sampler")


@pytest.fixture(scope="module")
def native():
    import_node_module("nodes.extension")
    return import_pack_module("nodes.runtime.native_model")


@pytest.fixture(scope="module")
def case(sampler):
    """(patcher, positive, negative, raw reference LATENT, seed, cfg, tolerance) of the v1.1 edit case."""
    entry, t = V11.entry(EDIT), V11.tensors(EDIT)
    patcher = native_patcher(V11)
    positive, negative = conditioning(V11, t)
    latent = {"samples": patcher.model.latent_format.process_out(t["ref_latent"])}
    return patcher, positive, negative, latent, entry["seed"], entry["cfg_guidance"], V11.tolerance(EDIT)


def step1x_sample(sampler, case, model=None, steps=STEPS, latent=None) -> torch.Tensor:
    patcher, positive, negative, ref, seed, cfg, _ = case
    with torch.no_grad():
        (out,) = sampler.Step1XSampler.execute(model or patcher, positive, negative, seed=seed, steps=steps, cfg=cfg,
                                               cfg_renorm="model default", shift_schedule=True,
                                               ref_latent=latent or ref).result
    return out["samples"]


@contextmanager
def block_rows(patcher):
    """Rows of every run of the DiT's block stack (a skipped stack runs none)."""
    rows = []
    hook = patcher.model.diffusion_model.double_blocks[0].register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0]))
    try:
        yield rows
    finally:
        hook.remove()


@pytest.fixture(scope="module")
def plain(sampler, case):
    return step1x_sample(sampler, case)


def test_model_sampling_is_the_official_shifted_schedule(native):
    sampling = import_pack_module("model.dit.sampling")
    rows = [(s, row) for s in model_sets() if s.has("schedule.safetensors")
            for row in s.entry("schedule.safetensors")["table"]]
    assert rows
    for fixtures, row in rows:
        atol, rtol = fixtures.tolerance("schedule.safetensors")
        expected = fixtures.tensors("schedule.safetensors")[row["tensor"]]
        model_sampling = native.step1x_model_sampling(row["image_seq_len"], row.get("shift", True))
        unshifted = torch.linspace(1, 0, row["num_steps"] + 1)
        assert_close(model_sampling.sigma(unshifted), expected, atol, rtol, row["tensor"])
        if "mu" in row:
            assert model_sampling.shift == pytest.approx(row["mu"], abs=1e-12)
    assert native.step1x_model_sampling(1024).shift == pytest.approx(sampling.schedule_shift(1024))
    assert native.Step1XModelConfig().sampling_settings["shift"] == sampling.schedule_shift((512 // 16) ** 2)


def test_guidance_is_the_official_guided_velocity_and_keeps_cores_cfg1_shortcut(native):
    sampling = import_pack_module("model.dit.sampling")
    guidance = import_pack_module("nodes.runtime.cfg_guider").Step1XGuidance
    generator = torch.Generator().manual_seed(0)
    cond_v, uncond_v = (torch.randn(2, 16, 4, 6, generator=generator) * 3 for _ in range(2))
    sigma = torch.full((2,), 0.95)
    scale = sigma[:, None, None, None]
    args = {"cond": cond_v * scale, "uncond": uncond_v * scale, "cond_scale": 6.0, "sigma": sigma,
            "input": torch.zeros(2, 16, 4, 6), "input_uncond": [{}]}
    results = {}
    for threshold, renormalise in ((0.93, True), (0.96, False)):
        got = guidance(threshold)(args) / scale
        velocity = sampling.guided_velocity(sampling.pack_latent(cond_v), sampling.pack_latent(uncond_v), 6.0,
                                            renormalise)
        assert_close(got, sampling.unpack_latent(velocity, 4, 6), 1e-6, 1e-5, f"threshold {threshold}")
        results[renormalise] = got
    assert not torch.allclose(results[True], results[False], atol=1e-3), "renormalisation must change the guidance"
    assert guidance(0.93)({**args, "input_uncond": None}) is args["cond"]


def test_loaded_model_guides_core_samplers_with_the_release_rule(native):
    loader = import_pack_module("nodes.node_loader")
    patcher = loader.load_step1x_model(str(V11.folder / "tiny_model.safetensors"), "default", "auto")
    assert isinstance(patcher.model, native.Step1XModel) and native.is_step1x_model(patcher)
    guidance = patcher.model_options["sampler_cfg_function"]
    assert guidance.renorm_threshold == patcher.model.diffusion_model.params.switches.renorm_threshold == 0.93
    assert not patcher.model_options.get("disable_cfg1_optimization", False)
    assert patcher.model.model_sampling.shift == pytest.approx(native.DEFAULT_SHIFT)


def core_inputs(case, **setup):
    """Step1X Setup for Core Samplers on the case: (model, positive, negative)."""
    node = import_pack_module("nodes.node_core_sampling").Step1XCoreSamplerSetup
    patcher, positive, negative, latent, *_ = case
    return node.execute(patcher, positive, negative, cfg_renorm="model default", shift_schedule=True,
                        ref_latent=latent, **setup).result


def test_sampler_custom_advanced_with_the_official_sigmas_is_step1x_sampler(case, native, plain):
    from comfy_extras import nodes_custom_sampler as custom

    _, _, _, latent, seed, cfg, _ = case
    model, positive, negative = core_inputs(case)
    (guider,) = custom.CFGGuider.execute(model, positive, negative, cfg).result
    (euler,) = custom.KSamplerSelect.execute("euler").result
    (noise,) = custom.RandomNoise.execute(seed).result
    sigmas = native.official_sigmas(STEPS, *latent["samples"].shape[2:])
    with torch.no_grad():
        out, _ = custom.SamplerCustomAdvanced.execute(noise, guider, euler, sigmas, latent).result
    assert torch.equal(out["samples"], plain)


def test_core_ksampler_edits_with_the_official_noise_and_close_to_the_official_schedule(case, native, plain):
    import comfy.sample
    import comfy.samplers

    sampling = import_pack_module("model.dit.sampling")
    _, _, _, latent, seed, cfg, _ = case
    model, positive, negative = core_inputs(case)
    raw = latent["samples"]
    noise = comfy.sample.prepare_noise(raw, seed)
    assert torch.equal(noise, sampling.make_noise(seed, *raw.shape[:1], *raw.shape[2:]))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    official = native.official_sigmas(STEPS, *raw.shape[2:])
    assert 0 < (sigmas - official).abs().max() < SIMPLE_SCHEDULER_SIGMA_GAP
    with torch.no_grad():
        samples = comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", positive, negative, raw, seed=seed)
    assert not torch.equal(samples, plain)
    relative_l2 = float((samples - plain).norm() / plain.norm())
    assert relative_l2 < KSAMPLER_RELATIVE_L2, relative_l2


@pytest.mark.parametrize("node_name", ["EasyCacheNode", "LazyCacheNode"])
def test_core_step_caches_skip_steps_on_the_native_model(sampler, case, plain, node_name):
    from comfy_extras import nodes_easycache

    node = getattr(nodes_easycache, node_name)
    patcher = case[0]
    results = {}
    for threshold in (0.0, 3.0):
        (cached,) = node.execute(patcher, reuse_threshold=threshold, start_percent=0.0, end_percent=1.0,
                                 verbose=False).result
        with block_rows(patcher) as rows:
            results[threshold] = (step1x_sample(sampler, case, cached), sum(rows))
    assert torch.equal(results[0.0][0], plain) and results[0.0][1] == 2 * STEPS
    samples, computed = results[3.0]
    assert computed < 2 * STEPS, "the high threshold must skip steps"
    assert torch.isfinite(samples).all() and not torch.equal(samples, plain)


def teacache_module():
    return import_pack_module("nodes.node_teacache")


def test_teacache_off_and_never_skipping_are_bit_identical(sampler, case, plain):
    teacache = teacache_module()
    patcher = case[0]
    (off,) = teacache.Step1XTeaCache.execute(patcher, rel_l1_thresh=0.0).result
    assert off is patcher
    never = teacache.with_teacache(patcher, 1e-9)
    with block_rows(patcher) as rows:
        assert torch.equal(step1x_sample(sampler, case, never), plain)
    assert sum(rows) == 2 * STEPS


def stack_runs(patcher):
    """A clone of ``patcher`` and the list it fills with ``(σ, rows the block stack ran on)`` per DiT call."""
    import comfy.patcher_extension

    runs = []

    def wrapper(executor, *args, **kwargs):
        with block_rows(patcher) as rows:
            out = executor(*args, **kwargs)
        runs.append((float(args[-1]["sigmas"].reshape(-1)[0]), sum(rows)))
        return out

    clone = patcher.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "stack_runs", wrapper)
    return clone, runs


def test_teacache_skips_middle_steps_per_branch_and_always_runs_the_first_and_last(sampler, case, native, plain,
                                                                                  monkeypatch):
    teacache = teacache_module()
    runs_made = []

    class RecordedRun(teacache.TeaCacheRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs_made.append(self)

    monkeypatch.setattr(teacache, "TeaCacheRun", RecordedRun)
    model, calls = stack_runs(teacache.with_teacache(case[0], teacache.MAX_THRESHOLD))
    samples = step1x_sample(sampler, case, model)
    [run] = runs_made
    assert len(run.branches) == 2, "the instruction and the negative keep their own state"
    for state in run.branches.values():
        assert state.computed + state.skipped == STEPS and state.skipped > 0
    official = native.official_sigmas(STEPS, *case[3]["samples"].shape[2:]).tolist()
    assert [sigma for sigma, _ in calls] == official[:-1], "one batched DiT call per step"
    rows = [count for _, count in calls]
    assert rows[0] == rows[-1] == 2 and min(rows[1:-1]) < 2
    assert sum(rows) == sum(state.computed for state in run.branches.values())
    assert torch.isfinite(samples).all() and not torch.equal(samples, plain)


def test_teacache_computes_only_the_branches_that_need_it(native):
    """A batch of two branches where one may reuse its residual and the other must run: the skipped rows are
    input + residual, the computed rows the block stack's output for those rows alone."""
    teacache = teacache_module()
    net = native_patcher(V11).model.diffusion_model
    params = net.params
    generator = torch.Generator().manual_seed(1)
    tokens, text, hidden = 12, 5, params.dit.hidden_size
    img, txt = torch.randn(2, tokens, hidden, generator=generator), torch.randn(2, text, hidden, generator=generator)
    vec = torch.randn(2, hidden, generator=generator)
    ids = import_pack_module("model.dit.sampling").image_ids(6, 8)
    pe = net.positions(torch.zeros(1, text, 3), ids[None])
    options = {"sample_sigmas": torch.tensor([1.0, 0.5, 0.25, 0.0]), "sigmas": torch.tensor([0.5, 0.5]),
               "uuids": ["cond", "uncond"]}
    run = teacache.TeaCacheRun(threshold=1.0)
    with torch.no_grad():
        shift, scale = net.double_blocks[0].img_mod(vec)[:2]
        probe = import_pack_module("model.dit.layers").modulate(img, shift, scale)
        residual = torch.randn(1, tokens, hidden, generator=generator)
        run.branches["cond"] = teacache.BranchState(probe=probe[:1], residual=residual)
        out = run(net, img, txt, vec, pe, options)
        expected = net.stack(img[1:], txt[1:], vec[1:], pe)
    assert torch.equal(out[:1], img[:1] + residual), "cond: unchanged probe, distance below the threshold"
    assert torch.equal(out[1:], expected), "uncond: no state yet, computed on its own row"
    assert (run.branches["cond"].skipped, run.branches["uncond"].computed) == (1, 1)
    assert torch.equal(run.branches["uncond"].residual, expected - img[1:])


def test_conditioning_core_samplers_cannot_use_is_refused_with_the_fix(case):
    patcher, positive, _, latent, *_ = case
    model = patcher.model
    embedding, options = positive[0]
    noise = torch.zeros_like(latent["samples"])
    reference = latent["samples"]
    good = dict(options, cross_attn=embedding, noise=noise, prompt_type="positive", reference_latents=[reference])
    assert set(model.extra_conds(**good)) >= {"c_crossattn", "attention_mask", "ref_latent"}
    with pytest.raises(ValueError, match="edits one reference image; this conditioning holds 2 reference latents"):
        model.extra_conds(**dict(good, reference_latents=[reference, reference]))
    with pytest.raises(ValueError, match="sample a latent of the reference's size"):
        model.extra_conds(**dict(good, noise=torch.zeros(1, 16, 8, 8)))
    with pytest.raises(ValueError, match="the negative conditioning is not from 'VLM Encode Instruction"):
        model.extra_conds(cross_attn=embedding, noise=noise, prompt_type="negative")
    with pytest.raises(ValueError, match="both sides must be even"):
        model.extra_conds(**dict(good, noise=torch.zeros(1, 16, 5, 8), reference_latents=None))


def test_memory_estimate_counts_text_noise_and_reference_tokens(case):
    model = case[0].model
    params = model.diffusion_model.params
    rows, text, side = 4, 16, 8
    per_token = params.dit.hidden_size * 12 * 4   # float32 activations, 12 per token and hidden unit
    edit = model.memory_required([rows, 16, side, side], {"c_crossattn": [[1, text, 48]], "ref_latent": [[1, 16, 8, 8]]})
    generate = model.memory_required([rows, 16, side, side], {"c_crossattn": [[1, text, 48]]})
    assert edit == rows * (text + 2 * (side // 2) ** 2) * per_token
    assert generate == rows * (text + (side // 2) ** 2) * per_token


def test_a_batch_of_two_edits_each_with_its_own_noise(sampler, case, plain):
    _, _, _, latent, _, _, (atol, rtol) = case
    batch = {**latent, "samples": latent["samples"].repeat(2, 1, 1, 1)}
    samples = step1x_sample(sampler, case, latent=batch)
    assert samples.shape[0] == 2
    assert_close(samples[:1], plain, atol, rtol, "first image of the batch against the single edit")
    assert not torch.allclose(samples[0], samples[1], atol=atol), "the second image has its own noise"


def test_progress_reaches_every_step_and_cancel_stops_the_run(sampler, case):
    import comfy.model_management as mm
    import comfy.utils

    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kwargs: progress.append((value, total)))
    try:
        step1x_sample(sampler, case)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    # Newer ComfyUI throttles the updates it forwards; the first and the last always come through.
    values = [value for value, total in progress if total == STEPS]
    assert len(values) == len(progress) and values[0] == 1 and values[-1] == STEPS and values == sorted(set(values))

    def cancel_after_the_first_step(value, total, preview, **kwargs):
        mm.interrupt_current_processing(True)   # what the Cancel button does

    comfy.utils.set_progress_bar_global_hook(cancel_after_the_first_step)
    try:
        with block_rows(case[0]) as rows, pytest.raises(mm.InterruptProcessingException):
            step1x_sample(sampler, case)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert rows == [2], "the second step must not run"


def test_non_finite_weights_stop_the_sampler_with_the_causes(sampler, case):
    sampling = import_pack_module("model.dit.sampling")
    patcher = native_patcher(V11)
    with torch.no_grad():
        patcher.model.diffusion_model.final_layer.linear.weight[0, 0] = float("nan")
    with pytest.raises(sampling.NonFiniteResult, match=f"first after step 1 of {STEPS}, so it would decode to a black"):
        step1x_sample(sampler, case, patcher)


def test_torch_compile_option_compiles_the_blocks_with_the_eager_result(sampler, case, native, plain, monkeypatch):
    runtime = import_pack_module("nodes.runtime.dit_runtime")
    monkeypatch.setattr(native, "run_compiled_or_eager",
                        lambda net, run: runtime.run_compiled_or_eager(net, run, backend="eager"))
    patcher = native_patcher(V11)
    net = patcher.model.diffusion_model
    net.run_settings.torch_compile = True
    torch._dynamo.reset()
    samples = step1x_sample(sampler, case, patcher)
    assert net.run_settings.blocks_compiled and not net.run_settings.compile_failed
    assert torch.allclose(samples, plain, atol=1e-5, rtol=0)


def test_previews_get_each_steps_data_estimate(sampler, case, plain, monkeypatch):
    import latent_preview

    seen = []

    class Previewer:
        def decode_latent_to_preview_image(self, preview_format, x0):
            seen.append(x0.clone())

    monkeypatch.setattr(latent_preview, "get_previewer", lambda device, latent_format: Previewer())
    step1x_sample(sampler, case)
    assert len(seen) == STEPS and all(x0.shape == plain.shape for x0 in seen)
    # Euler's last step lands on the last data estimate (σ → 0); previews are in the model's latent scaling.
    latent_format = case[0].model.latent_format
    assert_close(seen[-1], latent_format.process_in(plain), 1e-5, 1e-5, "last preview against the result")


def test_core_setup_for_text_to_image_and_its_refusals(case, native):
    node = import_pack_module("nodes.node_core_sampling").Step1XCoreSamplerSetup
    patcher, positive, negative, latent, *_ = case
    empty = {"samples": torch.zeros(1, 16, 8, 12)}
    model, t2i_positive, t2i_negative = node.execute(patcher, positive, negative, cfg_renorm="0.93 (v1.1)",
                                                     shift_schedule=True, empty_latent=empty).result
    assert model is not patcher and "model_sampling" not in patcher.object_patches
    assert model.get_model_object("model_sampling").shift == pytest.approx(native.schedule_shift(4 * 6))
    assert model.model_options["sampler_cfg_function"].renorm_threshold == 0.93
    assert all("reference_latents" not in options for _, options in t2i_positive + t2i_negative)
    _, edit_positive, _ = node.execute(patcher, positive, negative, cfg_renorm="model default", shift_schedule=False,
                                       ref_latent=latent).result
    assert edit_positive[0][1]["reference_latents"][0] is latent["samples"]
    with pytest.raises(ValueError, match="connect exactly one of ref_latent"):
        node.execute(patcher, positive, negative, cfg_renorm="model default", shift_schedule=True)
    with pytest.raises(ValueError, match="not a Step1X-Edit model"):
        node.execute(object(), positive, negative, cfg_renorm="model default", shift_schedule=True, ref_latent=latent)
