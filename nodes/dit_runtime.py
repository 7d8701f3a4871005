"""What the samplers share at run time: memory estimate, regional torch.compile, per-step callback."""
from __future__ import annotations

import logging
from collections.abc import Callable

import comfy.model_management as mm
import latent_preview
import torch

from ..model.sampling import unpack_latent

logger = logging.getLogger(__name__)

# Rough peak activation memory per joint token and hidden unit, in elements, for the CFG batch of 2:
# the single-block linear1 output (7·H with mlp ratio 4), attention and residual copies.
ACTIVATION_ELEMENTS_PER_TOKEN_PER_HIDDEN = 2 * 12


def run_compiled_or_eager(net, run: Callable[[], torch.Tensor], backend: str | Callable = "inductor") -> torch.Tensor:
    """``run()`` with the DiT blocks under torch.compile when the loader asked for it (``net.torch_compile``).

    The blocks are compiled once (regional compilation: one graph serves all 19 + 38 blocks). If the
    compiler fails (no Triton, an unsupported op), the model runs eagerly from then on, with a warning.
    """
    if not getattr(net, "torch_compile", False):
        return run()
    if getattr(net, "compile_failed", False):
        with torch.compiler.set_stance("force_eager"):
            return run()
    if not getattr(net, "blocks_compiled", False):
        for block in [*net.double_blocks, *net.single_blocks]:
            block.compile(backend=backend)
        net.blocks_compiled = True
    try:
        return run()
    except torch._dynamo.exc.TorchDynamoException as error:
        logger.warning("torch.compile failed for %s (%s); running it uncompiled from now on.",
                       getattr(net, "checkpoint_name", "the Step1X model"), str(error).splitlines()[0])
        net.compile_failed = True
        with torch.compiler.set_stance("force_eager"):
            return run()


def step_callback(model, steps: int, latent_h: int, latent_w: int):
    """The sampler callback: ComfyUI's progress bar and latent preview, and interruption between steps."""
    preview = latent_preview.prepare_callback(model, steps)

    def on_step(step: int, total: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        preview(step, unpack_latent(x0, latent_h, latent_w), None, total)
        mm.throw_exception_if_processing_interrupted()
    return on_step
