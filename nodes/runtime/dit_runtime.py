"""The DiT's regional torch.compile with its eager fallback (Load Step1X Model's ``torch_compile``)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass
class DiTRunSettings:
    """How the loader asked a DiT to run, and what compiling it did: one record per loaded DiT.

    ``attention_backend``: model/dit/attention.py's switch; ``torch_compile``: Load Step1X Model's option;
    ``blocks_compiled`` / ``compile_failed``: set by :func:`run_compiled_or_eager`.
    """

    checkpoint_name: str
    attention_backend: str = "auto"
    torch_compile: bool = False
    blocks_compiled: bool = False
    compile_failed: bool = False


def run_compiled_or_eager(net, run: Callable[[], torch.Tensor], backend: str | Callable = "inductor") -> torch.Tensor:
    """``run()`` with the DiT blocks under torch.compile when the loader asked for it (``net.run_settings``).

    The blocks are compiled once (regional compilation: one graph serves all 19 + 38 blocks). If the
    compiler fails (no Triton, an unsupported op), the model runs eagerly from then on, with a warning.
    """
    settings: DiTRunSettings = net.run_settings
    if not settings.torch_compile:
        return run()
    if settings.compile_failed:
        with torch.compiler.set_stance("force_eager"):
            return run()
    if not settings.blocks_compiled:
        for block in [*net.double_blocks, *net.single_blocks]:
            block.compile(backend=backend)
        settings.blocks_compiled = True
    try:
        return run()
    except torch._dynamo.exc.TorchDynamoException as error:
        logger.warning("torch.compile failed for %s (%s); running it uncompiled from now on.",
                       settings.checkpoint_name, str(error).splitlines()[0])
        settings.compile_failed = True
        with torch.compiler.set_stance("force_eager"):
            return run()
