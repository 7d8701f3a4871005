"""benchmarks/bench_caches.py --tiny: the GPU benchmark's own path on a tiny random model on the CPU."""
from __future__ import annotations

import json
import sys

import pytest

from tests.environment import COMFYUI_DIR
from tests.unit.comfy_support import import_node_module


def test_tiny_run_writes_every_cache_and_threshold_against_the_uncached_edit(tmp_path, monkeypatch):
    import_node_module("nodes.runtime.cfg_guider")   # ComfyUI importable on the CPU, as the script does with --tiny
    from benchmarks import bench_caches

    out = tmp_path / "results" / "caches"
    monkeypatch.setattr(sys, "argv", ["bench_caches.py", "--comfyui", str(COMFYUI_DIR), "--out", str(out), "--tiny"])
    bench_caches.main()
    [written] = out.glob("caches-*.json")
    report = json.loads(written.read_text())
    steps = bench_caches.TINY_STEPS
    assert (report["size"], report["steps"], report["gpu"]) == (bench_caches.TINY_SIZE, steps, "cpu")
    runs = report["runs"]
    assert [(run["mode"], run["threshold"]) for run in runs] == [("uncached", None)] + [
        (method, threshold) for method, thresholds in bench_caches.THRESHOLDS.items() for threshold in thresholds]
    uncached = runs[0]
    assert uncached["rel_latent_error"] == 0 and uncached["steps_skipped"] == 0
    assert uncached["block_passes"] == bench_caches.CFG_BRANCHES * steps
    for method, thresholds in bench_caches.THRESHOLDS.items():
        rows = [run for run in runs if run["mode"] == method]
        assert [run["default"] for run in rows] == [True] + [False] * (len(thresholds) - 1)
        assert len(thresholds) >= 3
        for run in rows:
            assert run["s_per_edit"] > 0 and run["speedup"] == pytest.approx(uncached["s_per_edit"] / run["s_per_edit"])
            assert 0 <= run["steps_skipped"] < steps
            assert run["steps_skipped"] == steps - run["block_passes"] / bench_caches.CFG_BRANCHES
            assert (run["rel_latent_error"] > 0) == (run["steps_skipped"] > 0)
