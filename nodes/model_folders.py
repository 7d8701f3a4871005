"""Folders and files under ComfyUI's model folders (any root ``folder_paths`` knows for a kind)."""
from __future__ import annotations

from pathlib import Path

import folder_paths


def find_model_folder(kind: str, name: str, marker: str | None = None) -> Path | None:
    """``models/<kind>/<name>`` under the first root where it is a folder (holding ``marker``, if given)."""
    for root in folder_paths.get_folder_paths(kind):
        candidate = Path(root) / name
        if candidate.is_dir() and (marker is None or (candidate / marker).is_file()):
            return candidate
    return None
