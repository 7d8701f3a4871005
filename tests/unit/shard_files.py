"""Diffusers-layout shard folders for loader tests: a state dict split over numbered files plus their index."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def write_shards(folder: Path, state: dict[str, torch.Tensor], count: int = 2) -> None:
    """``state`` as ``count`` ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` files (keys dealt round
    robin) and the index that maps every key to its file."""
    folder.mkdir(parents=True)
    keys = sorted(state)
    weight_map = {}
    for index in range(count):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{count:05d}.safetensors"
        part = keys[index::count]
        save_file({k: state[k].contiguous() for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
