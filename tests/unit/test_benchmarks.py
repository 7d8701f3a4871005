"""The benchmark scripts' own plumbing (they run on a GPU machine; these parts run anywhere)."""
from __future__ import annotations

import sys

import pytest
import torch

from benchmarks import bench_pipeline, bench_robustness
from benchmarks.bench_dit import make_out_dir
from tests.environment import COMFYUI_DIR
from tests.unit.comfy_support import import_node_module


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


def test_pipeline_benchmark_refuses_fp8_rows_where_comfyui_has_no_scaled_fp8_ops(tmp_path, monkeypatch, capsys):
    """ComfyUI 0.33 dropped comfy.ops.scaled_fp8_ops: the fp8 rows are refused before any GPU work, naming
    the benchmark that measures fp8 there; 0.3.75 runs them."""
    import_node_module("nodes.runtime.comfy_compat")   # ComfyUI importable, --cpu
    import comfy.ops

    monkeypatch.setattr(sys, "argv", ["bench_pipeline.py", "--comfyui", str(COMFYUI_DIR), "--out", str(tmp_path),
                                      "--parts", "dit", "--weights", "fp8"])
    monkeypatch.setattr(sys, "path", list(sys.path))   # main() puts ComfyUI first; later tests spawn processes
    if hasattr(comfy.ops, "scaled_fp8_ops"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: (_ for _ in ()).throw(RuntimeError("GPU run")))
        with pytest.raises(RuntimeError, match="GPU run"):   # past the check: the run starts
            bench_pipeline.main()
    else:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: pytest.fail("the run started before the check"))
        with pytest.raises(SystemExit):
            bench_pipeline.main()
        assert "no comfy.ops.scaled_fp8_ops" in capsys.readouterr().err
    for weights, parts in (("bf16", ["dit", "vae"]), ("fp8", ["vlm", "vae"])):   # no fp8 row asked for
        assert bench_pipeline.fp8_refusal(type("Args", (), {"weights": weights, "parts": parts})) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e4m3fn])
def test_robustness_benchmark_flags_find_a_single_nan(dtype):
    weights = torch.randn(64, 32).to(dtype)
    assert bool(bench_robustness.finite_flag(weights)) and bool(bench_robustness.sum_flag(weights))
    weights[5, 7] = float("nan")
    assert not bool(bench_robustness.finite_flag(weights)) and not bool(bench_robustness.sum_flag(weights))


def test_vram_benchmark_runs_only_the_parts_asked_for():
    from benchmarks.bench_vram_budgets import configurations

    both = configurations(False, 4, [24, 8], ["fp8"])
    assert [(c["part"], c.get("budget_gib")) for c in both] == [("dit", None), ("dit", None), ("budget", 24),
                                                                 ("budget", 8)]
    budgets = configurations(False, 4, [24, 8], ["fp8"], ["budget"])
    assert [c["budget_gib"] for c in budgets] == [24, 8] and all(c["dynamic"] for c in budgets)
    assert [c["dynamic"] for c in configurations(False, 4, [24], ["bf16"], ["dit"])] == [True, False]


def test_vram_benchmark_reuses_whole_scratch_files_only(tmp_path, monkeypatch):
    from benchmarks import bench_vram_budgets

    (tmp_path / "step1x-edit-v1p1-random-tiny.safetensors").write_text("whole")
    (tmp_path / "step1x-edit-v1p1-random-tiny-fp8.safetensors.part").write_text("cut off")
    (tmp_path / "step1x-edit-v1p1-random-full-fp8.safetensors").write_text("a full-size run's file")
    monkeypatch.setattr(bench_vram_budgets, "_random_state", lambda *a, **k: pytest.fail("files were rewritten"))
    with pytest.raises(pytest.fail.Exception):   # the fp8 file is not whole: both are written again
        bench_vram_budgets.write_dit_files(tmp_path, True, torch.device("cpu"))
    (tmp_path / "step1x-edit-v1p1-random-tiny-fp8.safetensors").write_text("whole")
    files = bench_vram_budgets.write_dit_files(tmp_path, True, torch.device("cpu"))
    assert files == {"bf16": str(tmp_path / "step1x-edit-v1p1-random-tiny.safetensors"),
                     "fp8": str(tmp_path / "step1x-edit-v1p1-random-tiny-fp8.safetensors")}


def test_server_benchmark_queues_each_size_level_twice_with_new_seeds_and_the_loader_settings(tmp_path):
    import json

    from benchmarks.bench_server import DEFAULT_WORKFLOW, edit_runs, workflow_variant

    runs = edit_runs([1024, 512])
    assert [level for level, _ in runs] == [1024, 1024, 512, 512]
    assert len({seed for _, seed in runs}) == 4
    loader_inputs = {"weight_dtype": "fp8_e4m3fn_fast", "torch_compile": True}
    prompt = json.loads(workflow_variant(DEFAULT_WORKFLOW, 1024, loader_inputs, tmp_path).read_text())
    levels = [node["inputs"]["size_level"] for node in prompt.values() if "size_level" in node["inputs"]]
    assert levels == [1024, 1024]   # VLM Encode and Pack Ref Latent
    (loader,) = [node["inputs"] for node in prompt.values() if node["class_type"] == "Step1XModelLoader"]
    assert loader["weight_dtype"] == "fp8_e4m3fn_fast" and loader["torch_compile"] is True
    assert json.loads(DEFAULT_WORKFLOW.read_text()) != prompt   # the shipped file is left as it is
