"""The DiT's regional torch.compile with its eager fallback (Load Step1X Model's ``torch_compile``)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import comfy.model_management as mm
import torch

logger = logging.getLogger(__name__)
# Failures of a compiled run that say nothing about the compiler: raised again, not retried uncompiled.
NOT_RETRIED = (mm.InterruptProcessingException, torch.OutOfMemoryError)


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


def has_tensor_subclass_weights(net: torch.nn.Module) -> bool:
    """Whether any weight is stored in a tensor subclass (a quantized layout) rather than a plain tensor."""
    return any(type(parameter.data) is not torch.Tensor for parameter in net.parameters())


def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]


def run_compiled_or_eager(net, run: Callable[[], torch.Tensor], backend: str | Callable = "inductor") -> torch.Tensor:
    """``run()`` with the DiT blocks under torch.compile when the loader asked for it (``net.run_settings``).

    The blocks are compiled once (regional compilation: one graph serves all 19 + 38 blocks). Weights held
    in tensor subclasses (ComfyUI 0.33's ``QuantizedTensor`` fp8 layers) are compiled with static shapes:
    torch's automatic dynamic shapes would trace them with symbolic sizes, which their unflatten rejects;
    plain weights keep the default (one recompile with dynamic shapes serves every later size).

    If a compiled run fails and the same run succeeds uncompiled, the compiler was at fault (no Triton, an
    unsupported op or tensor type, whether or not torch reports it as a compiler error): the model runs
    eagerly from then on, with a warning. Interrupts and out-of-memory errors are raised, not retried.
    """
    settings: DiTRunSettings = net.run_settings
    if not settings.torch_compile:
        return run()
    if settings.compile_failed:
        with torch.compiler.set_stance("force_eager"):
            return run()
    if not settings.blocks_compiled:
        dynamic = False if has_tensor_subclass_weights(net) else None
        for block in [*net.double_blocks, *net.single_blocks]:
            block.compile(backend=backend, dynamic=dynamic)
        settings.blocks_compiled = True
    try:
        return run()
    except NOT_RETRIED:
        raise
    except Exception as error:  # noqa: BLE001  (retried eagerly below; an eager failure is raised)
        compiled_error = error
    with torch.compiler.set_stance("force_eager"):
        result = run()
    logger.warning("torch.compile failed for %s (%s: %s); running it uncompiled from now on.",
                   settings.checkpoint_name, type(compiled_error).__name__, first_line(compiled_error))
    settings.compile_failed = True
    return result
