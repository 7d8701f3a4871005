"""Step1X-Edit as a native ComfyUI model, shaped like core's edit models (``comfy/model_base.py`` ``Flux``
with Kontext's ``reference_latents``, ``QwenImage``), so core samplers, guiders, wrappers and patches run it.

* :class:`Step1XDiffusion`: ``model.dit.transformer.Step1XEdit`` with ComfyUI's diffusion-model call
  ``(x [B, 16, h, w], timesteps [B], context, transformer_options, **conds)`` → velocity ``[B, 16, h, w]``,
  run through ``WrappersMP.DIFFUSION_MODEL`` as ``comfy/ldm/flux/model.py`` ``Flux.forward`` does (EasyCache
  attaches there). It packs the latent into 2×2 tokens, appends the reference tokens and the ids, and runs
  ``embed`` / ``positions`` / ``stack`` / ``final_layer`` of the pure-torch model.
* :class:`Step1XModel`: a ``comfy.model_base.BaseModel`` (FLUX latent format, flow sampling with the
  official shift) whose ``extra_conds`` turn the VLM states, mask, v1.2 text extras and the reference
  latent of a conditioning into model conds. Conds that cannot concatenate (v1.2 instruction and negative
  of different lengths) run as separate DiT calls in core's ``calc_cond_batch``.
* :class:`Step1XModelSampling`, :func:`step1x_model_sampling`: core's ``ModelSamplingFlux`` flow sampling with
  the official resolution-dependent shift.
"""
from __future__ import annotations

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.supported_models_base
import torch

from ...model.dit.attention import set_attention_backend
from ...model.dit.sampling import (PATCH, PIXELS_PER_TOKEN, get_schedule, pack_latent, schedule_shift, sequence_ids,
                                   unpack_latent)
from ...model.dit.transformer import Step1XEdit
from .common import (CONDITIONING_MARKER, DEFAULT_SIZE_LEVEL, FLUX_LATENT_CHANNELS, TEXT_EMBEDS_KEY, TEXT_MASK_KEY,
                     TXT_IDS_KEY, V12_RELEASE, check_latent, warn_on_resize_mismatch)
from .dit_runtime import DiTRunSettings, run_compiled_or_eager

# Core's conditioning key for edit references (comfy_extras/nodes_edit_model.py ReferenceLatent;
# model_base.py Flux.extra_conds reads it); the pack's samplers attach the reference the same way.
REFERENCE_LATENTS = "reference_latents"
# Model-cond names, i.e. Step1XDiffusion.forward's keywords; c_crossattn arrives as ``context``
# (model_base.py BaseModel._apply_model).
CONTEXT, MASK, REFERENCE, TXT_IDS, TEXT_EMBEDS, TEXT_MASK = (
    "c_crossattn", "attention_mask", "ref_latent", "txt_ids", "text_embeds", "text_mask")
# transformer_options key of a block-stack replacement ``(net, img, txt, vec, pe, transformer_options) →
# stack output`` (``net.run_stack`` computes the real one): how a step cache (nodes/node_teacache.py) takes over
# the 19 + 38 blocks inside the diffusion-model executor.
BLOCK_STACK_KEY = "step1x_block_stack"
# Rough peak activation memory per joint token and hidden unit of one batch row, in elements: the
# single-block linear1 output (7·H with mlp ratio 4), attention and residual copies.
ACTIVATION_ELEMENTS_PER_TOKEN_PER_HIDDEN = 12
# The model's own shift when nothing sets one (core KSampler): the official default working size,
# size level 512 (inference.py main), μ = 0.63.
DEFAULT_SHIFT = schedule_shift((DEFAULT_SIZE_LEVEL // PIXELS_PER_TOKEN) ** 2)


def noise_tokens(latent_h: int, latent_w: int) -> int:
    """Image tokens of a ``[B, 16, h, w]`` latent: official ``get_schedule``'s ``image_seq_len``."""
    return (latent_h // PATCH) * (latent_w // PATCH)


class Step1XModelSampling(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
    """Core's flow sampling (what model_base.py ``model_sampling`` builds for ``ModelType.FLUX``), except that
    a full-denoise start is the noise itself: the official loop starts from the noise at t₀ = get_schedule's
    first value, which float32 rounds to 1 − 6e-8 for most sizes, where ``CONST.noise_scaling`` would mix in
    6e-8 of the latent."""

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        if max_denoise:
            return noise * getattr(self, "noise_scale", 1.0)   # the noise scale newer ComfyUI supports
        return super().noise_scaling(sigma, noise, latent_image, max_denoise)


def step1x_model_sampling(image_seq_len: int, shift: bool = True) -> Step1XModelSampling:
    """The model sampling with the official shift for ``image_seq_len`` noise tokens (official ``sampling.py``
    ``get_schedule``: μ on the line through (256, 0.5) and (4096, 1.15)); ``shift=False`` gives μ = 0, the
    unshifted schedule."""
    sampling = Step1XModelSampling(Step1XModelConfig())
    sampling.set_parameters(shift=schedule_shift(image_seq_len) if shift else 0.0)
    return sampling


def official_sigmas(steps: int, latent_h: int, latent_w: int, shift: bool = True) -> torch.Tensor:
    """The official schedule as sigmas ``[steps + 1]`` float32, 1 → 0 (model/dit/sampling.py ``get_schedule``)."""
    return get_schedule(steps, noise_tokens(latent_h, latent_w), shift=shift)


class Step1XModelConfig(comfy.supported_models_base.BASE):
    """The model config (``comfy/supported_models_base.py`` ``BASE``): FLUX latents, the network is built by
    the pack's loader (model/weights/loader.py) rather than from ``unet_config``."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.Flux
    sampling_settings = {"shift": DEFAULT_SHIFT}
    # Compute dtypes the DiT runs in (Load Step1X Model's choice too): the official run is bf16 (inference.py);
    # fp16 overflows FLUX-type DiTs.
    supported_inference_dtypes = [torch.bfloat16, torch.float32]

    def __init__(self):
        super().__init__(dict(self.unet_config))


class Step1XDiffusion(Step1XEdit):
    """The DiT with ComfyUI's diffusion-model call; parameters keep the official names.

    ``dtype`` is the weight storage (as core models expose it; :class:`Step1XModel` sets it); the loader
    sets ``compute_dtype`` and ``run_settings`` (file name, attention backend, torch.compile) for its file.
    """

    def __init__(self, params, dtype=None, device=None, operations=torch.nn):
        super().__init__(params, dtype=dtype, device=device, operations=operations)
        self.dtype = self.compute_dtype = dtype or torch.get_default_dtype()
        self.run_settings = DiTRunSettings(f"Step1X-Edit {params.version}")

    def forward(self, x, timesteps, context=None, attention_mask=None, ref_latent=None, txt_ids=None,
                text_embeds=None, text_mask=None, control=None, transformer_options={}, **kwargs):
        if control is not None:
            raise ValueError("Step1X-Edit has no ControlNet; remove the ControlNet from this graph.")
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(x, timesteps, context, attention_mask, ref_latent, txt_ids, text_embeds, text_mask,
                  transformer_options, **kwargs)

    def _forward(self, x, timesteps, context, attention_mask, ref_latent, txt_ids, text_embeds, text_mask,
                 transformer_options, **kwargs):
        """Velocity ``[B, 16, h, w]`` of the noisy latent ``x [B, 16, h, w]`` (official ``Step1XEdit.forward`` on
        ``[noisy tokens; reference tokens]``, the noisy half kept).

        context ``[B, L, D]`` VLM states, attention_mask ``[B, L]``; ref_latent ``[B, 16, h, w]`` in the model's
        latent scaling or None (text-to-image); v1.2: txt_ids ``[B, L, 3]`` as int32 bit patterns of float32
        ids (:func:`float_bits`), text_embeds ``[B, L, D]``, text_mask ``[B, L]``.
        """
        batch, _, latent_h, latent_w = x.shape
        dtype = x.dtype
        set_attention_backend(self.run_settings.attention_backend)
        img = pack_latent(x)
        n_noise = img.shape[1]
        if ref_latent is not None:
            img = torch.cat((img, pack_latent(ref_latent.to(dtype))), dim=1)
        ids = sequence_ids(latent_h, latent_w, self.params.switches, ref_latent is not None, device=x.device)[None]
        if txt_ids is None:
            txt_ids = torch.zeros((1, context.shape[1], 3), dtype=torch.float32, device=x.device)
        else:
            txt_ids = txt_ids.view(torch.float32)
            ids = ids.expand(batch, -1, -1)
        if attention_mask is None:
            attention_mask = torch.ones(context.shape[:2], dtype=torch.int64, device=x.device)
        # The official loop feeds t in the compute dtype to both the time embedding and the connector.
        t = timesteps.to(dtype)
        txt, vec = self.embed(t, context, t, attention_mask, dtype, text_embeds, text_mask)
        pe = self.positions(txt_ids, ids)
        img = self.img_in(img)
        replacement = transformer_options.get(BLOCK_STACK_KEY)
        if replacement is None:
            out = self.run_stack(img, txt, vec, pe)
        else:
            out = replacement(self, img, txt, vec, pe, transformer_options)
        out = self.final_layer(out, vec)[:, :n_noise]
        return unpack_latent(out, latent_h, latent_w)

    def run_stack(self, img, txt, vec, pe):
        """:meth:`stack`, under torch.compile when the loader asked for it (nodes/runtime/dit_runtime.py)."""
        return run_compiled_or_eager(self, lambda: self.stack(img, txt, vec, pe))



def float_bits(ids: torch.Tensor) -> torch.Tensor:
    """float32 ids as their int32 bit pattern. ``BaseModel._apply_model`` casts floating conds to the compute
    dtype (bf16 would round v1.2's fractional positions) and only moves integer ones;
    :meth:`Step1XDiffusion._forward` views them back."""
    return ids.to(torch.float32).contiguous().view(torch.int32)


def not_step1x_message(role: str) -> str:
    return (f"the {role} conditioning is not from 'VLM Encode Instruction + Image' (it has no '{CONDITIONING_MARKER}' "
            "marker; e.g. Qwen-Image or CLIP Text Encode conditioning). Step1X-Edit needs its own encoding: connect "
            "the VLM Encode node's output.")


def needs_v12_model_message(version: str) -> str:
    return (f"this MODEL is {version}; v1.2 conditioning needs the Step1X-Edit v1.2 DiT ('Load Step1X-Edit v1.2' or a "
            "v1.2 diffusers file in 'Load Step1X Model').")


def sampling_latent(model, ref_latent: dict | None, empty_latent: dict | None) -> tuple[torch.Tensor, bool]:
    """The latent a Step1X sampling node runs on and whether it edits (a reference) or generates (an empty
    latent for text-to-image), after the checks both sampling nodes make (ValueError naming the fix)."""
    if not is_step1x_model(model):
        raise ValueError("this MODEL is not a Step1X-Edit model: load it with the 'Load Step1X Model' node.")
    if (ref_latent is None) == (empty_latent is None):
        raise ValueError("connect exactly one of ref_latent (editing, from Pack Ref Latent) and empty_latent "
                         "(text-to-image, from EmptySD3LatentImage).")
    is_edit = ref_latent is not None
    latent = (ref_latent if is_edit else empty_latent)["samples"]
    check_latent(latent, "reference" if is_edit else "empty")
    if is_edit:
        warn_on_resize_mismatch(ref_latent, model.model.diffusion_model.params)
    return latent, is_edit


def check_conditioning(net: Step1XDiffusion, embedding: torch.Tensor, options: dict, role: str,
                       is_edit: bool) -> None:
    """Refuse conditioning this DiT cannot use, naming the encoder node to use (ValueError)."""
    params, name = net.params, net.run_settings.checkpoint_name
    release = options.get(CONDITIONING_MARKER)
    if release is None:
        raise ValueError(not_step1x_message(role))
    if (release == V12_RELEASE) != params.switches.text_token_mapping:
        if release == V12_RELEASE:
            raise ValueError(needs_v12_model_message(params.version))
        raise ValueError(f"{name} is Step1X-Edit {params.version}: encode with 'Step1X v1.2 VLM Encode' (its own "
                         "Qwen2.5-VL), not 'VLM Encode Instruction + Image'.")
    if embedding.shape[-1] != params.connector.in_channels:
        raise ValueError(
            f"the {role} conditioning is {embedding.shape[-1]} wide but {name} expects {params.connector.in_channels} "
            "(its Qwen2.5-VL hidden size): the text encoder does not match this checkpoint (Step1X-Edit uses "
            "Qwen2.5-VL-7B-Instruct, 3584).")
    if not is_edit and not params.switches.supports_text_to_image:
        if release == V12_RELEASE:
            raise ValueError("v1.2 conditioning edits an image: connect ref_latent (Pack Ref Latent).")
        raise ValueError(f"{name} is Step1X-Edit {params.version}, which only edits; text-to-image needs the v1.1 "
                         "file (step1x-edit-v1p1-official.safetensors).")


def check_latent_size(latent_h: int, latent_w: int, role: str) -> None:
    if latent_h % PATCH or latent_w % PATCH:
        raise ValueError(f"the {role} latent is {latent_w}×{latent_h}; both sides must be even (image sides "
                         f"multiples of {PIXELS_PER_TOKEN} px).")


class Step1XModel(comfy.model_base.BaseModel):
    """The ComfyUI model around :class:`Step1XDiffusion` (``diffusion_model``, official parameter names under
    ``diffusion_model.``)."""

    def __init__(self, net: Step1XDiffusion, weight_dtype: torch.dtype, compute_dtype: torch.dtype, device=None):
        config = Step1XModelConfig()
        config.set_inference_dtype(weight_dtype, compute_dtype if compute_dtype != weight_dtype else None)
        super().__init__(config, comfy.model_base.ModelType.FLUX, device=device)
        self.model_sampling = Step1XModelSampling(config)
        net.dtype = weight_dtype
        self.diffusion_model = net.eval()
        if hasattr(mm, "archive_model_dtypes"):   # what BaseModel does with the networks it builds (0.33+)
            mm.archive_model_dtypes(self.diffusion_model)

    def extra_conds(self, **kwargs):
        """One conditioning entry → model conds (``CONDRegular``: equal shapes batch, other shapes run apart)."""
        out = super().extra_conds(**kwargs)
        embedding = kwargs["cross_attn"]
        noise = kwargs["noise"]
        references = kwargs.get(REFERENCE_LATENTS) or []
        role = kwargs.get("prompt_type", "positive")
        check_conditioning(self.diffusion_model, embedding, kwargs, role, is_edit=bool(references))
        check_latent_size(*noise.shape[2:], "sampled")
        out[CONTEXT] = comfy.conds.CONDRegular(embedding)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(embedding.shape[:2], dtype=torch.int64)
        out[MASK] = comfy.conds.CONDRegular(mask.to(torch.int64))
        if references:
            out[REFERENCE] = comfy.conds.CONDRegular(self.reference(references, noise.shape))
        if kwargs.get(CONDITIONING_MARKER) == V12_RELEASE:
            out[TXT_IDS] = comfy.conds.CONDRegular(float_bits(kwargs[TXT_IDS_KEY])[None])
            out[TEXT_EMBEDS] = comfy.conds.CONDRegular(kwargs[TEXT_EMBEDS_KEY])
            out[TEXT_MASK] = comfy.conds.CONDRegular(kwargs[TEXT_MASK_KEY].to(torch.int64))
        return out

    def reference(self, references: list, noise_shape) -> torch.Tensor:
        """The one reference latent (raw, ``[B or 1, 16, h, w]``) in the model's scaling, float32."""
        if len(references) != 1:
            raise ValueError(f"Step1X-Edit edits one reference image; this conditioning holds {len(references)} "
                             "reference latents (chain one ReferenceLatent or one Pack Ref Latent per edit).")
        latent = references[0]
        if latent.ndim != 4 or latent.shape[1] != FLUX_LATENT_CHANNELS:
            raise ValueError(f"the reference latent has shape {tuple(latent.shape)}; Step1X-Edit needs FLUX latents "
                             f"[B, {FLUX_LATENT_CHANNELS}, h, w] (Pack Ref Latent).")
        if tuple(latent.shape[2:]) != tuple(noise_shape[2:]):
            raise ValueError(f"the reference latent is {latent.shape[3]}×{latent.shape[2]} but the sampled latent is "
                             f"{noise_shape[3]}×{noise_shape[2]}: sample a latent of the reference's size (connect "
                             "Pack Ref Latent's output as the sampler's latent).")
        return self.process_latent_in(latent.float())

    def extra_conds_shapes(self, **kwargs):
        """Shapes for the memory estimate before loading (``sampler_helpers.estimate_memory``)."""
        out = {CONTEXT: list(kwargs["cross_attn"].shape)}
        references = kwargs.get(REFERENCE_LATENTS)
        if references:
            out[REFERENCE] = list(references[0].shape)
        return out

    def memory_required(self, input_shape, cond_shapes={}):
        """Activation bytes of one DiT call on ``input_shape [rows, 16, h, w]`` with the longest text and the
        reference tokens the conds hold (``cond_shapes``: name → list of shapes)."""
        rows, _, latent_h, latent_w = input_shape
        texts = [shape[1] for shape in cond_shapes.get(CONTEXT, [])]
        net = self.diffusion_model
        tokens = max(texts, default=0) + noise_tokens(latent_h, latent_w) * (2 if cond_shapes.get(REFERENCE) else 1)
        element_bytes = torch.finfo(net.compute_dtype).bits // 8
        return rows * tokens * net.params.dit.hidden_size * ACTIVATION_ELEMENTS_PER_TOKEN_PER_HIDDEN * element_bytes


def is_step1x_model(model) -> bool:
    return isinstance(model, comfy.model_patcher.ModelPatcher) and isinstance(model.model, Step1XModel)
