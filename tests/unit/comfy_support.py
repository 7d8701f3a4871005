"""ComfyUI importable in the test process (CPU), for unit tests of the pack's node modules."""
from __future__ import annotations

import sys

import pytest

from tests.environment import COMFYUI_DIR
from tests.unit.vlm_support import import_pack_module


def import_node_module(dotted: str):
    """The pack's ``nodes.<module>`` with ComfyUI on sys.path; --cpu is set before comfy.model_management."""
    if not (COMFYUI_DIR / "comfy").is_dir():
        pytest.fail(f"ComfyUI not found at {COMFYUI_DIR}: run scripts/setup_env.sh (or set STEP1X_WORK / STEP1X_COMFYUI)")
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.append(str(COMFYUI_DIR))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (after args.cpu)

    return import_pack_module(dotted)
