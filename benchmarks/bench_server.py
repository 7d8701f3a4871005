"""The shipped edit workflow through a real ComfyUI server on the GPU, with full-size random weights.

    python benchmarks/bench_server.py --comfyui PATH/TO/ComfyUI --out DIR [--size-levels 1024 512]

Writes the official file names with random full-size weights (the v1.1 DiT in bf16, ComfyUI's
``qwen_2.5_vl_7b.safetensors`` layout of Qwen2.5-VL-7B, the FLUX VAE ``ae.safetensors``), starts ComfyUI
with this pack on 127.0.0.1, and queues ``workflows/api/step1x_edit.json`` (28 steps, CFG; shipped at size
level 512) on the bundled photo twice at each ``--size-levels`` level, a new seed each time: the first run
loads every model from disk, the others find them loaded. Each time is from ``POST /prompt`` to the saved
image on disk (``scripts/queue_edit.py edit``).
Writes ``server-<date>.json`` and the server log. Not a test: no assertions on time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchmarks.bench_vram_budgets import _random_state, dit_shapes, flux_vae_state, qwen_shapes  # noqa: E402
from comfy_server import ComfyServer, prepare_base_dir  # noqa: E402
from queue_edit import DEFAULT_WORKFLOW, edit  # noqa: E402

PHOTO = REPO / "workflows" / "input" / "chelsea_the_cat.png"
INSTRUCTION = "Make it a snowy winter scene, with snowflakes falling on the cat"
LOADER_CLASS = "Step1XModelLoader"
FIRST_SEED = 42
RUNS_PER_LEVEL = 2
RUN_TIMEOUT_S = 600
# The shipped workflow's file names (scripts/make_workflows.py).
FILES = {"diffusion_models": "step1x-edit-v1p1-official.safetensors", "text_encoders": "qwen_2.5_vl_7b.safetensors",
         "vae": "ae.safetensors"}


def write_models(models: Path, comfyui: Path, device: torch.device) -> dict[str, float]:
    """Random full-size files under ``models/<folder>/<official name>``; seconds spent on each."""
    from safetensors.torch import save_file

    sys.path.append(str(comfyui.resolve()))   # after the repository, whose nodes/ it would shadow
    import comfy.model_management  # noqa: F401  (the layer classes the shapes come from need it)
    states = {"diffusion_models": lambda: _random_state(dit_shapes(False), torch.bfloat16, device, seed=0),
              "text_encoders": lambda: _random_state(qwen_shapes(), torch.bfloat16, device, seed=2),
              "vae": lambda: flux_vae_state(device)}
    seconds = {}
    for folder, make in states.items():
        start = time.perf_counter()
        (models / folder).mkdir(parents=True, exist_ok=True)
        state = make()
        save_file(state, str(models / folder / FILES[folder]))
        del state
        seconds[folder] = time.perf_counter() - start
    return seconds


def edit_runs(size_levels: list[int]) -> list[tuple[int, int]]:
    """(size level, seed) of each queued edit: every level twice, each run with a new seed so ComfyUI's cache
    cannot skip the sampler; the very first run loads the models from disk."""
    return [(level, FIRST_SEED + index) for index, level in enumerate(level for level in size_levels
                                                                       for _ in range(RUNS_PER_LEVEL))]


def workflow_variant(workflow: Path, size_level: int, loader_inputs: dict, folder: Path) -> Path:
    """A copy of the API workflow with every node's ``size_level`` input set to ``size_level`` and
    ``loader_inputs`` set on Load Step1X Model."""
    prompt = json.loads(workflow.read_text())
    for node in prompt.values():
        if "size_level" in node.get("inputs", {}):
            node["inputs"]["size_level"] = size_level
        if node["class_type"] == LOADER_CLASS:
            node["inputs"].update(loader_inputs)
    path = folder / f"{workflow.stem}-{size_level}.json"
    path.write_text(json.dumps(prompt))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI source tree")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/step1x-server-bench"))
    parser.add_argument("--size-levels", type=int, nargs="+", default=[1024, 512],
                        help="VLM Encode / Pack Ref Latent size levels to queue, each twice (shipped: 512)")
    parser.add_argument("--weight-dtype", default="default",
                        help="Load Step1X Model weight_dtype (e.g. fp8_e4m3fn_fast)")
    parser.add_argument("--torch-compile", action="store_true", help="Load Step1X Model torch_compile on")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    loader_inputs = {"weight_dtype": args.weight_dtype, "torch_compile": args.torch_compile}
    device = torch.device("cuda")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "date": stamp,
              "comfyui": str(args.comfyui), "workflow": DEFAULT_WORKFLOW.name, "loader_inputs": loader_inputs,
              "runs": []}
    path = args.out / f"server-{stamp}.json"
    base = prepare_base_dir(args.models_dir / "base")
    try:
        report["seconds_writing_files"] = write_models(base / "models", args.comfyui, device)
        torch.cuda.empty_cache()
        print("files written:", report["seconds_writing_files"], flush=True)
        web_root = args.models_dir / "web"   # the API is all this needs: no frontend package required
        web_root.mkdir(parents=True, exist_ok=True)
        (web_root / "index.html").write_text("<!doctype html><title>ComfyUI API</title>")
        with ComfyServer(args.comfyui, base, extra_args=("--front-end-root", str(web_root))) as server:
            for index, (size_level, seed) in enumerate(edit_runs(args.size_levels)):
                workflow = workflow_variant(DEFAULT_WORKFLOW, size_level, loader_inputs, args.models_dir)
                run = "first (loads from disk)" if index == 0 else "warm (models loaded)"
                start = time.perf_counter()
                try:
                    edit(server.address, PHOTO, INSTRUCTION, seed, args.out / f"edited-{size_level}-{seed}.png",
                         workflow, RUN_TIMEOUT_S)
                    row = {"run": run, "size_level": size_level, "seed": seed,
                           "s_prompt_to_image": time.perf_counter() - start}
                except Exception as err:  # keep the log and the other runs' numbers
                    row = {"run": run, "size_level": size_level, "seed": seed,
                           "error": f"{type(err).__name__}: {err}"[:2000]}
                report["runs"].append(row)
                path.write_text(json.dumps(report, indent=1))
                print(json.dumps(row), flush=True)
            shutil.copy(server.log_path, args.out / "server.log")
    finally:
        path.write_text(json.dumps(report, indent=1))
        shutil.rmtree(args.models_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
