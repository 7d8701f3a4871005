"""Where the test environment lives.

``STEP1X_WORK`` is the folder ``scripts/setup_env.sh`` fills (default ``<repo>/.work``);
``STEP1X_COMFYUI`` is the ComfyUI source tree under test (default ``$STEP1X_WORK/ComfyUI``).
``scripts/run_tests.sh`` sets both once per ComfyUI version it tests.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODELS_DIR = REPO_ROOT / "tests" / "tiny_models"   # generators of the tiny stand-in weights
WORK_DIR = Path(os.environ.get("STEP1X_WORK") or REPO_ROOT / ".work").resolve()
COMFYUI_DIR = Path(os.environ.get("STEP1X_COMFYUI") or WORK_DIR / "ComfyUI").resolve()
