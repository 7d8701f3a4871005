"""The benchmark scripts' own plumbing (they run on a GPU machine; these parts run anywhere)."""
from __future__ import annotations

import sys

import pytest
import torch

from benchmarks import bench_pipeline, bench_robustness
from benchmarks.bench_dit import make_out_dir


def test_results_folder_is_created_with_its_parents(tmp_path):
    out = tmp_path / "not" / "yet" / "there"
    assert make_out_dir(out) == out and out.is_dir()
    assert make_out_dir(out) == out  # an existing folder is fine


def test_pipeline_benchmark_refuses_an_impossible_results_folder_before_any_work(tmp_path, monkeypatch):
    """The folder is made (or refused) at the start, not when the JSON is written after the run."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(sys, "argv", ["bench_pipeline.py", "--comfyui", str(tmp_path), "--out", str(blocker / "out")])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: pytest.fail("the run started before the check"))
    with pytest.raises(SystemExit, match=f"cannot create the results folder {blocker / 'out'}"):
        bench_pipeline.main()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e4m3fn])
def test_robustness_benchmark_flags_find_a_single_nan(dtype):
    weights = torch.randn(64, 32).to(dtype)
    assert bool(bench_robustness.finite_flag(weights)) and bool(bench_robustness.sum_flag(weights))
    weights[5, 7] = float("nan")
    assert not bool(bench_robustness.finite_flag(weights)) and not bool(bench_robustness.sum_flag(weights))
