"""ComfyUI's own frontend in headless Chromium: the shipped UI workflows load with every node known,
match their API twins, and run when queued from the page."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import make_workflows
import make_workflows_v12
import pytest
from tests.environment import WORK_DIR as WORK
from workflow_files import (API_DIR, EXAMPLES_DIR, TEST_SIZE_LEVEL, TEST_STEPS, V12_API_DIR, api_workflow_names,
                            load_api)

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
NODE_MODULES = WORK / "node" / "node_modules"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOT_DIR = WORK / "screenshots"
QUICK_WIDGETS = {"Step1XSampler": {"steps": TEST_STEPS},
                 "Step1XVLMEncode": {"size_level": TEST_SIZE_LEVEL},
                 "Step1XPackRefLatent": {"size_level": TEST_SIZE_LEVEL}}  # what a user would turn down on a CPU
BROWSER_TIMEOUT_S = 400


def run_ui_check(server_url: str, workflow: Path, screenshot: Path, queue_with: dict | None = None) -> dict:
    assert shutil.which("node"), "node (Node.js) is needed for the browser test: apt-get install nodejs"
    for need, hint in ((Path(CHROMIUM), "apt-get install chromium"), (NODE_MODULES / "playwright-core", "npm")):
        assert need.exists(), f"{need} missing: run scripts/setup_env.sh (it installs the browser test tools: {hint})"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        ["node", str(BROWSER_DIR / "ui_check.js"), server_url, str(workflow), str(screenshot)]
        + ([] if queue_with is None else [json.dumps(queue_with)]),
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
        env=dict(os.environ, NODE_PATH=str(NODE_MODULES), CHROMIUM_PATH=CHROMIUM))
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def server_inputs(server_url: str, class_type: str) -> set[str]:
    """The inputs the server declares for a node class (/object_info): what a prompt may set."""
    with urllib.request.urlopen(f"{server_url}/object_info/{class_type}", timeout=30) as response:
        declared = json.load(response)[class_type]["input"]
    return {name for group in ("required", "optional") for name in declared.get(group, {})}


def same_graph(ui_prompt: dict, api_prompt: dict, server_url: str) -> None:
    """The frontend's API form of the UI file equals the shipped API file (classes, links, values).

    Only the inputs the server declares are compared: frontends add display widgets of their own to some
    core nodes (PreviewAny's "preview" text in some releases, not in others) that the server ignores."""
    assert set(ui_prompt) == set(api_prompt)
    for node_id, node in api_prompt.items():
        assert ui_prompt[node_id]["class_type"] == node["class_type"]
        declared = server_inputs(server_url, node["class_type"])
        ui_inputs = {k: v for k, v in ui_prompt[node_id]["inputs"].items() if k in declared}
        assert ui_inputs == node["inputs"], f"node {node_id} ({node['class_type']}) differs"


def test_every_api_workflow_has_its_ui_twin_in_the_template_folder_and_no_other():
    api_names = {p.stem for folder in (API_DIR, V12_API_DIR) for p in folder.glob("*.json")}
    ui_names = {p.stem for p in EXAMPLES_DIR.glob("*.json")}
    assert api_names == ui_names, (f"API files without a UI twin: {sorted(api_names - ui_names)}; UI files without "
                                   f"an API twin: {sorted(ui_names - api_names)} (scripts/export_ui_workflows.sh)")
    assert api_names == set(make_workflows.WORKFLOWS) | set(make_workflows_v12.WORKFLOWS)   # what the writers ship


def test_edit_workflow_loads_renders_and_runs_from_the_browser(server):
    screenshot = SCREENSHOT_DIR / "step1x_edit.png"
    result = run_ui_check(server.url, EXAMPLES_DIR / "step1x_edit.json", screenshot, queue_with=QUICK_WIDGETS)
    assert result["missing"] == [], f"node types unknown to the frontend: {result['missing']}"
    assert not any("missing" in text.lower() for text in result["dialogText"]), result["dialogText"]
    assert result["nodeCount"] == len(load_api("step1x_edit"))
    same_graph(result["apiPrompt"], load_api("step1x_edit"), server.url)
    status = result["entry"]["status"]
    assert status["status_str"] == "success", json.dumps(status)[:3000]
    saved = [image for output in result["entry"]["outputs"].values() for image in output.get("images", [])]
    assert saved, "the queued workflow saved no image"
    assert screenshot.stat().st_size > 0


@pytest.mark.parametrize("name", [n for n in api_workflow_names() if n != "step1x_edit"])
def test_variant_workflows_load_with_every_node_known(server, name):
    # Their runs are covered through the API (test_workflows.py); here: loading and conversion.
    result = run_ui_check(server.url, EXAMPLES_DIR / f"{name}.json", SCREENSHOT_DIR / f"{name}.png")
    assert result["missing"] == [], f"node types unknown to the frontend: {result['missing']}"
    assert not any("missing" in text.lower() for text in result["dialogText"]), result["dialogText"]
    same_graph(result["apiPrompt"], load_api(name), server.url)
