"""Shared helpers of the VLM-encoder tests: fixture cases (golden ``vlm/``) and pack imports.

The pack is imported under a private package name with stub parent packages, so its modules'
relative imports work without running the pack's ``__init__`` files (node registration) and
without clashing with ComfyUI's top-level ``nodes`` module.
"""
from __future__ import annotations

import importlib
import json
import sys
import types
from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image
from safetensors.torch import load_file

from tests.golden import GOLDEN_DIR, REPO_ROOT

VLM_DIR = GOLDEN_DIR / "vlm"
PACK_NAME = "step1x_pack_under_test"


def import_pack_module(dotted: str) -> types.ModuleType:
    """``import_pack_module("nodes.encoders.vlm_hf")`` -> the pack's ``nodes/encoders/vlm_hf.py``."""
    parts = dotted.split(".")
    for depth in range(len(parts)):
        name = ".".join([PACK_NAME, *parts[:depth]])
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(REPO_ROOT.joinpath(*parts[:depth]))]
            sys.modules[name] = stub
    return importlib.import_module(f"{PACK_NAME}.{dotted}")


@lru_cache(maxsize=None)
def vlm_spec() -> dict:
    path = VLM_DIR / "cases.json"
    if not path.is_file():
        raise FileNotFoundError(f"VLM fixtures not found at {path}: set STEP1X_GOLDEN_DIR")
    return json.loads(path.read_text())


def case_names() -> list[str]:
    return [case["name"] for case in vlm_spec()["cases"]]


@dataclass(frozen=True)
class VLMCase:
    spec: dict
    tensors: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def rows(self) -> list[dict]:
        return self.spec["rows"]

    @property
    def size_level(self) -> int | None:
        """Step1X size level, or None when the image goes straight to the embedder."""
        return self.spec["size_level"] if self.spec["mode"] == "pipeline" else None

    def raw_image(self) -> Image.Image:
        return Image.open(VLM_DIR / self.spec["image_file"]).convert("RGB")


@lru_cache(maxsize=None)
def load_case(name: str) -> VLMCase:
    spec = next(case for case in vlm_spec()["cases"] if case["name"] == name)
    return VLMCase(spec, load_file(str(VLM_DIR / "cases" / f"{name}.safetensors")))


def tolerance(key: str) -> float:
    return float(vlm_spec()["tolerance"][key])


def window() -> dict:
    """drop / max_length / prefix as the fixtures define them."""
    spec = vlm_spec()
    return {"prefix": spec["prefix"], "drop": spec["drop"], "max_length": spec["max_length"]}


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return (actual.double().cpu() - expected.double()).abs().max().item()


SDPA_REFERENCE_KEY = "emb_without_fa2_padding_semantics"  # stored for cases with a free-standing "!"


def release_semantics_reference(case: VLMCase, row: int, flash_padding: bool) -> torch.Tensor:
    """Expected emb of a row: without flash-attention padding (v1.1's SDPA), rows with id 0 use the
    fixture's SDPA tensor; every other row is the same under both."""
    if flash_padding or not case.rows[row]["id0_positions"]:
        return case.tensors["emb"][row]
    assert SDPA_REFERENCE_KEY in case.tensors, f"{case.name} has id-0 tokens but no {SDPA_REFERENCE_KEY}"
    return case.tensors[SDPA_REFERENCE_KEY][row]


def assert_v11_sdpa_semantics(encoder, name: str) -> None:
    """Every row of a case encoded with v1.1's SDPA semantics matches its reference (either route)."""
    prompt = import_pack_module("model.vlm.prompt")
    vlm_image = import_pack_module("model.vlm.image")
    case = load_case(name)
    image = vlm_image.resize_for_vlm(case.raw_image(), case.size_level)
    for k, row in enumerate(case.rows):
        out = prompt.encode_prompt(encoder, row["prompt"], image, vlm_image.llm_grid_hw(image), **window(),
                                   flash_padding=False)
        err = max_abs_error(out.emb, release_semantics_reference(case, k, flash_padding=False))
        assert err <= tolerance("emb_abs"), f"{name} row {k}: v1.1 emb max abs error {err:.3e}"
