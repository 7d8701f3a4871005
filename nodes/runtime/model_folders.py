"""Folders and files under ComfyUI's model folders (any root ``folder_paths`` knows for a kind)."""
from __future__ import annotations

from pathlib import Path

import folder_paths

from ...model.weights.checkpoint_folder import INDEX_SUFFIX, TRANSFORMER_SUBFOLDER

HF_FOLDER_ROOT = "text_encoders"  # folder_paths key the Hugging Face folders are listed from
HF_CONFIG_FILE = "config.json"   # what makes a folder a Hugging Face model folder


def find_model_folder(kind: str, name: str, marker: str | None = None) -> Path | None:
    """``models/<kind>/<name>`` under the first root where it is a folder (holding ``marker``, if given)."""
    for root in folder_paths.get_folder_paths(kind):
        candidate = Path(root) / name
        if candidate.is_dir() and (marker is None or (candidate / marker).is_file()):
            return candidate
    return None


def list_hf_folders() -> list[str]:
    """Sub-folders of models/text_encoders that hold a config.json (Hugging Face model folders)."""
    names = set()
    for root in folder_paths.get_folder_paths(HF_FOLDER_ROOT):
        root_path = Path(root)
        if root_path.is_dir():
            names.update(p.parent.name for p in root_path.glob(f"*/{HF_CONFIG_FILE}"))
    return sorted(names)


def list_dit_folders(roots: list[str]) -> list[str]:
    """Sub-folders (up to two levels deep) of ``roots`` that hold a diffusers DiT: a pipeline folder
    (with ``transformer/``), or a lone folder of shards with their index (not a listed pipeline's own
    ``transformer/``)."""
    found = set()
    for root in roots:
        root_path = Path(root)
        if not root_path.is_dir():
            continue
        for folder in sorted(p for p in [*root_path.glob("*"), *root_path.glob("*/*")] if p.is_dir()):
            pipeline = (folder / TRANSFORMER_SUBFOLDER).is_dir()
            inside_pipeline = folder.name == TRANSFORMER_SUBFOLDER and folder.parent != root_path
            if pipeline or (not inside_pipeline and any(folder.glob("*" + INDEX_SUFFIX))):
                found.add(folder.relative_to(root_path).as_posix())
    return sorted(found)
