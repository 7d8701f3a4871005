#!/usr/bin/env python3
"""Run a command while a throwaway ComfyUI (this pack, tiny weights, --cpu) is up; {url} in the
command becomes the server's address. Used by scripts/export_ui_workflows.sh.

    python scripts/with_server.py -- node export_ui.js {url} ...
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from comfy_server import PACK_DIR, ComfyServer, link_tiny_weights, prepare_base_dir

WORK = Path(os.environ.get("STEP1X_WORK", PACK_DIR / ".work"))
PHOTO = PACK_DIR / "workflows" / "input" / "chelsea_the_cat.png"


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    with tempfile.TemporaryDirectory() as tmp:
        base = prepare_base_dir(Path(tmp))
        link_tiny_weights(WORK, WORK / "ComfyUI", base)
        (base / "input" / PHOTO.name).write_bytes(PHOTO.read_bytes())
        with ComfyServer(WORK / "ComfyUI", base, extra_args=("--cpu",)) as server:
            return subprocess.run([part.replace("{url}", server.url) for part in command]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
