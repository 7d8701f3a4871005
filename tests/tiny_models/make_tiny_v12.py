#!/usr/bin/env python3
"""Write a tiny random-weight stand-in for the Step1X-Edit v1.2 diffusers pipeline folder.

    python tests/tiny_models/make_tiny_v12.py OUT_DIR [--tiny-vlm tests/fixtures/golden/vlm/tiny-qwen25vl]

OUT_DIR/Step1X-Edit-v1p2/ gets the release's diffusers layout: model_index.json naming
Step1XEditPipelineV1P2, transformer/ (a tiny v1.2 DiT in diffusers keys, two shards and their
index), text_encoder/ (the golden tiny Qwen2.5-VL's config and weights) and processor/ (its tokenizer
and processor files). The DiT's connector reads the tiny VLM's width, so the folder runs end to end.
Put it in ComfyUI's models/diffusion_models/. Needs torch, safetensors and this repository's model/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The tiny Qwen2.5-VL of the repository's reference fixtures (tests/fixtures/golden/README.md).
DEFAULT_TINY_VLM = REPO_ROOT / "tests" / "fixtures" / "golden" / "vlm" / "tiny-qwen25vl"
PIPELINE_DIR = "Step1X-Edit-v1p2"
PIPELINE_CLASS = "Step1XEditPipelineV1P2"
SHARDS = 2
MODEL_FILES = ("config.json", "model.safetensors")
PROCESSOR_FILES = ("tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.json",
                   "preprocessor_config.json")
SEED = 12


def tiny_v12_state(vlm_hidden: int) -> dict:
    """Official-key tiny v1.2 DiT whose connector reads ``vlm_hidden`` features (random, finite)."""
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_tiny_weights import TINY_CONFIG, _randomize

    from model.dit.transformer import Step1XEdit
    from model.dit.params import params_from_config

    config = {"dit": TINY_CONFIG["dit"], "connector": dict(TINY_CONFIG["connector"], in_channels=vlm_hidden)}
    model = Step1XEdit(params_from_config(config, "v1.2"), device="meta")
    shapes = {key: torch.empty(value.shape) for key, value in model.state_dict().items()}
    return _randomize(shapes, torch.Generator().manual_seed(SEED))


def write_transformer(folder: Path, official: dict) -> None:
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO_ROOT))
    from model.weights.key_map import official_to_diffusers

    diffusers = official_to_diffusers(official)
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(diffusers)
    weight_map = {}
    for index in range(SHARDS):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{SHARDS:05d}.safetensors"
        part = keys[index::SHARDS]
        save_file({k: diffusers[k] for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"note": "tiny random weights for tests"}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps({"_class_name": "Step1XEditTransformer2DModel",
                                                    "enable_text_token_mapping": True}, indent=1))


def write_pipeline(out_dir: Path, tiny_vlm: Path) -> Path:
    pipeline = out_dir / PIPELINE_DIR
    if pipeline.exists():
        shutil.rmtree(pipeline)
    vlm_hidden = json.loads((tiny_vlm / "config.json").read_text())["hidden_size"]
    write_transformer(pipeline / "transformer", tiny_v12_state(vlm_hidden))
    for sub, files in (("text_encoder", MODEL_FILES), ("processor", PROCESSOR_FILES)):
        (pipeline / sub).mkdir(parents=True)
        for name in files:
            shutil.copyfile(tiny_vlm / name, pipeline / sub / name)
    (pipeline / "model_index.json").write_text(json.dumps({
        "_class_name": PIPELINE_CLASS, "transformer": ["diffusers", "Step1XEditTransformer2DModel"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "processor": ["transformers", "Qwen2_5_VLProcessor"]}, indent=1))
    return pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder that receives Step1X-Edit-v1p2/")
    parser.add_argument("--tiny-vlm", type=Path, default=DEFAULT_TINY_VLM, help="tiny Qwen2.5-VL folder")
    args = parser.parse_args(argv)
    if not (args.tiny_vlm / "config.json").is_file():
        parser.error(f"no tiny Qwen2.5-VL folder at {args.tiny_vlm}; pass --tiny-vlm")
    print(write_pipeline(args.out_dir, args.tiny_vlm))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
