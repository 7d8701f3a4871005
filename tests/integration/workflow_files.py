"""The shipped workflows as test prompts: load an API-format file, change inputs by node class."""
from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
API_DIR = REPO_ROOT / "workflows" / "api"            # v1.0 / v1.1, API format
V12_API_DIR = REPO_ROOT / "workflows" / "v12"        # v1.2, API format
EXAMPLES_DIR = REPO_ROOT / "example_workflows"      # every UI-format twin (the template browser's folder)
PHOTO_SIZE = (451, 300)        # workflows/input/chelsea_the_cat.png
TEST_SIZE_LEVEL = 256          # smallest size level VLM Encode accepts: keeps the full-width VAE quick on CPU
TEST_STEPS = 2
# Where a shipped workflow sets its step count: Step1X Sampler, core KSampler, or the scheduler of
# core SamplerCustomAdvanced.
STEP_NODES = ("Step1XSampler", "KSampler", "BasicScheduler")


def api_workflow_names() -> list[str]:
    return sorted(p.stem for p in API_DIR.glob("*.json"))


def load_api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def set_inputs(prompt: dict, class_type: str, **inputs) -> dict:
    """Set inputs on every node of ``class_type`` (there must be at least one)."""
    nodes = [n for n in prompt.values() if n["class_type"] == class_type]
    assert nodes, f"no {class_type} node in the workflow"
    for node in nodes:
        node["inputs"].update(inputs)
    return prompt


def node_id_of(prompt: dict, class_type: str) -> str:
    (node_id,) = [k for k, n in prompt.items() if n["class_type"] == class_type]
    return node_id


def quick(prompt: dict) -> dict:
    """A shipped workflow made fast for CPU tests: few steps, small working size, unique output name.

    Only widget values change; the graph stays the shipped one.
    """
    prompt = copy.deepcopy(prompt)
    classes = {n["class_type"] for n in prompt.values()}
    step_nodes = [class_type for class_type in STEP_NODES if class_type in classes]
    assert step_nodes, f"no node of {STEP_NODES} sets the steps"
    for class_type in step_nodes:
        set_inputs(prompt, class_type, steps=TEST_STEPS)
    for class_type in ("Step1XVLMEncode", "Step1XPackRefLatent"):
        if class_type in classes:
            set_inputs(prompt, class_type, size_level=TEST_SIZE_LEVEL)
    for class_type in ("EmptyImage", "EmptySD3LatentImage"):
        if class_type in classes:
            set_inputs(prompt, class_type, width=TEST_SIZE_LEVEL, height=TEST_SIZE_LEVEL)
    set_inputs(prompt, "SaveImage", filename_prefix=f"test/{uuid.uuid4().hex[:8]}")
    return prompt


def edit_prompt(**sampler_inputs) -> dict:
    """The main edit workflow, quick, with sampler inputs changed."""
    return set_inputs(quick(load_api("step1x_edit")), "Step1XSampler", **sampler_inputs)
