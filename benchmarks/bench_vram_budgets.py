"""Dynamic VRAM and small cards: a 1024² Step1X edit through the pack's nodes inside ComfyUI's model
management, with full-size random weights.

Device (one GPU; the run starts no configuration after 530 s, so it ends within 9 minutes)::

    python benchmarks/bench_vram_budgets.py --comfyui PATH/TO/ComfyUI --out benchmarks/results

CPU check of the same code paths with tiny models (seconds)::

    python benchmarks/bench_vram_budgets.py --comfyui PATH/TO/ComfyUI --out /tmp/vram --tiny

Writes ``vram-<date>.json`` (the other benchmarks' schema: gpu, torch, cuda, date, runs) and prints each
row. Every configuration runs in its own process, as a ComfyUI server would start:

* ``dit``: the DiT alone on the whole card, bf16 (the official file layout), fp8 (the file converted by
  scripts/convert_to_comfy_fp8.py) and fp8 matmul (the same file, weight_dtype fp8_e4m3fn_fast), with
  dynamic VRAM on (comfy-aimdo and ``ModelPatcherDynamic``, as ComfyUI's main.py starts it) and off.
* ``budget``: the card limited to 24, 16, 12 and 8 GiB, with a random Qwen2.5-VL-7B through ComfyUI's
  qwen_image CLIP (``comfy.sd.load_text_encoder_state_dicts``, what Load CLIP runs on the file's
  tensors), the FLUX VAE and the fp8 DiT all in play: VLM Encode → Pack Ref Latent → Step1X Sampler →
  Unpack/Decode. A card of B GiB is the H200 with (total − B) GiB held by one tensor before ComfyUI
  loads anything: ComfyUI and comfy-aimdo see B GiB minus the CUDA context free, as on that card (only
  ComfyUI's total-memory heuristics still see the H200). Each row tells whether the edit ran, its times,
  and where each model was (GiB on the GPU of its size) after encoding and after sampling.

Timing: 28 steps would not fit the time budget for every configuration, so the sampler runs 1 step
(loads the model and streams its weights), 1 step again, and ``--steps`` steps; seconds per step are
``(t(steps) − t(1)) / (steps − 1)`` and a 28-step edit is extrapolated as ``t(1) + 27 · s/step``
(``s_per_edit_28_extrapolated``). Peak memory: torch's allocator peak, and the device's used memory
sampled every 10 ms (comfy-aimdo's weight buffers are outside torch's allocator), less the budget's
ballast.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests" / "tiny_models"))

from benchmarks.bench_dit import timed  # noqa: E402
from tests.unit.vlm_support import import_pack_module  # noqa: E402

GIB = 1024**3
EDIT_STEPS = 28   # the official edit (inference.py)
SIZE = 1024
TINY_SIZE = 256   # the smallest size level VLM Encode takes
TEXT_TOKENS = 640   # the official text window, VLM Encode's output length
VALID_TOKENS = 400
BUDGETS_GIB = (24, 16, 12, 8)
DIT_DTYPES = ("bf16", "fp8", "fp8_fast")
# DiT file and Load Step1X Model weight_dtype for each dtype row.
DTYPE_LOAD = {"bf16": ("bf16", "default"), "fp8": ("fp8", "default"), "fp8_fast": ("fp8", "fp8_e4m3fn_fast")}
BUDGET_DTYPE = "fp8"   # what a 24 GiB or smaller card loads
PARTS = ("dit", "budget")
MEMORY_POLL_S = 0.01
CHILD_TIMEOUT_S = 240
FILES_TIMEOUT_S = 300   # writing the 25 GB and 12.4 GB random DiT files
RUN_BUDGET_S = 530      # the whole run, under the device's 9-minute limit for one command
ROW_PREFIX = "bench-row "
INSTRUCTION = "Make it a snowy winter scene, with snowflakes falling on the cat"


# ---- random full-size (or tiny) weights ----------------------------------------------------------------

def _random_state(shapes: dict, dtype: torch.dtype, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Tensors of ``shapes`` (key → meta tensor) drawn by tests/tiny_models/make_tiny_weights.py's rule (fan-in scaled
    normal weights, unit norm scales, small biases), one at a time on ``device``, kept on the CPU in ``dtype``."""
    from make_tiny_weights import _randomize

    generator = torch.Generator(device).manual_seed(seed)
    out = {}
    with torch.device(device):
        for key, shape in shapes.items():
            out[key] = _randomize({key: shape}, generator)[key].to(dtype).cpu()
    return out


def dit_shapes(tiny: bool) -> dict:
    from make_tiny_weights import TINY_CONFIG
    from model.dit.transformer import Step1XEdit
    from model.dit.params import FULL_SIZE, params_from_config

    params = params_from_config(TINY_CONFIG, "v1.1") if tiny else FULL_SIZE["v1.1"]
    with torch.device("meta"):
        return dict(Step1XEdit(params).state_dict())


def write_dit_files(folder: Path, tiny: bool, device: torch.device) -> dict[str, str]:
    """The random v1.1 DiT as the official bf16 file, and its ComfyUI fp8 conversion."""
    from safetensors.torch import save_file

    import convert_to_comfy_fp8

    size = "tiny" if tiny else "full"   # a --scratch folder may hold both
    paths = {"bf16": folder / f"step1x-edit-v1p1-random-{size}.safetensors",
             "fp8": folder / f"step1x-edit-v1p1-random-{size}-fp8.safetensors"}
    if all(path.is_file() for path in paths.values()):   # an earlier run's --scratch
        return {name: str(path) for name, path in paths.items()}
    partial = {name: path.with_name(path.name + ".part") for name, path in paths.items()}   # renamed when whole
    state = _random_state(dit_shapes(tiny), torch.bfloat16, device, seed=0)
    save_file(state, str(partial["bf16"]))
    del state
    partial["bf16"].rename(paths["bf16"])
    save_file(convert_to_comfy_fp8.convert(str(paths["bf16"])), str(partial["fp8"]))
    partial["fp8"].rename(paths["fp8"])
    return {name: str(path) for name, path in paths.items()}


def flux_vae_state(device: torch.device) -> dict:
    """The FLUX VAE at full width (what Load VAE builds for ae.safetensors) with random weights."""
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder
    from make_tiny_weights import FLUX_VAE_CONFIG

    shapes = {}
    for prefix, cls in (("encoder.", Encoder), ("decoder.", Decoder)):
        with torch.device("meta"):
            shapes.update({prefix + k: v for k, v in cls(**FLUX_VAE_CONFIG).state_dict().items()})
    return _random_state(shapes, torch.bfloat16, device, seed=1)


def qwen_shapes() -> dict:
    """Key → meta tensor of ComfyUI's Qwen2.5-VL-7B (comfy/text_encoders/llama.py Qwen25_7BVLI). Built before
    dynamic VRAM starts: its comfy.ops layers then defer their weights to the state dict."""
    import comfy.ops
    from comfy.text_encoders import llama

    with torch.device("meta"):
        return dict(llama.Qwen25_7BVLI({}, torch.bfloat16, "meta", comfy.ops.manual_cast).state_dict())


def qwen_clip(shapes: dict | None, device: torch.device):
    """ComfyUI's Qwen2.5-VL-7B (CLIP type qwen_image) with random bf16 weights of ``shapes``, loaded as Load
    CLIP loads the file's tensors; None: the golden fixtures' tiny Qwen2.5-VL
    (tests/tiny_models/tiny_clip_loader.py)."""
    import comfy.sd

    if shapes is None:
        from make_tiny_weights import DEFAULT_TINY_VLM, comfy_text_encoder
        from safetensors.torch import load_file
        from tiny_clip_loader import tiny_qwen_clip

        config = json.loads((DEFAULT_TINY_VLM / "config.json").read_text())
        return tiny_qwen_clip(config, comfy_text_encoder(load_file(str(DEFAULT_TINY_VLM / "model.safetensors"))))
    state = _random_state(shapes, torch.bfloat16, device, seed=2)
    return comfy.sd.load_text_encoder_state_dicts([state], clip_type=comfy.sd.CLIPType.QWEN_IMAGE)


# ---- one configuration, in its own process -------------------------------------------------------------

def load_aimdo(wanted: bool) -> bool:
    """comfy-aimdo's library, loaded before comfy.model_management as ComfyUI's main.py does."""
    if not wanted or not torch.cuda.is_available():
        return False
    try:
        import comfy_aimdo.control
    except ImportError:
        return False
    try:
        return bool(comfy_aimdo.control.init(simple_vram_headroom=None, nvml_pressure=True))
    except TypeError:   # older comfy-aimdo protocol (main.py)
        return bool(comfy_aimdo.control.init())


def start_dynamic_vram(aimdo_loaded: bool) -> bool:
    """Dynamic VRAM as ComfyUI's main.py starts it (CoreModelPatcher → ModelPatcherDynamic); False where
    comfy-aimdo did not load or this ComfyUI lacks the dynamic patcher."""
    import comfy.model_management as mm
    import comfy.model_patcher

    if not aimdo_loaded or not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        return False
    import comfy.memory_management
    import comfy_aimdo.control

    devices = mm.get_all_torch_devices()
    try:
        started = comfy_aimdo.control.init_devices((d.index, 0) for d in devices)
    except TypeError:
        started = comfy_aimdo.control.init_devices(d.index for d in devices)
    if started:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    return bool(started)


class DeviceMemory:
    """Peak device memory in use (``total − free``) while the block runs, polled every 10 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info(self.device)
            self.peak = max(self.peak, total - free)
            time.sleep(MEMORY_POLL_S)

    def __enter__(self) -> "DeviceMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def where_models_are() -> list[dict]:
    """Each model ComfyUI holds: its class, size and how much of it is on the GPU now."""
    import comfy.model_management as mm

    return [{"model": type(loaded.model.model).__name__, "dynamic": loaded.model.is_dynamic()
             if hasattr(loaded.model, "is_dynamic") else False,
             "size_gib": round(loaded.model.model_size() / GIB, 3),
             "on_gpu_gib": round(loaded.model.loaded_size() / GIB, 3)}
            for loaded in mm.current_loaded_models if loaded.model is not None]


def sampler_timings(model, positive, negative, ref_latent: dict, steps: int, device) -> dict:
    """Step1X Sampler on 1 step (cold), 1 step (warm) and ``steps`` steps; see the module docstring."""
    sampler = import_pack_module("nodes.node_sampler").Step1XSampler
    common = import_pack_module("nodes.runtime.common")

    def run(n: int):
        return sampler.execute(model, positive, negative, seed=42, steps=n, cfg=6.0,
                               cfg_renorm=common.RENORM_MODEL_DEFAULT, shift_schedule=True,
                               ref_latent=ref_latent).result[0]

    _, cold = timed(lambda: run(1), device)
    _, warm = timed(lambda: run(1), device)
    samples, many = timed(lambda: run(steps), device)
    s_step = (many - warm) / (steps - 1)
    return {"samples": samples, "s_first_step_cold": cold, "s_one_step_warm": warm,
            f"s_{steps}_steps": many, "s_per_step": s_step,
            "s_per_edit_28_extrapolated": warm + (EDIT_STEPS - 1) * s_step}


def memory_fields(memory: DeviceMemory, device, ballast_bytes: int) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
            "peak_device_used_gib": (memory.peak - ballast_bytes) / GIB}


def fake_conditioning(net, batch: int, device) -> tuple[list, list]:
    """VLM Encode's output format (nodes/node_vlm_encode.py) with random states: the DiT-only rows."""
    common = import_pack_module("nodes.runtime.common")
    generator = torch.Generator().manual_seed(3)
    mask = torch.zeros(batch, TEXT_TOKENS, dtype=torch.int64)
    mask[:, :VALID_TOKENS] = 1
    width = net.params.connector.in_channels
    return tuple([[torch.randn(batch, TEXT_TOKENS, width, generator=generator),
                   {"attention_mask": mask, common.CONDITIONING_MARKER: "v1.1"}]] for _ in range(2))


def run_dit_rows(cfg: dict, files: dict, device, dynamic: bool) -> list[dict]:
    import comfy.model_management as mm

    loader = import_pack_module("nodes.node_loader")
    side = (TINY_SIZE if cfg["tiny"] else SIZE) // 8
    rows = []
    for dtype in cfg["dtypes"]:
        file_kind, choice = DTYPE_LOAD[dtype]
        row = {"mode": f"dit-{dtype}-dynamic-{'on' if cfg['dynamic'] else 'off'}", "part": "dit", "dtype": dtype,
               "weight_dtype": choice, "file": file_kind, "dynamic_vram": dynamic, "size": side * 8}
        try:
            model, row["s_load_file"] = timed(lambda: loader.load_step1x_model(files[file_kind], choice, "auto"),
                                              device)
            net = model.model.diffusion_model
            positive, negative = fake_conditioning(net, 1, device)
            ref = {"samples": torch.randn(1, 16, side, side, generator=torch.Generator().manual_seed(4))}
            with DeviceMemory(device) as memory:
                timings = sampler_timings(model, positive, negative, ref, cfg["steps"], device)
            row.update({k: v for k, v in timings.items() if k != "samples"})
            row.update(memory_fields(memory, device, 0))
            row["models"] = where_models_are()
            row["ran"] = bool(torch.isfinite(timings["samples"]["samples"]).all())
        except Exception as error:   # keep the other rows' numbers
            row.update({"ran": False, "error": f"{type(error).__name__}: {error}"[:2000],
                    "traceback": traceback.format_exc()[-4000:]})
        rows.append(row)
        print(ROW_PREFIX + json.dumps(row), flush=True)
        model = net = None
        mm.unload_all_models()
        mm.soft_empty_cache()
    return rows


def run_budget_row(cfg: dict, files: dict, device, dynamic: bool) -> list[dict]:
    import comfy.model_management as mm
    import comfy.sd

    budget = cfg["budget_gib"]
    row = {"mode": f"budget-{budget:g}GiB-{BUDGET_DTYPE}-dynamic-{'on' if cfg['dynamic'] else 'off'}", "part": "budget",
           "budget_gib": budget, "dtype": BUDGET_DTYPE, "dynamic_vram": dynamic}
    size = TINY_SIZE if cfg["tiny"] else SIZE
    clip = qwen_clip(cfg["clip_shapes"], device)   # random weights drawn before the card is made small
    vae = comfy.sd.VAE(sd=flux_vae_state(device))
    ballast_bytes = 0
    if device.type == "cuda":
        ballast_bytes = torch.cuda.mem_get_info(device)[1] - int(budget * GIB)
        ballast = torch.empty(ballast_bytes, dtype=torch.uint8, device=device)   # held to the end of the row
        row["ballast_gib"] = ballast.numel() / GIB
        row["free_at_start_gib"] = torch.cuda.mem_get_info(device)[0] / GIB
    encode = import_pack_module("nodes.node_vlm_encode").Step1XVLMEncode
    latent = import_pack_module("nodes.node_latent")
    loader = import_pack_module("nodes.node_loader")
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(5))
    try:
        with DeviceMemory(device) as memory:
            (positive, negative), row["s_encode"] = timed(lambda: encode.execute(
                image, INSTRUCTION, "", size, "lanczos", clip=clip).result, device)
            row["models_after_encode"] = where_models_are()
            ref, row["s_vae_encode"] = timed(lambda: latent.Step1XPackRefLatent.execute(
                image, vae, size, "lanczos").result[0], device)
            file_kind, choice = DTYPE_LOAD[BUDGET_DTYPE]
            model, row["s_load_file"] = timed(lambda: loader.load_step1x_model(files[file_kind], choice, "auto"),
                                              device)
            timings = sampler_timings(model, positive, negative, ref, cfg["steps"], device)
            row["models_after_sampling"] = where_models_are()
            decoded, row["s_vae_decode"] = timed(lambda: latent.Step1XUnpackDecode.execute(
                timings["samples"], vae, "original").result[0], device)
        row.update({k: v for k, v in timings.items() if k != "samples"})
        row["s_edit_28_extrapolated"] = (row["s_encode"] + row["s_vae_encode"] + row["s_per_edit_28_extrapolated"]
                                         + row["s_vae_decode"])
        row.update(memory_fields(memory, device, ballast_bytes))
        row["ran"] = tuple(decoded.shape) == (1, size, size, 3)
    except Exception as error:   # an out-of-memory is a result here
        row.update({"ran": False, "error": f"{type(error).__name__}: {error}"[:2000],
                    "traceback": traceback.format_exc()[-4000:]})
    mm.unload_all_models()
    print(ROW_PREFIX + json.dumps(row), flush=True)
    return [row]


def child(cfg: dict, comfyui: Path, files: dict) -> None:
    if cfg["part"] == "files":   # its own process too: the parent keeps no CUDA context the budgets would count
        device = torch.device("cpu" if cfg["tiny"] else "cuda")
        files, seconds = timed(lambda: write_dit_files(Path(cfg["scratch"]), cfg["tiny"], device), device)
        gpu = "cpu" if cfg["tiny"] else torch.cuda.get_device_name(device)
        print(ROW_PREFIX + json.dumps({"mode": "files", "files": files, "s_write_random_dit_files": seconds,
                                       "gpu": gpu}))
        return
    sys.path.insert(0, str(comfyui))
    from comfy.cli_args import args

    args.cpu = cfg["tiny"]
    aimdo_loaded = load_aimdo(cfg["dynamic"])
    import comfy.model_management as mm

    cfg["clip_shapes"] = qwen_shapes() if cfg["part"] == "budget" and not cfg["tiny"] else None
    dynamic = start_dynamic_vram(aimdo_loaded)
    import_pack_module("nodes.runtime.comfy_compat")   # the pack's capability check, as at ComfyUI start
    device = mm.get_torch_device()
    with torch.inference_mode():
        if cfg["part"] == "dit":
            run_dit_rows(cfg, files, device, dynamic)
        else:
            run_budget_row(cfg, files, device, dynamic)


# ---- the run -------------------------------------------------------------------------------------------

def configurations(tiny: bool, steps: int, budgets, dtypes, parts=PARTS) -> list[dict]:
    base = {"tiny": tiny, "steps": steps}
    dit = [dict(base, part="dit", dynamic=dynamic, dtypes=list(dtypes)) for dynamic in (True, False)]
    budget = [dict(base, part="budget", dynamic=True, budget_gib=budget) for budget in budgets]
    return (dit if "dit" in parts else []) + (budget if "budget" in parts else [])


def run_child(cfg: dict, comfyui: Path, files: dict, timeout_s: float) -> list[dict]:
    command = [sys.executable, __file__, "--comfyui", str(comfyui), "--out", "-", "--child", json.dumps(cfg),
               "--files", json.dumps(files)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        rows = [json.loads(line[len(ROW_PREFIX):]) for line in stdout.splitlines() if line.startswith(ROW_PREFIX)]
        return rows + [{"mode": f"{cfg['part']}", "config": cfg, "ran": False,
                        "error": f"timed out after {timeout_s:.0f} s"}]
    rows = [json.loads(line[len(ROW_PREFIX):]) for line in done.stdout.splitlines() if line.startswith(ROW_PREFIX)]
    if done.returncode != 0 or not rows:
        rows.append({"mode": cfg["part"], "config": cfg, "ran": False,
                     "error": f"exit {done.returncode}: {done.stderr[-3000:]}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI source tree to run in")
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks the code paths")
    parser.add_argument("--steps", type=int, default=4, help="sampler steps of the timed run (≥ 2)")
    parser.add_argument("--budgets", type=float, nargs="*", default=list(BUDGETS_GIB), help="card sizes, GiB")
    parser.add_argument("--dtypes", nargs="+", default=list(DIT_DTYPES), choices=DIT_DTYPES)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which rows to run")
    parser.add_argument("--scratch", type=Path,
                        help="folder for the random DiT files, kept and reused by a later run (default: a temp folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    comfyui = args.comfyui.resolve()
    if args.child:
        child(json.loads(args.child), comfyui, json.loads(args.files))
        return
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    from benchmarks.bench_dit import make_out_dir

    make_out_dir(args.out)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"gpu": None, "torch": torch.__version__,
              "cuda": torch.version.cuda, "date": stamp, "comfyui": str(comfyui), "steps_timed": args.steps,
              "extrapolated_to_steps": EDIT_STEPS, "runs": []}
    path = args.out / f"vram-{stamp}{'-tiny' if args.tiny else ''}.json"
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="step1x-vram-"))
    scratch.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + RUN_BUDGET_S
    try:
        written = run_child({"part": "files", "tiny": args.tiny, "scratch": str(scratch)}, comfyui, {},
                            FILES_TIMEOUT_S)[-1]
        if "files" not in written:
            raise SystemExit(f"could not write the random DiT files: {written.get('error')}")
        files, report["gpu"] = written["files"], written["gpu"]
        report["s_write_random_dit_files"] = written["s_write_random_dit_files"]
        for cfg in configurations(args.tiny, args.steps, args.budgets, args.dtypes, args.parts):
            left = deadline - time.monotonic()
            rows = (run_child(cfg, comfyui, files, min(CHILD_TIMEOUT_S, left)) if left > 0 else
                    [{"mode": cfg["part"], "config": cfg, "ran": False, "error": "skipped: the run's time is up"}])
            for row in rows:
                print(json.dumps(row), flush=True)
                report["runs"].append(row)
            path.write_text(json.dumps(report, indent=1))
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(path)


if __name__ == "__main__":
    main()
