"""Where a DiT's tensors live: one safetensors file, or a diffusers ``transformer/`` folder of shards.

Step1X-Edit v1.1-diffusers and v1.2 ship the DiT as ``transformer/`` with
``diffusion_pytorch_model-0000k-of-0000n.safetensors`` shards and a
``diffusion_pytorch_model.safetensors.index.json`` whose ``weight_map`` names the shard of every
tensor (the diffusers ``from_pretrained`` layout of the v1.2 release). :func:`resolve_dit_files`
accepts the file, the index, the ``transformer/`` folder or the pipeline folder above it;
:func:`read_headers` merges the shards' headers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .checkpoint import CheckpointError, TensorRecord, read_header

TRANSFORMER_SUBFOLDER = "transformer"  # diffusers pipeline folder layout (model_index.json + subfolders)
INDEX_SUFFIX = ".safetensors.index.json"
SAFETENSORS_SUFFIX = ".safetensors"
WEIGHT_MAP_KEY = "weight_map"


@dataclass(frozen=True)
class DiTFiles:
    """The safetensors files of one DiT; ``name`` is what messages call it."""

    name: str
    files: tuple[str, ...]


def _index_files(index_path: str) -> tuple[str, ...]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)[WEIGHT_MAP_KEY]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{os.path.basename(index_path)} is not a diffusers shard index ({err}). Download the transformer/ "
            "folder again."
        ) from None
    folder = os.path.dirname(index_path)
    shards = tuple(sorted({os.path.join(folder, name) for name in weight_map.values()}))
    missing = [os.path.basename(s) for s in shards if not os.path.isfile(s)]
    if missing:
        raise CheckpointError(
            f"{os.path.basename(folder) or folder}/ lacks {len(missing)} of its {len(shards)} shards "
            f"(e.g. {missing[0]}). The download did not finish: download the transformer/ folder again."
        )
    return shards


def resolve_dit_files(path: str) -> DiTFiles:
    """The files of the DiT at ``path`` (file, shard index, ``transformer/`` folder or pipeline folder)."""
    path = os.path.normpath(path)
    if os.path.isdir(path):
        sub = os.path.join(path, TRANSFORMER_SUBFOLDER)
        folder = sub if os.path.isdir(sub) else path
        entries = sorted(os.listdir(folder))
        indexes = [e for e in entries if e.endswith(INDEX_SUFFIX)]
        name = os.path.basename(folder)
        if indexes:
            return DiTFiles(name, _index_files(os.path.join(folder, indexes[0])))
        singles = [e for e in entries if e.endswith(SAFETENSORS_SUFFIX)]
        if len(singles) == 1:
            return DiTFiles(name, (os.path.join(folder, singles[0]),))
        raise CheckpointError(
            f"{folder} holds {len(singles)} .safetensors files and no *{INDEX_SUFFIX}: point the loader at a "
            f"Step1X-Edit DiT file, or at a diffusers '{TRANSFORMER_SUBFOLDER}/' folder with its shard index."
        )
    if path.endswith(INDEX_SUFFIX):
        return DiTFiles(os.path.basename(os.path.dirname(path)), _index_files(path))
    return DiTFiles(os.path.basename(path), (path,))


def read_headers(files: DiTFiles) -> tuple[dict[str, TensorRecord], dict[str, str]]:
    """Merged tensor table of all shards and ``key → file``; a key in two shards is an error."""
    records: dict[str, TensorRecord] = {}
    file_of: dict[str, str] = {}
    for file in files.files:
        for key, record in read_header(file).items():
            if key in file_of:
                raise CheckpointError(
                    f"{files.name}: tensor {key} is in both {os.path.basename(file_of[key])} and "
                    f"{os.path.basename(file)}; the folder mixes two checkpoints. Keep one set of shards."
                )
            records[key] = record
            file_of[key] = file
    return records, file_of
