"""Step1X-Edit v1.2 in a real ComfyUI server: the v1.2 nodes, both shipped v1.2 workflows on a tiny
v1.2 pipeline folder (sharded diffusers DiT + the tiny Qwen2.5-VL as its own text_encoder/), and the
messages for a stock Qwen or v1.0 conditioning."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from PIL import Image
from queue_edit import ComfyError, output_images
from workflow_files import EXAMPLES_DIR, PHOTO_SIZE, TEST_SIZE_LEVEL, TEST_STEPS, V12_API_DIR, set_inputs

from tests.environment import TINY_MODELS_DIR

GENERATOR = TINY_MODELS_DIR / "make_tiny_v12.py"
PIPELINE = "Step1X-Edit-v1p2"
STOCK_QWEN = "Qwen2.5-VL-7B-Instruct"   # the tiny stock Qwen of the v1.0/v1.1 workflows, in text_encoders/
V12_NODES = ("Step1XV12Loader", "Step1XV12Encode", "Step1XThink", "Step1XReasoningEdit")
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def v12_pipeline(base_dir) -> Path:
    """The tiny v1.2 pipeline folder in models/diffusion_models (made once per generator version)."""
    work = base_dir.parent / "tiny-v12"
    cache = work / hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:12]
    if not (cache / PIPELINE).is_dir():
        subprocess.run([sys.executable, str(GENERATOR), str(cache)], check=True)
    link = base_dir / "models" / "diffusion_models" / PIPELINE
    if not link.exists():
        link.symlink_to(cache / PIPELINE, target_is_directory=True)
    return link


def load_v12(name: str) -> dict:
    return json.loads((V12_API_DIR / f"{name}.json").read_text())


def quick_v12(prompt: dict) -> dict:
    """Few steps, a small working size, one try, one VLM attempt per step, unique output names."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if "size_level" in inputs:
            inputs["size_level"] = TEST_SIZE_LEVEL
        if "steps" in inputs:
            inputs["steps"] = TEST_STEPS
        if node["class_type"] == "Step1XReasoningEdit":
            inputs.update(max_tries=1, vlm_attempts=1)
        if node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = f"test/{uuid.uuid4().hex[:8]}"
    return prompt


def saved_sizes(client, history: dict) -> list[tuple[int, int]]:
    sizes = []
    for image in output_images(history):
        with Image.open(io.BytesIO(client.download(image))) as saved:
            sizes.append(saved.size)
    return sizes


def test_v12_nodes_are_registered_with_tooltips(client, v12_pipeline):
    info = client.get_json("/object_info")
    for node_id in V12_NODES:
        node = info[node_id]
        assert node["category"] == "Step1X-Edit" and node["display_name"] and node["description"]
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    loader = info["Step1XV12Loader"]
    assert PIPELINE in loader["input"]["required"]["pipeline"][1]["options"]
    assert loader["output"] == ["MODEL", "STEP1X_VLM"]
    reasoning = info["Step1XReasoningEdit"]
    assert reasoning["output"] == ["IMAGE", "IMAGE", "STRING"]
    assert reasoning["input"]["required"]["max_tries"][1]["default"] == 3
    assert reasoning["input"]["required"]["vlm_attempts"][1]["default"] == 20


def test_plain_v12_edit_workflow_runs(client, v12_pipeline):
    history = client.run(quick_v12(load_v12("step1x_edit_v12")), RUN_TIMEOUT_S)
    assert saved_sizes(client, history) == [PHOTO_SIZE]


def test_reasoning_edit_workflow_runs_and_explains_itself(client, v12_pipeline):
    prompt = quick_v12(load_v12("step1x_reasoning_edit_v12"))
    history = client.run(prompt, RUN_TIMEOUT_S)
    assert saved_sizes(client, history) == [PHOTO_SIZE]
    outputs = history["outputs"]
    node_of = {n["class_type"]: k for k, n in prompt.items()}
    assert len(outputs[node_of["PreviewImage"]]["images"]) == 1   # every try: one with max_tries 1
    (text,) = outputs[node_of["PreviewAny"]]["text"]
    assert text.startswith("Instruction: ") and "Thought instruction: " in text
    assert "Try 1: edited the input image" in text and "Chosen: try 1 of 1" in text
    # one VLM attempt per step: tiny-model gibberish gives the release's failure record, not a crash
    assert "reflection: <#Think>" in text


def test_plain_edit_is_seeded(client, v12_pipeline):
    prompt = quick_v12(load_v12("step1x_edit_v12"))
    first = saved_images(client, client.run(prompt, RUN_TIMEOUT_S))
    again = quick_v12(load_v12("step1x_edit_v12"))
    assert saved_images(client, client.run(again, RUN_TIMEOUT_S)) == first
    other = set_inputs(quick_v12(load_v12("step1x_edit_v12")), "Step1XSampler", seed=7)
    assert saved_images(client, client.run(other, RUN_TIMEOUT_S)) != first


def saved_images(client, history: dict) -> list[bytes]:
    images = []
    for image in output_images(history):
        with Image.open(io.BytesIO(client.download(image))) as saved:
            images.append(saved.convert("RGB").tobytes())
    return images


def test_stock_qwen_as_v12_text_encoder_names_the_folder_to_use(client, v12_pipeline):
    prompt = set_inputs(quick_v12(load_v12("step1x_edit_v12")), "Step1XV12Loader", text_encoder=STOCK_QWEN)
    with pytest.raises(ComfyError, match=r"stock Qwen2\.5-VL.*Step1X-Edit-v1p2 folder"):
        client.run(prompt, RUN_TIMEOUT_S)


def test_v10_conditioning_with_the_v12_model_names_the_v12_encoder(client, v12_pipeline):
    prompt = quick_v12(load_v12("step1x_edit_v12"))
    prompt["9"] = {"class_type": "Step1XVLMEncode", "inputs": {
        "image": ["1", 0], "instruction": "make it snow", "negative_instruction": "", "size_level": TEST_SIZE_LEVEL,
        "resize_filter": "lanczos", "hf_folder": STOCK_QWEN, "release": "v1.0"}}
    set_inputs(prompt, "Step1XSampler", positive=["9", 0])
    with pytest.raises(ComfyError, match="is Step1X-Edit v1.2: encode with 'Step1X v1.2 VLM Encode'"):
        client.run(prompt, RUN_TIMEOUT_S)


# ---- the UI twins in ComfyUI's own frontend (headless Chromium) ----------------------------------

V12_QUICK_WIDGETS = {"Step1XSampler": {"steps": TEST_STEPS}, "Step1XV12Encode": {"size_level": TEST_SIZE_LEVEL},
                     "Step1XPackRefLatent": {"size_level": TEST_SIZE_LEVEL}}
V12_WORKFLOWS = sorted(p.stem for p in V12_API_DIR.glob("*.json"))


@pytest.mark.parametrize("name", V12_WORKFLOWS)
def test_v12_ui_workflow_loads_and_is_the_api_workflow(server, v12_pipeline, name):
    from test_browser import SCREENSHOT_DIR, run_ui_check, same_graph

    run = name == "step1x_edit_v12"   # the reasoning workflow's run is covered through the API above
    result = run_ui_check(server.url, EXAMPLES_DIR / f"{name}.json", SCREENSHOT_DIR / f"{name}.png",
                          queue_with=V12_QUICK_WIDGETS if run else None)
    assert result["missing"] == [], f"node types unknown to the frontend: {result['missing']}"
    assert not any("missing" in text.lower() for text in result["dialogText"]), result["dialogText"]
    same_graph(result["apiPrompt"], load_v12(name), server.url)
    if run:
        assert result["entry"]["status"]["status_str"] == "success", json.dumps(result["entry"]["status"])[:3000]
