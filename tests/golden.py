"""Access to the golden fixture folder (``STEP1X_GOLDEN_DIR``, default ``../shared/golden``).

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
GOLDEN_DIR = Path(os.environ.get("STEP1X_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden")).resolve()


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


@lru_cache(maxsize=None)
def model_sets() -> tuple[FixtureSet, ...]:
    """The top-level set and every model subset its manifest lists (e.g. ``v1_1``)."""
    root = require_golden_dir()
    top = json.loads((root / "manifest.json").read_text())
    sets = [FixtureSet(root, top)]
    for name, sub in top.get("subsets", {}).items():
        path = root / sub["manifest"]
        sets.append(FixtureSet(path.parent, json.loads(path.read_text())))
    return tuple(sets)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.to(torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        err = (actual - expected).abs().max().item()
        raise AssertionError(f"{what}: max abs error {err:.3e} exceeds atol={atol} rtol={rtol}")
