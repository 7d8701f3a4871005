"""scripts/queue_edit.py fills the shipped API workflows: photo, instruction, seed and output prefix."""
from __future__ import annotations

import json
import sys

import pytest

from tests.environment import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from queue_edit import SEED_INPUTS, ComfyError, fill_edit_workflow  # noqa: E402

EDIT_WORKFLOWS = sorted(p for p in (REPO_ROOT / "workflows" / "api").glob("step1x_edit*.json"))


@pytest.mark.parametrize("path", EDIT_WORKFLOWS, ids=[p.stem for p in EDIT_WORKFLOWS])
def test_every_shipped_edit_workflow_takes_the_seed(path):
    prompt = fill_edit_workflow(json.loads(path.read_text()), "photo.png", "add a red hat", 1234, "out/x")
    seeds = [node["inputs"][SEED_INPUTS[node["class_type"]]] for node in prompt.values()
             if node["class_type"] in SEED_INPUTS]
    assert seeds == [1234]
    by_class = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert by_class["LoadImage"]["image"] == "photo.png"
    assert by_class["Step1XVLMEncode"]["instruction"] == "add a red hat"
    assert by_class["SaveImage"]["filename_prefix"] == "out/x"


def test_a_workflow_without_a_sampler_seed_is_named():
    prompt = json.loads((REPO_ROOT / "workflows" / "api" / "step1x_edit_ksampler.json").read_text())
    prompt = {key: node for key, node in prompt.items() if node["class_type"] != "KSampler"}
    with pytest.raises(ComfyError, match="exactly one of Step1XSampler, KSampler, RandomNoise, found 0"):
        fill_edit_workflow(prompt, "photo.png", "add a red hat", 1, "out/x")
