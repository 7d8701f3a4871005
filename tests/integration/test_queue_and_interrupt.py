"""The API queue script end to end, interrupting a running prompt, and recovery after a failure."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import websocket
from comfy_server import free_port
from PIL import Image
from queue_edit import ComfyError, format_execution_error
from workflow_files import PHOTO_SIZE, REPO_ROOT, edit_prompt, load_api, node_id_of, quick

from bad_files import TRUNCATED_DIT

QUEUE_SCRIPT = REPO_ROOT / "scripts" / "queue_edit.py"
PHOTO = REPO_ROOT / "workflows" / "input" / "chelsea_the_cat.png"
RUN_TIMEOUT_S = 300
LONG_RUN_STEPS = 1000        # far longer than the test waits: only an interrupt ends it in time
PROGRESS_TIMEOUT_S = 120
INTERRUPT_DEADLINE_S = 30    # one tiny-model step takes well under a second on 2 CPU cores


def run_queue_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(QUEUE_SCRIPT), *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def test_queue_script_edits_the_photo_and_writes_the_result(server, tmp_path):
    workflow = tmp_path / "quick_edit.json"
    workflow.write_text(json.dumps(quick(load_api("step1x_edit"))))
    out = tmp_path / "edited.png"
    done = run_queue_script("--server", server.address, "--image", str(PHOTO), "--instruction", "add a red hat",
                            "--seed", "3", "--out", str(out), "--workflow", str(workflow))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    with Image.open(out) as image:
        assert image.size == PHOTO_SIZE


def test_queue_script_exits_nonzero_with_the_servers_message(server, tmp_path):
    workflow = tmp_path / "truncated.json"
    prompt = quick(load_api("step1x_edit"))
    for node in prompt.values():
        if node["class_type"] == "Step1XModelLoader":
            node["inputs"]["ckpt_name"] = TRUNCATED_DIT
    workflow.write_text(json.dumps(prompt))
    done = run_queue_script("--server", server.address, "--image", str(PHOTO), "--instruction", "x",
                            "--out", str(tmp_path / "never.png"), "--workflow", str(workflow))
    assert done.returncode == 1
    assert "Step1XModelLoader" in done.stderr and "truncated" in done.stderr
    assert not (tmp_path / "never.png").exists()


def test_queue_script_reports_an_unreachable_server(tmp_path):
    done = run_queue_script("--server", f"127.0.0.1:{free_port()}", "--image", str(PHOTO), "--instruction", "x",
                            "--out", str(tmp_path / "never.png"))
    assert done.returncode == 1
    assert "cannot reach ComfyUI" in done.stderr


def wait_for_sampler_progress(server, client, sampler_node: str) -> None:
    """Block until the websocket reports a finished step of the sampler (its loop is running)."""
    socket = websocket.create_connection(f"ws://{server.address}/ws?clientId={client.client_id}",
                                         timeout=PROGRESS_TIMEOUT_S)
    try:
        deadline = time.monotonic() + PROGRESS_TIMEOUT_S
        while time.monotonic() < deadline:
            message = socket.recv()
            if isinstance(message, bytes):   # preview images
                continue
            event = json.loads(message)
            if event["type"] == "progress" and event["data"].get("node") == sampler_node:
                return
        raise AssertionError("the sampler never reported progress")
    finally:
        socket.close()


def test_sampler_reports_progress_and_sends_latent_previews(server, client):
    prompt = edit_prompt(steps=3, seed=21)
    sampler = node_id_of(prompt, "Step1XSampler")
    socket = websocket.create_connection(f"ws://{server.address}/ws?clientId={client.client_id}",
                                         timeout=PROGRESS_TIMEOUT_S)
    try:
        prompt_id = client.queue(prompt)
        steps, previews = [], 0
        while True:
            message = socket.recv()
            if isinstance(message, bytes):
                previews += 1
                continue
            event = json.loads(message)
            if event["type"] == "progress" and event["data"].get("node") == sampler:
                steps.append((event["data"]["value"], event["data"]["max"]))
            if event["type"] == "executing" and event["data"].get("node") is None \
                    and event["data"].get("prompt_id") == prompt_id:
                break
    finally:
        socket.close()
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert previews >= 3, "no latent preview images were sent"


def test_a_running_prompt_can_be_interrupted_and_the_next_one_runs(server, client):
    long_prompt = edit_prompt(steps=LONG_RUN_STEPS, seed=11)
    prompt_id = client.queue(long_prompt)
    wait_for_sampler_progress(server, client, node_id_of(long_prompt, "Step1XSampler"))
    started = time.monotonic()
    client.interrupt()
    with pytest.raises(ComfyError, match="interrupted"):
        client.wait(prompt_id, RUN_TIMEOUT_S)
    assert time.monotonic() - started < INTERRUPT_DEADLINE_S, "the interrupt was not honoured between steps"
    assert client.run(edit_prompt(seed=12), RUN_TIMEOUT_S)["status"]["status_str"] == "success"


def test_after_a_failed_prompt_the_next_one_runs(client):
    bad = edit_prompt(seed=13)
    for node in bad.values():
        if node["class_type"] == "Step1XModelLoader":
            node["inputs"]["ckpt_name"] = TRUNCATED_DIT
    with pytest.raises(ComfyError, match="truncated"):
        client.run(bad, RUN_TIMEOUT_S)
    history = client.run(edit_prompt(seed=14), RUN_TIMEOUT_S)
    assert history["status"]["status_str"] == "success"


def test_execution_error_text_names_node_and_message():
    status = {"messages": [["execution_start", {}], ["execution_error", {
        "node_id": "3", "node_type": "Step1XModelLoader", "exception_message": "x.safetensors is truncated\n"}]]}
    assert format_execution_error(status) == "node 3 (Step1XModelLoader) failed: x.safetensors is truncated"
