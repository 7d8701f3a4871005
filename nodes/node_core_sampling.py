"""Step1X Setup for Core Samplers: what core KSampler / SamplerCustomAdvanced need to edit with Step1X-Edit.

The MODEL gets the official schedule shift for the latent's size (core's flow sampling with the official μ,
as core's ModelSamplingFlux node sets it from a width and height) and the Step1X guidance with the chosen
cfg_renorm (nodes/runtime/cfg_guider.py); both conditionings get the reference latent, under the key core's
ReferenceLatent uses. Core schedulers then sample the shifted flow schedule: ``simple`` picks evenly spaced
entries of the model's 10000-entry table (comfy/samplers.py simple_scheduler), so each step's time before the
shift is within 1e-4 of the official one; Step1X Sampler uses the official schedule itself.
"""
from __future__ import annotations

from comfy_api.latest import io

from .runtime.cfg_guider import Step1XGuidance, with_reference
from .runtime.common import CATEGORY, RENORM_CHOICES, RENORM_MODEL_DEFAULT, RENORM_TOOLTIP, renorm_threshold
from .runtime.native_model import check_conditioning, noise_tokens, sampling_latent, step1x_model_sampling


class Step1XCoreSamplerSetup(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XCoreSamplerSetup",
            display_name="Step1X Setup for Core Samplers",
            category=CATEGORY,
            description="Prepares a Step1X-Edit model and its conditioning for core samplers (KSampler, "
                        "SamplerCustomAdvanced): the official schedule shift for the latent's size, Step1X CFG "
                        "with its renormalisation, and the reference latent on both conditionings. Give the sampler "
                        "the same latent (Pack Ref Latent's output for an edit).",
            inputs=[
                io.Model.Input("model", tooltip="From Load Step1X Model (or Step1X LoRA / a cache node)."),
                io.Conditioning.Input("positive", tooltip="Instruction encoding from VLM Encode."),
                io.Conditioning.Input("negative", tooltip="Negative encoding from the same VLM Encode node."),
                io.Latent.Input("ref_latent", optional=True,
                                tooltip="Reference from Pack Ref Latent (editing); also the sampler's latent_image."),
                io.Latent.Input("empty_latent", optional=True,
                                tooltip="Text-to-image only (v1.1): the sampler's empty latent, for its size."),
                io.Combo.Input("cfg_renorm", options=list(RENORM_CHOICES), default=RENORM_MODEL_DEFAULT,
                               tooltip=RENORM_TOOLTIP),
                io.Boolean.Input("shift_schedule", default=True,
                                 tooltip="Resolution-dependent timestep shift (official: on)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the shift and Step1X CFG."),
                io.Conditioning.Output(display_name="positive", tooltip="Instruction with the reference latent."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative with the reference latent."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg_renorm: str, shift_schedule: bool, ref_latent: dict | None = None,
                empty_latent: dict | None = None) -> io.NodeOutput:
        latent, is_edit = sampling_latent(model, ref_latent, empty_latent)
        net = model.model.diffusion_model
        for role, conditioning in (("positive", positive), ("negative", negative)):
            for embedding, options in conditioning:
                check_conditioning(net, embedding, options, role, is_edit)
        model = model.clone()
        model.add_object_patch("model_sampling", step1x_model_sampling(noise_tokens(*latent.shape[2:]), shift_schedule))
        model.set_model_sampler_cfg_function(Step1XGuidance(renorm_threshold(cfg_renorm, net.params)))
        reference = latent if is_edit else None
        return io.NodeOutput(model, with_reference(positive, reference), with_reference(negative, reference))
