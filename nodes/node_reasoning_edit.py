"""Step1X Reasoning Edit: v1.2's edit → judge → reflect loop as one node (diffusers fork
``Step1XEditPipelineV1P2.__call__`` with ``pipeline_step1x_edit_thinker.py``).

Each try is a full v1.2 edit (nodes/runtime/v12_edit.py ``V12Editor``); the release's Qwen2.5-VL then
describes the expected result, scores consistency, reflects (``<#Success>`` stops, ``<#Reflection>``
edits the last output again with a new instruction, anything else restarts from the input) and
scores every try; the best try by the release's rule is the result. The loop itself is
model/reasoning/thinker.py, with this node's editor and seeded VLM plugged in.
"""
from __future__ import annotations

import numpy as np
from comfy_api.latest import io

from ..model.reasoning.thinker import MAX_ATTEMPTS, MalformedAnswer, Thinker, describe, reasoning_edit
from ..model.vlm.image import image_tensor_to_pil
from .encoders.v12_vlm import V12VLM, SeededVLM, Step1XVLM
from .runtime.common import (CATEGORY, DEFAULT_CFG, DEFAULT_SEED, DEFAULT_STEPS, MAX_SEED, MAX_SIZE_LEVEL, MAX_STEPS,
                             MIN_SIZE_LEVEL, RENORM_CHOICES, RENORM_TOOLTIP, RENORM_V12_RELEASE, SIZE_LEVEL_STEP,
                             check_flux_vae, renorm_threshold, uint8_to_image)
from .runtime.v12_edit import V12_SIZE_LEVEL, V12Editor, check_v12_model

DEFAULT_TRIES = 3  # release max_try_cnt
MAX_TRIES = 10


class Step1XReasoningEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XReasoningEdit",
            display_name="Step1X Reasoning Edit",
            category=CATEGORY,
            description="Step1X-Edit v1.2 with reflection: edit, let the VLM judge the result against the input "
                        "and instruction, refine or retry up to max_tries edits, keep the best-scored one. Each try "
                        "costs a full edit plus up to five VLM generations (≤128 tokens each).",
            inputs=[
                io.Model.Input("model", tooltip="The v1.2 DiT from Load Step1X-Edit v1.2."),
                Step1XVLM.Input("vlm", tooltip="v1.2's Qwen2.5-VL from Load Step1X-Edit v1.2."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Image.Input("image", tooltip="The image to edit (first frame of a batch)."),
                io.String.Input("instruction", multiline=True, default="", tooltip="The edit instruction."),
                io.String.Input("negative_instruction", multiline=True, default="",
                                tooltip="Negative prompt; the release uses an empty string."),
                io.Int.Input("size_level", default=V12_SIZE_LEVEL, min=MIN_SIZE_LEVEL, max=MAX_SIZE_LEVEL,
                             step=SIZE_LEVEL_STEP, tooltip="Working size, area ≈ size_level²; release 1024."),
                io.Int.Input("seed", default=DEFAULT_SEED, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seeds the noise of every try (one generator) and every VLM answer."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS, tooltip="Per try; release 28."),
                io.Float.Input("cfg", default=DEFAULT_CFG, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="true_cfg_scale; release 6.0."),
                io.Combo.Input("cfg_renorm", options=list(RENORM_CHOICES), default=RENORM_V12_RELEASE,
                               tooltip=RENORM_TOOLTIP),
                io.Int.Input("max_tries", default=DEFAULT_TRIES, min=1, max=MAX_TRIES,
                             tooltip="Most edits (release: 3). The loop stops early on <#Success>."),
                io.Boolean.Input("thinking", default=False,
                                 tooltip="Rewrite the instruction first (Step1X Think); the rewrite is used for "
                                         "editing and judging. Release default: off."),
                io.Boolean.Input("reflection", default=True,
                                 tooltip="Judge and retry (release default: on). Off: one edit, no VLM judging."),
                io.Int.Input("vlm_attempts", default=MAX_ATTEMPTS, min=1, max=MAX_ATTEMPTS,
                             tooltip="Tries per judging step when the VLM's answer is malformed (release: 20), "
                                     "then the step falls back to a 'failed' verdict / zero scores."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The chosen try (best product of the lowest scores)."),
                io.Image.Output(display_name="tries", tooltip="Every try in order, as a batch."),
                io.String.Output(display_name="reasoning", tooltip="Thought instruction, each try's prompt, "
                                                                   "reflection and scores, and the choice."),
            ],
        )

    @classmethod
    def execute(cls, model, vlm: V12VLM, vae, image, instruction: str, negative_instruction: str, size_level: int,
                seed: int, steps: int, cfg: float, cfg_renorm: str, max_tries: int, thinking: bool,
                reflection: bool, vlm_attempts: int = MAX_ATTEMPTS) -> io.NodeOutput:
        check_v12_model(model)
        check_flux_vae(vae)
        threshold = renorm_threshold(cfg_renorm, model.model.diffusion_model.params)
        editor = V12Editor(model, vlm, vae, size_level, seed, steps, cfg, threshold)
        thinker = Thinker(SeededVLM(vlm, seed), max_attempts=vlm_attempts)
        try:
            result = reasoning_edit(editor, thinker, image_tensor_to_pil(image[0]), instruction, max_tries,
                                    thinking=thinking, reflection=reflection, negative_prompt=negative_instruction)
        except MalformedAnswer as error:
            raise ValueError(f"Step1X Reasoning Edit: thinking failed ({error}). Try another seed or turn "
                             "thinking off.") from None
        tries = uint8_to_image([np.asarray(output) for output in result.images])
        final = uint8_to_image([np.asarray(result.final_image)])
        return io.NodeOutput(final, tries, describe(result, instruction))
