"""A tiny kohya-format Step1X-Edit LoRA for the shipped LoRA workflow, written next to the tiny weights.

  loras/<the workflow's lora_name>   a random LoRA (official kohya key format) for every Linear the official
                                     loader targets in the DiT the workflow loads, plus one final-layer
                                     module, which the official loader ignores and the node must log
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from workflow_files import load_api

from model.dit.transformer import Step1XEdit
from model.weights.loader import inspect_checkpoint
from model.weights.lora import DIT_PREFIX, kohya_targets, linear_weight_shapes

LORA_WORKFLOW = "step1x_edit_lora"
LORA_NODE = "Step1XLoraLoader"
TINY_RANK = 4
TINY_ALPHA = 2.0
TINY_LORA_STD = 0.3   # large enough that the LoRA visibly changes the tiny model's output
SEED = 0
IGNORED_MODULE = "final_layer.linear"   # not a LoRA target of the official loader (LoRANetwork)


@dataclass(frozen=True)
class TinyLora:
    name: str                   # file name in models/loras (the workflow's lora_name)
    ignored: tuple[str, ...]    # kohya module names in it that the official loader skips


def workflow_input(prompt: dict, class_type: str, name: str):
    (node,) = [n for n in prompt.values() if n["class_type"] == class_type]
    return node["inputs"][name]


def write_tiny_lora(dit_path: Path, lora_path: Path) -> tuple[str, ...]:
    """A seeded random LoRA for the DiT file at ``dit_path``; returns the ignored kohya names it holds."""
    info = inspect_checkpoint(str(dit_path))
    with torch.device("meta"):
        shapes = linear_weight_shapes(Step1XEdit(info.params))
    generator = torch.Generator().manual_seed(SEED)
    ignored = DIT_PREFIX + IGNORED_MODULE.replace(".", "_")
    state = {}
    for name, target in kohya_targets(shapes).items():
        if target.covered or name == ignored:
            out, inp = target.shape
            state[f"{name}.lora_down.weight"] = TINY_LORA_STD * torch.randn(TINY_RANK, inp, generator=generator)
            state[f"{name}.lora_up.weight"] = TINY_LORA_STD * torch.randn(out, TINY_RANK, generator=generator)
            state[f"{name}.alpha"] = torch.tensor(TINY_ALPHA)
    lora_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(lora_path))
    return (ignored,)


def write_tiny_loras(models_dir: Path) -> TinyLora:
    """The LoRA the shipped LoRA workflow names, made for the checkpoint that workflow loads."""
    prompt = load_api(LORA_WORKFLOW)
    ckpt = workflow_input(prompt, "Step1XModelLoader", "ckpt_name")
    name = workflow_input(prompt, LORA_NODE, "lora_name")
    ignored = write_tiny_lora(models_dir / "diffusion_models" / ckpt, models_dir / "loras" / name)
    return TinyLora(name, ignored)
