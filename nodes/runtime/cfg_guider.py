"""Step1X guidance on core's sampling machinery (``comfy/samplers.py``), and the pack's one sampling runner.

:class:`Step1XGuidance` is the official guided velocity (official ``inference.py``
``ImageGenerator.denoise``: ``v = u + cfg·(c − u)``, with ``c − u`` divided by ``‖c − u‖^0.4`` on tokens whose
norm exceeds 1 on the steps with ``t > threshold``, ``process_diff_norm``) as a ``sampler_cfg_function``, so
core's ``sampling_function`` / ``calc_cond_batch`` / ``cfg_function`` path runs it with every pre- and
post-CFG patch. :class:`Step1XGuider` is a ``CFGGuider`` that uses it for the whole run.
:func:`sample_step1x` is the edit of Step1X Sampler and of each Reasoning Edit try: official noise and
schedule (sigmas passed explicitly), core's Euler ``KSAMPLER``, previews, progress and interruption through
the step callback, and the non-finite check on the result.
"""
from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import comfy.samplers
import comfy.utils
import latent_preview
import node_helpers
import torch

from ...model.dit.sampling import check_finite, guided_velocity, pack_latent, unpack_latent
from .native_model import REFERENCE_LATENTS, official_sigmas, noise_tokens, step1x_model_sampling

# comfy/samplers.py KSAMPLER_NAMES: the official update x ← x + (t_next − t)·v (ImageGenerator.denoise).
EULER = "euler"


class Step1XGuidance:
    """``model_options["sampler_cfg_function"]``: official CFG on velocities.

    ``args["cond"]`` / ``args["uncond"]`` are ``x − denoised = σ·v`` ``[B, 16, h, w]`` (flow models,
    ``comfy/model_sampling.py`` ``CONST``); the result is ``σ·v_guided``. Norms are per 2×2 token over its 64
    features, as the official code takes them on packed tokens. With core's cfg = 1 shortcut (no negative
    run) the instruction's velocity is returned unchanged.
    """

    def __init__(self, renorm_threshold: float):
        self.renorm_threshold = renorm_threshold

    def __call__(self, args: dict) -> torch.Tensor:
        cond, uncond = args["cond"], args["uncond"]
        if args.get("input_uncond") is None:
            return cond
        sigma = args["sigma"]
        scale = sigma.reshape(-1, *([1] * (cond.ndim - 1)))
        latent_h, latent_w = cond.shape[2:]
        renormalise = float(sigma.reshape(-1)[0]) > self.renorm_threshold
        velocity = guided_velocity(pack_latent(cond / scale), pack_latent(uncond / scale), args["cond_scale"],
                                   renormalise)
        return unpack_latent(velocity, latent_h, latent_w) * scale


class Step1XGuider(comfy.samplers.CFGGuider):
    """``CFGGuider`` whose guidance is :class:`Step1XGuidance` with ``renorm_threshold``, negative prompt
    always run (the official loop runs it at cfg 1 too)."""

    def __init__(self, model_patcher, renorm_threshold: float):
        super().__init__(model_patcher)
        self.model_options = comfy.model_patcher.create_model_options_clone(model_patcher.model_options)
        self.model_options["sampler_cfg_function"] = Step1XGuidance(renorm_threshold)
        self.model_options["disable_cfg1_optimization"] = True


def with_reference(conditioning: list, reference: torch.Tensor | None) -> list:
    """``conditioning`` with ``reference`` (raw latent) as its one reference latent, the key core's
    ReferenceLatent sets; unchanged for text-to-image."""
    if reference is None:
        return conditioning
    return node_helpers.conditioning_set_values(conditioning, {REFERENCE_LATENTS: [reference]})


def step_callback(model, steps: int, finite: list):
    """The KSAMPLER callback ``(step, x0, x, total)``: ComfyUI's progress bar and latent preview
    (``latent_preview.prepare_callback``), interruption between steps, and one device-side finiteness flag per
    step in ``finite`` (the step's result is finite when its input and data estimate are)."""
    preview = latent_preview.prepare_callback(model, steps)

    def on_step(step: int, x0: torch.Tensor, x: torch.Tensor, total: int) -> None:
        finite.append(torch.isfinite(x0).all() & torch.isfinite(x).all())
        preview(step, x0, x, total)
        mm.throw_exception_if_processing_interrupted()
    return on_step


def sample_step1x(model, positive: list, negative: list, reference: torch.Tensor | None, noise: torch.Tensor,
                  steps: int, cfg: float, renorm_threshold: float, shift: bool = True, seed: int = 0) -> torch.Tensor:
    """One Step1X edit (or text-to-image run) → raw FLUX latent ``[B, 16, h, w]`` on the intermediate device.

    noise: float32 ``[B, 16, h, w]`` in the model's latent scaling (model/dit/sampling.py ``make_noise``);
    reference: raw latent ``[B or 1, 16, h, w]`` or None; positive / negative: Step1X CONDITIONING. The
    model runs with the official schedule for this size (``shift``) and its model sampling, so wrappers that
    read percentages (EasyCache, LazyCache) see the steps the sampler takes.
    Raises ``model.dit.sampling.NonFiniteResult`` when the result holds NaN or ±inf.
    """
    _, _, latent_h, latent_w = noise.shape
    patcher = model.clone()
    patcher.add_object_patch("model_sampling", step1x_model_sampling(noise_tokens(latent_h, latent_w), shift))
    guider = Step1XGuider(patcher, renorm_threshold)
    guider.set_conds(with_reference(positive, reference), with_reference(negative, reference))
    guider.set_cfg(cfg)
    finite: list[torch.Tensor] = []
    samples = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.ksampler(EULER),
                            official_sigmas(steps, latent_h, latent_w, shift),
                            callback=step_callback(patcher, steps, finite),
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    finite[-1] = finite[-1] & torch.isfinite(samples).all()
    check_finite(torch.stack(finite))
    return samples.to(mm.intermediate_device())
