"""Access to the reference fixture folder: ``tests/fixtures/golden`` in this repository, or the folder
``STEP1X_GOLDEN_DIR`` names.

Every config, input and tolerance a parity test uses comes from the folder's ``manifest.json``;
other fixture sets in the same format are run against the code, so nothing here may assume the
visible set's numbers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_REPO_GOLDEN_DIR = REPO_ROOT / "tests" / "fixtures" / "golden"
GOLDEN_DIR = Path(os.environ.get("STEP1X_GOLDEN_DIR") or IN_REPO_GOLDEN_DIR).resolve()


@dataclass(frozen=True)
class FixtureSet:
    """One manifest: the top-level set (v1.0) or a subset such as ``v1_1``."""

    folder: Path
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest.get("model_version", "v1.0")

    def entry(self, filename: str) -> dict:
        return self.manifest["files"][filename]

    def has(self, filename: str) -> bool:
        return filename in self.manifest["files"] and (self.folder / filename).is_file()

    def tensors(self, filename: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.folder / filename))

    def tolerance(self, filename: str) -> tuple[float, float]:
        tol = self.entry(filename)["tolerance"]
        return float(tol["atol"]), float(tol["rtol"])


def require_golden_dir() -> Path:
    if not (GOLDEN_DIR / "manifest.json").is_file():
        raise FileNotFoundError(
            f"golden fixtures not found at {GOLDEN_DIR}: set STEP1X_GOLDEN_DIR to the folder "
            "that holds manifest.json"
        )
    return GOLDEN_DIR


DIFFUSERS_LAYOUT = "diffusers"
V12_FOLDER = "v1_2"


def _subsets(root: Path) -> list[FixtureSet]:
    top = json.loads((root / "manifest.json").read_text())
    sets = []
    for sub in top.get("subsets", {}).values():
        path = root / sub["manifest"]
        sets.append(FixtureSet(path.parent, json.loads(path.read_text())))
    return sets


@lru_cache(maxsize=None)
def model_sets() -> tuple[FixtureSet, ...]:
    """The top-level set and every official-layout model subset its manifest lists (e.g. ``v1_1``).

    Diffusers-layout sets (v1.2) have another config format: :func:`diffusers_sets`.
    """
    root = require_golden_dir()
    top = FixtureSet(root, json.loads((root / "manifest.json").read_text()))
    return (top, *(s for s in _subsets(root) if s.manifest.get("weights_layout") != DIFFUSERS_LAYOUT))


@lru_cache(maxsize=None)
def diffusers_sets() -> tuple[FixtureSet, ...]:
    """Diffusers-layout model sets: those the top manifest lists, else the ``v1_2/`` folder if present."""
    root = require_golden_dir()
    sets = [s for s in _subsets(root) if s.manifest.get("weights_layout") == DIFFUSERS_LAYOUT]
    folder = root / V12_FOLDER
    if not sets and folder.is_dir():
        if not (folder / "manifest.json").is_file():  # data present but unreadable: fail, never skip
            raise FileNotFoundError(f"{folder} exists but has no manifest.json: the v1.2 parity tests cannot read "
                                    "its configs and tolerances. Restore the manifest or remove the folder.")
        sets.append(FixtureSet(folder, json.loads((folder / "manifest.json").read_text())))
    return tuple(sets)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.to(torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        err = (actual - expected).abs().max().item()
        raise AssertionError(f"{what}: max abs error {err:.3e} exceeds atol={atol} rtol={rtol}")
