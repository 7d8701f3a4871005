"""The pack inside a real ComfyUI: import, node registration, schema as the UI sees it."""
from __future__ import annotations

from pathlib import Path

from comfy_server import PACK_NAME, pack_import_failures
from workflow_files import EXAMPLES_DIR

NODE_IDS = ("Step1XModelLoader", "Step1XVLMEncode", "Step1XPackRefLatent", "Step1XSampler", "Step1XUnpackDecode",
            "Step1XCoreSamplerSetup", "Step1XTeaCache")
CATEGORY = "Step1X-Edit"


def test_pack_imports_without_errors(server):
    log = server.log_text()
    assert str(Path("custom_nodes") / PACK_NAME) in log, "ComfyUI did not list the pack among its custom nodes"
    assert pack_import_failures(log) == []


def test_object_info_lists_every_node_with_inputs_and_tooltips(client):
    info = client.get_json("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info"
        node = info[node_id]
        assert node["category"] == CATEGORY
        assert node["python_module"].endswith(PACK_NAME)
        assert node["display_name"] and node["description"]
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert inputs, f"{node_id} has no inputs"
        for name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert node["output"], f"{node_id} has no outputs"


def test_loader_lists_the_checkpoints_in_diffusion_models(client):
    ckpt = client.get_json("/object_info/Step1XModelLoader")["Step1XModelLoader"]["input"]["required"]["ckpt_name"]
    assert {"step1x-edit-i1258.safetensors", "step1x-edit-v1p1-official.safetensors"} <= set(ckpt[1]["options"])


def test_sampler_defaults_are_the_official_ones(client):
    required = client.get_json("/object_info/Step1XSampler")["Step1XSampler"]["input"]["required"]
    assert required["steps"][1]["default"] == 28
    assert required["cfg"][1]["default"] == 6.0
    assert required["seed"][1]["default"] == 42
    assert required["model"][0] == "MODEL" and required["positive"][0] == "CONDITIONING"


def test_example_workflows_are_offered_to_the_template_browser(client):
    templates = client.get_json("/workflow_templates")
    shipped = sorted(path.stem for path in EXAMPLES_DIR.glob("*.json"))
    assert sorted(templates.get(PACK_NAME, [])) == shipped   # the UI files only: no API file offered as a template
    assert {"step1x_edit", "step1x_edit_v12", "step1x_text_to_image"} <= set(shipped)
