"""The golden-folder helper fails loudly on data it cannot read, so parity tests never skip silently."""
from __future__ import annotations

import json

import pytest

from tests import golden


def test_a_v12_folder_without_a_manifest_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {}}))
    (tmp_path / golden.V12_FOLDER).mkdir()
    monkeypatch.setattr(golden, "GOLDEN_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="v1_2 exists but has no manifest.json"):
        golden.diffusers_sets.__wrapped__()


def test_no_v12_folder_means_no_v12_sets(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {}}))
    monkeypatch.setattr(golden, "GOLDEN_DIR", tmp_path)
    assert golden.diffusers_sets.__wrapped__() == ()
