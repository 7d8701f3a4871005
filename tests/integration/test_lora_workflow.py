"""The Step1X LoRA node in a real ComfyUI server: schema, the shipped LoRA workflow, a LoRA that
changes the edit and comes off again when the graph stops applying it (ModelPatcher unpatching),
and a LoRA of the wrong family refused with a message naming it."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from lora_files import LORA_NODE, LORA_WORKFLOW, write_tiny_loras
from PIL import Image
from queue_edit import ComfyError, output_images
from safetensors.torch import load_file, save_file
from workflow_files import PHOTO_SIZE, load_api, quick, set_inputs

BASE_WORKFLOW = "step1x_edit"
RUN_TIMEOUT_S = 600
FOREIGN_LORA = "flux-like-lora.safetensors"


@pytest.fixture(scope="session")
def tiny_lora(base_dir):
    return write_tiny_loras(base_dir / "models")


def run_image(client, prompt: dict) -> np.ndarray:
    images = output_images(client.run(prompt, RUN_TIMEOUT_S))
    assert len(images) == 1
    with Image.open(io.BytesIO(client.download(images[0]))) as image:
        assert image.size == PHOTO_SIZE
        return np.asarray(image.convert("RGB"))


def lora_prompt(**lora_inputs) -> dict:
    return set_inputs(quick(load_api(LORA_WORKFLOW)), LORA_NODE, **lora_inputs)


def test_lora_workflow_is_the_edit_workflow_plus_the_lora_node():
    """Guards against drift: regenerate workflows/*/step1x_edit_lora.json when step1x_edit.json changes."""
    lora = set_inputs(load_api(LORA_WORKFLOW), "SaveImage", filename_prefix="")
    base = set_inputs(load_api(BASE_WORKFLOW), "SaveImage", filename_prefix="")
    (lora_id,) = [k for k, n in lora.items() if n["class_type"] == LORA_NODE]
    upstream = lora.pop(lora_id)["inputs"]["model"]
    for node in lora.values():
        node["inputs"] = {k: upstream if v == [lora_id, 0] else v for k, v in node["inputs"].items()}
    assert lora == base


def test_object_info_describes_the_lora_node(client, tiny_lora):
    node = client.get_json(f"/object_info/{LORA_NODE}")[LORA_NODE]
    assert node["category"] == "Step1X-Edit" and node["display_name"] and node["description"]
    required = node["input"]["required"]
    for name, spec in required.items():
        assert spec[1].get("tooltip"), f"{name} has no tooltip"
    assert required["model"][0] == "MODEL" and node["output"] == ["MODEL"]
    assert tiny_lora.name in required["lora_name"][1]["options"]
    strength = required["strength"][1]
    assert strength["default"] == 1.0 and strength["min"] < 0 < strength["max"]


def test_shipped_lora_workflow_runs_and_logs_ignored_keys(client, server, tiny_lora):
    run_image(client, quick(load_api(LORA_WORKFLOW)))
    log = server.log_text()
    assert f"skipped {len(tiny_lora.ignored)} module(s)" in log
    assert tiny_lora.ignored[0] in log


def test_lora_changes_the_edit_and_comes_off_again(client, tiny_lora):
    without = run_image(client, quick(load_api(BASE_WORKFLOW)))
    with_lora = run_image(client, lora_prompt(strength=1.0))
    assert (with_lora != without).any(), "the LoRA did not change the edit"
    # Strength 0 hands the loader's model through; the shared weights still carry the LoRA's patches
    # from the previous prompt, so ComfyUI must restore them for this edit to match the first one.
    restored = run_image(client, lora_prompt(strength=0.0))
    assert np.array_equal(restored, without), "weights not restored after the LoRA was removed"


def test_foreign_lora_is_refused_with_its_family(client, base_dir, tiny_lora):
    loras = base_dir / "models" / "loras"
    tiny = load_file(str(loras / tiny_lora.name))
    save_file({k: v.repeat(2, 1) if k.endswith("lora_up.weight") else v for k, v in tiny.items()},
              str(loras / FOREIGN_LORA))
    with pytest.raises(ComfyError, match=rf"{LORA_NODE}.*{re.escape(FOREIGN_LORA)}: .*FLUX\.1"):
        client.run(lora_prompt(lora_name=FOREIGN_LORA), RUN_TIMEOUT_S)
