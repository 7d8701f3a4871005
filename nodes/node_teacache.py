"""Step1X TeaCache: skip the DiT's block stack on steps where its input barely moved (TeaCache, Liu et al. 2024).

The rule of ali-vilab/TeaCache ``TeaCache4FLUX/teacache_flux.py`` ``teacache_forward``, on Step1X-Edit's DiT
(FLUX's double/single-stream architecture):

* probe: the first double block's modulated image input ``(1 + scale)·LN(img) + shift`` (its ``img_mod``
  shift₁ and scale₁ of the step's ``vec``);
* its relative L1 change against the previous step, ``mean|m − m_prev| / mean|m_prev|``, rescaled by a
  polynomial and accumulated; while the sum stays below the threshold the stack is skipped and the previous
  step's residual (stack output − stack input, image tokens) is added to the input instead; at or above it
  the stack runs and the sum restarts from 0;
* the first and the last step always run.

Each CFG branch (each conditioning, by its uuid in ``transformer_options["uuids"]``) keeps its own probe,
sum and residual, so the instruction and the negative prompt decide independently, batched or not (v1.2
runs them as separate calls). The cache replaces the block stack through ``transformer_options`` inside the
diffusion-model executor (nodes/runtime/native_model.py ``BLOCK_STACK_KEY``), so it composes with the other wrappers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import comfy.model_patcher
import comfy.patcher_extension
import numpy as np
import torch
from comfy_api.latest import io

from ..model.dit.layers import modulate
from .runtime.common import CATEGORY
from .runtime.native_model import BLOCK_STACK_KEY, is_step1x_model

logger = logging.getLogger(__name__)

# Rescaling polynomial (highest power first) of ali-vilab/TeaCache TeaCache4FLUX/teacache_flux.py. The official
# repository's README announced TeaCache support for Step1X-Edit (June 2025), but that code is not in the
# history this pack cites (v1.0 at 570eba6); the DiT is FLUX's architecture at FLUX's width.
FLUX_COEFFICIENTS = (4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01)
# The same file's thresholds on FLUX: 0.25 ≈ 1.5×, 0.4 ≈ 1.8×, 0.6 ≈ 2.0×, 0.8 ≈ 2.25× faster. The default is
# the most conservative; 0 turns the cache off.
DEFAULT_THRESHOLD = 0.25
MAX_THRESHOLD = 2.0
THRESHOLD_STEP = 0.01
WRAPPER_KEY = "step1x_teacache"


@dataclass
class BranchState:
    """One CFG branch: last probe ``[rows, N_img, H]``, accumulated rescaled distance, last residual."""

    probe: torch.Tensor | None = None
    accumulated: float = 0.0
    residual: torch.Tensor | None = None
    computed: int = 0
    skipped: int = 0


@dataclass
class TeaCacheRun:
    """One sampling run's cache; called as the block-stack replacement ``(net, img, txt, vec, pe,
    transformer_options) → stack output [rows, N_img, H]``."""

    threshold: float
    coefficients: tuple[float, ...] = FLUX_COEFFICIENTS
    branches: dict = field(default_factory=dict)

    def rescaled_distance(self, probe: torch.Tensor, previous: torch.Tensor) -> float:
        relative = ((probe - previous).abs().mean() / previous.abs().mean()).item()
        return float(np.polyval(self.coefficients, relative))

    def must_compute(self, state: BranchState, probe: torch.Tensor, edge_step: bool) -> bool:
        """The TeaCache decision for one branch; updates its probe and sum."""
        previous, state.probe = state.probe, probe
        if edge_step or previous is None or state.residual is None or previous.shape != probe.shape:
            state.accumulated = 0.0
            return True
        state.accumulated += self.rescaled_distance(probe, previous)
        if state.accumulated < self.threshold:
            return False
        state.accumulated = 0.0
        return True

    def __call__(self, net, img, txt, vec, pe, transformer_options) -> torch.Tensor:
        """The stack output ``[rows, N_img, H]`` for image tokens ``img [rows, N_img, H]`` (rows: one equal chunk
        per entry of ``transformer_options["uuids"]``), text ``txt [rows, L, H]``, ``vec [rows, H]`` and RoPE
        ``pe [1 or rows, …]``; the step is the current σ's index in ``sample_sigmas``."""
        sample_sigmas = transformer_options["sample_sigmas"]
        steps = len(sample_sigmas) - 1
        step = int((sample_sigmas[:-1] > transformer_options["sigmas"].reshape(-1)[0]).sum())
        shift, scale = net.double_blocks[0].img_mod(vec)[:2]
        probe = modulate(img, shift, scale)
        uuids = transformer_options["uuids"]
        rows = img.shape[0] // len(uuids)
        chunks = [slice(i * rows, (i + 1) * rows) for i in range(len(uuids))]
        states = [self.branches.setdefault(uuid, BranchState()) for uuid in uuids]
        compute = [self.must_compute(state, probe[chunk], step in (0, steps - 1))
                   for state, chunk in zip(states, chunks)]
        run_rows = [torch.arange(chunk.start, chunk.stop) for chunk, run in zip(chunks, compute) if run]
        if len(run_rows) == len(chunks):
            computed = net.run_stack(img, txt, vec, pe)
        elif run_rows:
            index = torch.cat(run_rows).to(img.device)
            computed = net.run_stack(img[index], txt[index], vec[index], pe if pe.shape[0] == 1 else pe[index])
        parts, offset = [], 0
        for state, chunk, run in zip(states, chunks, compute):
            if run:
                out = computed[offset:offset + rows]
                offset += rows
                state.residual = out - img[chunk]
                state.computed += 1
            else:
                out = img[chunk] + state.residual
                state.skipped += 1
            parts.append(out)
        return torch.cat(parts)


class TeaCacheSampleWrapper:
    """``WrappersMP.OUTER_SAMPLE`` wrapper: a fresh :class:`TeaCacheRun` for each sampling run, as core's
    EasyCache prepares its state (comfy_extras/nodes_easycache.py ``easycache_sample_wrapper``)."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, executor, *args, **kwargs):
        guider = executor.class_obj
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        run = TeaCacheRun(self.threshold)
        guider.model_options["transformer_options"][BLOCK_STACK_KEY] = run
        try:
            return executor(*args, **kwargs)
        finally:
            guider.model_options = original
            for number, state in enumerate(run.branches.values()):
                logger.info("Step1X TeaCache (threshold %g): branch %d ran the blocks on %d steps, skipped %d.",
                            self.threshold, number, state.computed, state.skipped)


def with_teacache(model, threshold: float):
    """A clone of ``model`` whose samplers use TeaCache at ``threshold``; ``model`` itself when 0 (off)."""
    if threshold == 0:
        return model
    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY,
                               TeaCacheSampleWrapper(threshold))
    return model


class Step1XTeaCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XTeaCache",
            display_name="Step1X TeaCache",
            category=CATEGORY,
            description="Skips the DiT's blocks on steps whose input changed little since the last computed step "
                        "and reuses that step's change instead (TeaCache, FLUX coefficients). Works with Step1X "
                        "Sampler and core samplers; each CFG branch decides on its own. First and last steps "
                        "always run.",
            inputs=[
                io.Model.Input("model", tooltip="From Load Step1X Model (or Step1X LoRA)."),
                io.Float.Input("rel_l1_thresh", default=DEFAULT_THRESHOLD, min=0.0, max=MAX_THRESHOLD,
                               step=THRESHOLD_STEP,
                               tooltip="Accumulated rescaled change below which steps are skipped. 0 = off "
                                       "(identical to no cache). On FLUX: 0.25 ≈ 1.5×, 0.4 ≈ 1.8×, 0.6 ≈ 2× faster. "
                                       "Check a value on your own edits against the uncached result."),
            ],
            outputs=[io.Model.Output(tooltip="The same model with TeaCache applied when it samples.")],
        )

    @classmethod
    def execute(cls, model, rel_l1_thresh: float) -> io.NodeOutput:
        if not is_step1x_model(model):
            raise ValueError("Step1X TeaCache works on Step1X-Edit models: connect 'Load Step1X Model'. For other "
                             "models use core's EasyCache or LazyCache.")
        return io.NodeOutput(with_teacache(model, rel_l1_thresh))
