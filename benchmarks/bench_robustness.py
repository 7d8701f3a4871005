"""What the robustness checks cost on the full-size DiT (random weights), and how fast Cancel stops an edit.

Run on the device: ``python benchmarks/bench_robustness.py --out benchmarks/results [--comfyui .work/ComfyUI]``
(about 2–3 minutes on one H200). Prints a table and writes ``robustness-<date>.json`` (the schema of
benchmarks/README.md; one row per measurement). Not a test: no assertions on time. ``--tiny`` runs every
part on a tiny model in seconds, on the CPU without a GPU: a check of the script, not numbers.

Parts:

* weight finite-check: ``torch.isfinite(w).all()`` over every tensor of the DiT (12.4 B values) in bf16 and
  with the blocks in fp8 e4m3fn storage, on the GPU (one host sync per tensor, or one for all) and on the
  CPU, where a check while loading would run (the loader streams tensors from the file on the CPU).
  A ``sum`` row times the alternative of one float32 sum per tensor (finite iff every value is).
* step flag: the sampler's per-step ``finite[step] = torch.isfinite(x).all()`` (model/dit/sampling.py
  ``denoise``) on the 1024² latent, against the step time.
* interrupt: the pack's sampler (``model.dit.sampling.sample``, CFG batch of 2) on a 1024² edit, stopped from
  another thread at a random time within a step through the node's mechanism: the step callback calls
  ``comfy.model_management.throw_exception_if_processing_interrupted`` (nodes/runtime/cfg_guider.py
  ``step_callback``, without its preview), and Cancel calls ``interrupt_current_processing``. With
  ``--comfyui`` ComfyUI's own functions are used; without, an equivalent flag under a lock. Latency is
  measured to the exception (what the loop sees) and to an idle GPU (the loop does not wait for the
  GPU, so steps already queued still run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_dit import GIB, edit_inputs, make_out_dir, quantize_blocks, random_model  # noqa: E402
from model.dit.params import FULL_SIZE, ConnectorParams, DiTParams, Step1XParams  # noqa: E402
from model.dit.sampling import sample  # noqa: E402

FP8 = torch.float8_e4m3fn
# float8_e4m3fn has no infinities and one NaN pattern per sign, S.1111.111 (OCP 8-bit floating point
# specification, E4M3); torch.isfinite is not implemented for it.
E4M3FN_NAN_BITS = 0x7F
EDIT_SIZE = 1024
TINY_EDIT_SIZE = 64
# A tiny model of the full one's shape rules (head dim = sum of the RoPE axes), for --tiny.
TINY_PARAMS = Step1XParams(
    DiTParams(context_in_dim=32, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(4, 14, 14)),
    ConnectorParams(in_channels=48, hidden_size=32, heads_num=1, depth=1),
)
CFG, RENORM_THRESHOLD = 6.0, 0.93   # official defaults (the sampler node's)
STEPS_BEFORE_INTERRUPT = 2          # full steps before the interrupt's step: the loop is in its stride
STEPS_AFTER_INTERRUPT = 8           # the run's last steps; an interrupt not honoured by then is a failure
TIMED_STEPS = 3                     # the step time is (time of 3 steps − time of 1) / 2: no setup in it
FLAG_REPEATS = 1000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finite_flag(tensor: torch.Tensor) -> torch.Tensor:
    """0-d bool on the tensor's device: every value is finite (fp8 e4m3fn: no NaN bit pattern)."""
    if tensor.dtype == FP8:
        return ((tensor.view(torch.uint8) & E4M3FN_NAN_BITS) != E4M3FN_NAN_BITS).all()
    return torch.isfinite(tensor).all()


def sum_flag(tensor: torch.Tensor) -> torch.Tensor:
    """0-d bool: the float32 sum is finite, which it is iff every value is (weights never sum past 3e38)."""
    if tensor.dtype == FP8:
        return finite_flag(tensor)
    return torch.isfinite(tensor.sum(dtype=torch.float32))


def weight_check_rows(model, device: torch.device, storage: str) -> list[dict]:
    """Seconds to check every tensor of ``model``: on ``device`` (each sync, one sync, sum) and on the CPU."""
    tensors = [t.detach() for t in (*model.parameters(), *model.buffers())]
    total_bytes = sum(t.numel() * t.element_size() for t in tensors)
    base = {"mode": "weight-finite-check", "storage": storage, "tensors": len(tensors), "gib": total_bytes / GIB}

    def timed(check) -> float:
        check()  # warm-up: kernels and allocator
        sync(device)
        start = time.perf_counter()
        check()
        sync(device)
        return time.perf_counter() - start

    def each_sync() -> bool:
        return all(bool(finite_flag(t)) for t in tensors)

    def one_sync(flag=finite_flag) -> bool:
        return bool(torch.stack([flag(t) for t in tensors]).all())

    rows = [{**base, "device": device.type, "method": "isfinite, a host sync per tensor", "seconds": timed(each_sync)},
            {**base, "device": device.type, "method": "isfinite, one host sync", "seconds": timed(one_sync)},
            {**base, "device": device.type, "method": "float32 sum, one host sync",
             "seconds": timed(lambda: one_sync(sum_flag))}]
    if device.type != "cpu":
        cpu_isfinite = cpu_sum = 0.0
        for tensor in tensors:  # one tensor at a time on the host, as the loader streams them
            host = tensor.cpu()
            start = time.perf_counter()
            bool(finite_flag(host))
            middle = time.perf_counter()
            bool(sum_flag(host))
            cpu_isfinite, cpu_sum = cpu_isfinite + middle - start, cpu_sum + time.perf_counter() - middle
        rows += [{**base, "device": "cpu", "method": "isfinite, per tensor", "seconds": cpu_isfinite},
                 {**base, "device": "cpu", "method": "float32 sum, per tensor", "seconds": cpu_sum}]
    for row in rows:
        row["gib_per_s"] = row["gib"] / row["seconds"]
    return rows


def fp8_weight_check_rows(model, device: torch.device) -> list[dict]:
    """The blocks' Linear weights quantised in place to fp8 e4m3fn (the loader's fp8 storage), then checked."""
    quantize_blocks(model)
    return weight_check_rows(model, device, "fp8 blocks")


def step_flag_row(model, size: int, device: torch.device, step_s: float) -> dict:
    """Cost of the sampler's per-step finite flag on the packed latent ``[1, (size/16)², 64]`` float32."""
    x = torch.randn(1, (size // 16) ** 2, model.params.dit.in_channels, device=device)
    flags = torch.ones(FLAG_REPEATS, dtype=torch.bool, device=device)
    flags[0] = torch.isfinite(x).all()
    sync(device)
    start = time.perf_counter()
    for step in range(FLAG_REPEATS):
        flags[step] = torch.isfinite(x).all()
    sync(device)
    seconds = (time.perf_counter() - start) / FLAG_REPEATS
    return {"mode": "step-finite-flag", "size": size, "tokens": x.shape[1], "us_per_step": seconds * 1e6,
            "s_per_step": step_s, "fraction_of_step": seconds / step_s}


class Interrupts:
    """The node's interrupt: ``fire`` is Cancel, ``check`` is what its step callback calls."""

    def __init__(self, comfyui: Path | None, device: torch.device):
        if comfyui is not None:
            sys.path.insert(0, str(comfyui.resolve()))
            from comfy.cli_args import args

            args.cpu = device.type == "cpu"   # before model_management picks a device
            import comfy.model_management as mm

            self.mechanism = "comfy.model_management"
            self.fire = lambda: mm.interrupt_current_processing(True)
            self.clear = lambda: mm.interrupt_current_processing(False)
            self.check = mm.throw_exception_if_processing_interrupted
            self.exception = mm.InterruptProcessingException
            return
        self.mechanism = "emulated (a flag under a lock, as comfy.model_management)"
        lock, state = threading.Lock(), {"set": False}

        def set_flag(value: bool) -> None:
            with lock:
                state["set"] = value

        def check() -> None:
            with lock:
                if state["set"]:
                    state["set"] = False
                    raise InterruptedError("interrupted")

        self.fire, self.clear, self.check = (lambda: set_flag(True)), (lambda: set_flag(False)), check
        self.exception = InterruptedError


def run_edit(model, inputs, device: torch.device, callback=None) -> None:
    """The pack's sampler as the node runs it for v1.0 / v1.1: CFG batch of 2, bf16."""
    sample(model, inputs, CFG, RENORM_THRESHOLD, model.params.switches, torch.bfloat16, device, callback)


def step_seconds(model, size: int, device: torch.device) -> float:
    """Seconds per sampler step without the run's setup: the difference of a 1-step and a ``TIMED_STEPS``-step
    edit (the faster of two runs each, after a warm-up for kernels and the attention backend choice)."""
    def fastest(steps: int) -> float:
        inputs = edit_inputs(size, steps, device, model.params)
        times = []
        for _ in range(2):
            sync(device)
            start = time.perf_counter()
            run_edit(model, inputs, device)
            sync(device)
            times.append(time.perf_counter() - start)
        return min(times)

    run_edit(model, edit_inputs(size, 1, device, model.params), device)
    return (fastest(TIMED_STEPS) - fastest(1)) / (TIMED_STEPS - 1)


def interrupt_row(model, size: int, device: torch.device, step_s: float, repeats: int, interrupts: Interrupts,
                  seed: int) -> dict:
    """Interrupt ``repeats`` edits at random times within step ``STEPS_BEFORE_INTERRUPT + 1``."""
    steps = STEPS_BEFORE_INTERRUPT + STEPS_AFTER_INTERRUPT
    inputs = edit_inputs(size, steps, device, model.params)
    rng = random.Random(seed)
    to_exception, to_idle, steps_done, not_honoured = [], [], [], 0
    for _ in range(repeats):
        interrupts.clear()
        delay = (STEPS_BEFORE_INTERRUPT + rng.random()) * step_s
        fired, done = {}, []

        def fire() -> None:
            time.sleep(delay)
            fired["at"] = time.perf_counter()
            interrupts.fire()

        def callback(step, total, x, x0) -> None:
            done.append(step)
            interrupts.check()

        thread = threading.Thread(target=fire)  # joined below, within this repetition
        sync(device)
        thread.start()
        try:
            run_edit(model, inputs, device, callback)
            not_honoured += 1
        except interrupts.exception:
            raised = time.perf_counter()
            sync(device)
            idle = time.perf_counter()
            to_exception.append(raised - fired["at"])
            to_idle.append(idle - fired["at"])
            steps_done.append(len(done))
        thread.join()
    interrupts.clear()
    return {"mode": "interrupt", "size": size, "steps": steps, "cfg": True, "s_per_step": step_s,
            "mechanism": interrupts.mechanism, "repeats": repeats, "not_honoured": not_honoured,
            "latency_to_exception_s": to_exception, "latency_to_idle_gpu_s": to_idle,
            "median_to_exception_s": statistics.median(to_exception) if to_exception else None,
            "max_to_exception_s": max(to_exception, default=None),
            "median_to_idle_gpu_s": statistics.median(to_idle) if to_idle else None,
            "max_to_idle_gpu_s": max(to_idle, default=None), "steps_seen_by_callback": steps_done}


def print_table(rows: list[dict]) -> None:
    def line(label: str, seconds: str, note: str) -> None:
        print(f"{label:70s} {seconds:>10s}  {note}")

    line("measurement", "seconds", "note")
    for row in rows:
        if row["mode"] == "weight-finite-check":
            line(f"finite-check, {row['storage']}, on {row['device']}: {row['method']}", f"{row['seconds']:.4f}",
                 f"{row['gib']:.1f} GiB, {row['gib_per_s']:.1f} GiB/s")
        elif row["mode"] == "step-finite-flag":
            line(f"sampler's per-step finite flag, {row['size']}²", f"{row['us_per_step'] / 1e6:.6f}",
                 f"{row['fraction_of_step']:.2e} of a {row['s_per_step']:.3f} s step")
        elif row["mode"] == "interrupt" and row["median_to_exception_s"] is not None:
            stopped = f"{row['repeats'] - row['not_honoured']}/{row['repeats']} stopped"
            line(f"interrupt → exception, median (max), {row['size']}²", f"{row['median_to_exception_s']:.3f}",
                 f"max {row['max_to_exception_s']:.3f} s; step {row['s_per_step']:.3f} s; {stopped}")
            line("interrupt → idle device, median (max)", f"{row['median_to_idle_gpu_s']:.3f}",
                 f"max {row['max_to_idle_gpu_s']:.3f} s")
        elif row["mode"] == "interrupt":
            line("interrupt", "—", f"never honoured in {row['repeats']} runs")
        else:
            line(row["mode"], "error", row["error"][:200])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (created if missing)")
    parser.add_argument("--comfyui", type=Path, help="interrupt through this ComfyUI's model_management")
    parser.add_argument("--repeats", type=int, default=5, help="interrupted edits")
    parser.add_argument("--seed", type=int, default=0, help="seeds the interrupt times")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a 64² edit: checks the script")
    args = parser.parse_args()
    make_out_dir(args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params, size = (TINY_PARAMS, TINY_EDIT_SIZE) if args.tiny else (FULL_SIZE["v1.1"], EDIT_SIZE)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "date": stamp, "tiny": args.tiny, "runs": []}
    path = args.out / f"robustness-{stamp}.json"
    interrupts = Interrupts(args.comfyui, device)
    model = random_model(device, params)
    with torch.no_grad():
        report["s_per_step"] = step_s = step_seconds(model, size, device)
        parts = [
            lambda: weight_check_rows(model, device, "bf16"),
            lambda: [interrupt_row(model, size, device, step_s, args.repeats, interrupts, args.seed)],
            lambda: [step_flag_row(model, size, device, step_s)],
            lambda: fp8_weight_check_rows(model, device),   # last: it quantises the model in place
        ]
        for part in parts:
            try:
                rows = part()
            except Exception as err:  # keep the other parts' numbers
                rows = [{"mode": "error", "error": f"{type(err).__name__}: {err}"[:2000]}]
            for row in rows:
                print(json.dumps(row), flush=True)
            report["runs"] += rows
            path.write_text(json.dumps(report, indent=1))
    print_table(report["runs"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
