"""The DiT's regional torch.compile with its eager fallback (Load Step1X Model's ``torch_compile``)."""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)


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
