"""A real ComfyUI server (the tree ``STEP1X_COMFYUI`` names) for the whole test run: --cpu, base directory in a temp folder,
this pack symlinked into custom_nodes/, tiny random weights in models/ under the official names.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from comfy_server import ComfyServer, link_tiny_weights, prepare_base_dir  # noqa: E402
from queue_edit import ComfyClient  # noqa: E402

from bad_files import import_comfy, write_bad_files  # noqa: E402
from lora_files import write_tiny_loras  # noqa: E402

from tests.environment import COMFYUI_DIR, WORK_DIR as WORK  # noqa: E402

PHOTO = REPO_ROOT / "workflows" / "input" / "chelsea_the_cat.png"
# Previews through the FLUX Latent2RGB factors, so the sampler's preview path runs in every test.
SERVER_ARGS = ("--cpu", "--preview-method", "latent2rgb")


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    base = prepare_base_dir(tmp_path_factory.mktemp("comfy-base"))
    link_tiny_weights(WORK, COMFYUI_DIR, base)
    import_comfy(COMFYUI_DIR)
    write_bad_files(base / "models")
    write_tiny_loras(base / "models")   # the LoRA workflow's tiny LoRA (lora_files.py)
    (base / "input" / PHOTO.name).write_bytes(PHOTO.read_bytes())
    return base


@pytest.fixture(scope="session")
def server(base_dir) -> ComfyServer:
    comfy = ComfyServer(COMFYUI_DIR, base_dir, python=sys.executable, extra_args=SERVER_ARGS)
    comfy.start()
    yield comfy
    comfy.stop()


@pytest.fixture
def client(server) -> ComfyClient:
    assert server.alive(), f"the server died:\n{server.log_tail()}"
    return ComfyClient(server.url)
