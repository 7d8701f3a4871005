"""Load a Step1X-Edit DiT from safetensors (official ``inference.py`` ``load_models`` / ``load_state_dict``; the
diffusers fork's transformer layout). Unlike the official ``load_state_dict(strict=False)``, loading is strict:
a missing or unexpected key is an error.

The DiT is one file (official or diffusers key layout, any prefix) or a diffusers ``transformer/``
folder of shards (:mod:`model.weights.checkpoint_folder`). :func:`inspect_checkpoint` reads only the headers:
layout, version (v1.0 / v1.1 / v1.2, from the keys), configuration, completeness.
:func:`build_step1x_dit` then builds the model it describes on the ``meta`` device and fills it with
``load_state_dict(strict=True, assign=True)`` from tensors streamed out of the files and converted
one at a time, so a 12B model never sits in RAM twice and nothing is left half-loaded.
:func:`load_step1x_dit` does both.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from safetensors import safe_open
from torch import nn

from ..dit.layers import is_linear
from ..dit.params import V10_ONLY_KEY, DiTParams, Step1XParams, block_indices, detect_params, with_version
from ..dit.transformer import Step1XEdit
from .checkpoint import (FP8_DTYPES, CheckpointError, CheckpointLayout, TensorRecord, detect_layout, is_scale_key,
                         quantize_fp8, read_scales)
from .checkpoint_folder import read_headers, resolve_dit_files
from .key_map import DIFFUSERS_BLOCK_STACKS, Source, group_official, identity_sources

logger = logging.getLogger(__name__)

FP8_SCALE_KEY = "scale_weight"  # ComfyUI's scaled-fp8 parameter name (comfy.ops.scaled_fp8_ops)
# Only the 19 + 38 blocks are stored in fp8 when asked: they hold 11.9 of the 12.4 B parameters;
# embedders, connector and final layer stay in the compute dtype (as ComfyUI's fp8 FLUX files do).
FP8_BLOCK_PREFIXES = ("double_blocks.", "single_blocks.")
# The released DiT (official ``load_models`` ``Step1XParams``; the v1.2 fork's transformer config has the same
# num_layers / num_single_layers): width 3072 with 19 double and 38 single blocks, in every release.
RELEASE_BLOCKS = DiTParams()
BLOCK_STACKS = {"double_blocks": RELEASE_BLOCKS.depth, "single_blocks": RELEASE_BLOCKS.depth_single_blocks}


@dataclass(frozen=True)
class CheckpointInfo:
    path: str  # what the user gave: a file, a shard index or a folder
    name: str  # the file or folder name, for messages
    params: Step1XParams
    layout: CheckpointLayout
    stored_dtype: str  # safetensors dtype of most weight elements ("BF16", "F8_E4M3", ...)
    sources: dict[str, Source]  # official key → file keys (prefix stripped)
    file_of: dict[str, str]  # file key (with prefix) → the safetensors file that holds it

    @property
    def is_fp8(self) -> bool:
        return self.stored_dtype.startswith("F8")

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of every file the DiT spans (for ComfyUI's memory estimates)."""
        return sum(os.path.getsize(f) for f in set(self.file_of.values()))


def _sources(records: dict[str, TensorRecord], layout: CheckpointLayout) -> dict[str, Source]:
    keys = [k[len(layout.prefix):] for k in records if k.startswith(layout.prefix)]
    keys = [k for k in keys if not is_scale_key(k)]
    return identity_sources(keys) if layout.layout == "official" else group_official(keys)


def _shape(records: dict[str, TensorRecord], prefix: str, source: Source) -> tuple[int, ...]:
    shapes = [records[prefix + k].shape for k in source.keys]
    return (sum(s[0] for s in shapes), *shapes[0][1:]) if shapes[0] else shapes[0]


def _expected_keys(params: Step1XParams) -> set[str]:
    with torch.device("meta"):
        return set(Step1XEdit(params).state_dict())


def _ranges(indices: list[int]) -> str:
    """Sorted block numbers as runs: ``[3, 5, 6, 7]`` → ``"3, 5–7"``."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def block_gaps(keys: Iterable[str], hidden_size: int | None) -> dict[str, tuple[list[int], list[int]]]:
    """``stack → (missing block numbers, surplus block numbers)`` for each stack whose numbering is wrong.

    ``keys`` are official keys. At the full width (``RELEASE_BLOCKS.hidden_size``) every release has
    double blocks 0–18 and single blocks 0–37, so anything else is missing or surplus; narrower models
    (tests) may have any count, numbered from 0 without gaps. Empty when the numbering is fine.
    """
    keys = list(keys)
    gaps = {}
    for stack, release_count in BLOCK_STACKS.items():
        present = block_indices(keys, stack)
        count = release_count if hidden_size == RELEASE_BLOCKS.hidden_size else max(present, default=-1) + 1
        missing, surplus = sorted(set(range(count)) - present), sorted(present - set(range(count)))
        if missing or surplus:
            gaps[stack] = (missing, surplus)
    return gaps


def check_block_layout(name: str, keys: Iterable[str], hidden_size: int | None, layout: str = "official") -> None:
    """Raise :class:`CheckpointError` naming the missing (or surplus) blocks when the numbering is not a
    release's; ``layout`` "diffusers" names the stacks as that layout does (``transformer_blocks``)."""
    gaps = block_gaps(keys, hidden_size)
    if not gaps:
        return

    def shown(stack: str) -> str:
        return DIFFUSERS_BLOCK_STACKS[stack] if layout == "diffusers" else stack

    def phrase(stack: str, indices: list[int], what: str) -> str:
        return f"{shown(stack)} {_ranges(indices)} {'is' if len(indices) == 1 else 'are'} {what}"

    findings = [phrase(stack, indices, what) for stack, (missing, surplus) in gaps.items()
                for indices, what in ((missing, "missing"), (surplus, "surplus")) if indices]
    if hidden_size == RELEASE_BLOCKS.hidden_size:
        expected = f"every Step1X-Edit release at width {hidden_size} has " + " and ".join(
            f"{shown(stack)} 0–{count - 1}" for stack, count in BLOCK_STACKS.items())
    else:
        expected = "the blocks of each stack must be numbered from 0 without gaps"
    if any(surplus for _, surplus in gaps.values()):
        verdict = "is not a Step1X-Edit release's DiT (another model, or a damaged file)"
    else:
        verdict = "is damaged"
    raise CheckpointError(f"{name} {verdict}: {'; '.join(findings)} ({expected}). Download the file again.")


def inspect_checkpoint(
    path: str, connector_heads: int | None = None, version: str | None = None, axes_dim=None
) -> CheckpointInfo:
    """Everything about a DiT that its headers tell; raises :class:`CheckpointError`."""
    files = resolve_dit_files(path)
    records, file_of = read_headers(files)
    name = files.name
    layout = detect_layout(name, records)
    sources = _sources(records, layout)
    shapes = {k: _shape(records, layout.prefix, s) for k, s in sources.items()}
    check_block_layout(name, shapes, shapes.get("img_in.weight", (None,))[0], layout.layout)
    try:
        params = detect_params(shapes, connector_heads, axes_dim)
    except KeyError as err:
        raise CheckpointError(
            f"{name} is incomplete: tensor {err.args[0]} is missing. The file is damaged or was cut; download it again."
        ) from None
    if version is not None:
        params = with_version(params, version)
    expected = _expected_keys(params)
    missing = sorted(expected - set(sources))
    unexpected = sorted(set(sources) - expected)
    if version is not None and unexpected == [V10_ONLY_KEY]:
        logger.warning("%s: ignoring %s (a v1.0 key) because version %s was forced", name, V10_ONLY_KEY, version)
        del sources[V10_ONLY_KEY]
        unexpected = []
    if missing:
        raise CheckpointError(
            f"{name} is missing {len(missing)} of the {len(expected)} tensors a Step1X-Edit {params.version} DiT needs "
            f"(e.g. {', '.join(missing[:3])}). The file is incomplete or damaged: download it again."
        )
    if unexpected:
        raise CheckpointError(
            f"{name} has {len(unexpected)} tensors that Step1X-Edit does not use (e.g. {', '.join(unexpected[:3])}). "
            "It is another model, or a Step1X-Edit file with extra parts; use the official DiT file."
        )
    # By element count: fp8 files keep the small layers (embedders, connector) in bf16, the blocks in fp8.
    linear_dtypes = Counter()
    for key, source in sources.items():
        if key.endswith(".weight"):
            record = records[layout.prefix + source.keys[0]]
            linear_dtypes[record.dtype] += math.prod(record.shape)
    return CheckpointInfo(path, name, params, layout, linear_dtypes.most_common(1)[0][0], sources, file_of)


def _linear_weight_keys(model: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, module in model.named_modules() if is_linear(module)}


def read_state_dict(
    info: CheckpointInfo, dtype: torch.dtype, linear_weight_keys: set[str], fp8_storage: bool = False
) -> dict[str, torch.Tensor]:
    """Official-key state dict in ``dtype``, streamed from the file.

    fp8 weights stored with a per-tensor scale are dequantised (``w·scale``); fp8 biases are upcast.
    With ``fp8_storage`` the Linear weights of the blocks become float8_e4m3fn (kept as stored or
    quantised with one absmax scale per tensor) and every Linear gets a ``scale_weight`` entry: the
    layout of ComfyUI's ``scaled_fp8_ops``, which nodes/runtime/comfy_compat.py also maps onto ComfyUI's per-layer
    (``comfy_quant``) fp8 layers.
    """
    prefix = info.layout.prefix
    state: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        handles = {
            file: stack.enter_context(safe_open(file, framework="pt", device="cpu"))
            for file in sorted(set(info.file_of.values()))
        }
        scales = {}
        if info.layout.fp8_scaled:
            for file, handle in handles.items():
                scales.update(read_scales(file, prefix, list(handle.keys())))
        for key, source in info.sources.items():
            parts = [handles[info.file_of[prefix + k]].get_tensor(prefix + k) for k in source.keys]
            fp8_parts = parts[0].dtype in FP8_DTYPES
            keep_fp8 = fp8_storage and key in linear_weight_keys and key.startswith(FP8_BLOCK_PREFIXES)
            if fp8_parts and keep_fp8 and len(parts) == 1:
                state[key] = parts[0].to(torch.float8_e4m3fn)
                state[key[: -len("weight")] + FP8_SCALE_KEY] = scales.get(source.keys[0], torch.ones(()))
                continue
            if fp8_parts:
                parts = [p.float() * scales.get(k, torch.ones(())) for p, k in zip(parts, source.keys)]
            tensor = source.combine(parts)
            if keep_fp8:
                state[key], state[key[: -len("weight")] + FP8_SCALE_KEY] = quantize_fp8(tensor)
                continue
            state[key] = tensor.to(dtype)
            if fp8_storage and key in linear_weight_keys:
                state[key[: -len("weight")] + FP8_SCALE_KEY] = torch.ones(())
    return state


def build_step1x_dit(
    info: CheckpointInfo,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    operations=nn,
    fp8_storage: bool = False,
    model_class: type[Step1XEdit] = Step1XEdit,
) -> Step1XEdit:
    """Build and fill the DiT that ``info`` (from :func:`inspect_checkpoint`) describes, without reading the
    headers again. ``operations``' Linear must take a ``scale_weight`` entry when ``fp8_storage``
    (ComfyUI's fp8 layers as nodes/runtime/comfy_compat.py picks them, or benchmarks/fp8_rowwise.py). ``model_class`` is
    :class:`Step1XEdit` or a subclass with the same parameters (a host's adapter, e.g. ComfyUI's)."""
    with torch.device("meta"):
        model = model_class(info.params, dtype=dtype, operations=operations)
    state = read_state_dict(info, dtype, _linear_weight_keys(model), fp8_storage)
    result = model.load_state_dict(state, strict=True, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{info.name}: state dict mismatch {result}")
    logger.info(
        "loaded %s: Step1X-Edit %s, %s layout, %d tensors, stored %s", info.name, info.params.version,
        info.layout.layout, len(info.sources), info.stored_dtype,
    )
    return model.to(device)


def load_step1x_dit(
    path: str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    operations=nn,
    connector_heads: int | None = None,
    version: str | None = None,
    axes_dim=None,
    fp8_storage: bool = False,
) -> tuple[Step1XEdit, CheckpointInfo]:
    """:func:`inspect_checkpoint` then :func:`build_step1x_dit`: the filled DiT and what its headers tell."""
    info = inspect_checkpoint(path, connector_heads, version, axes_dim)
    return build_step1x_dit(info, dtype=dtype, device=device, operations=operations, fp8_storage=fp8_storage), info
