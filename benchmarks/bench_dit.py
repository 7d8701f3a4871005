"""Speed and memory of the full-size Step1X-Edit DiT + connector on one GPU (random weights).

Run on the device: ``python benchmarks/bench_dit.py --out benchmarks/results``. Prints a table and
writes ``results/dit-<date>-<gpu>.json`` (schema in benchmarks/README.md). Every mode runs the pack's
own sampler loop (``model.dit.sampling.sample``: cond+uncond batch of 2, connector every step) on the
same random weights, so modes are comparable within one run. Not a test: no assertions on time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import fp8_rowwise as fp8  # noqa: E402
from model.dit import attention, layers  # noqa: E402
from model.dit.transformer import Step1XEdit  # noqa: E402
from model.dit.params import FULL_SIZE  # noqa: E402
from model.dit.sampling import SamplingInputs, get_schedule, make_noise, sample  # noqa: E402

GIB = 1024**3
TEXT_TOKENS = 640  # the official text window (``ImageGenerator`` ``max_length``)
CFG_BATCH = 2
WEIGHT_STD = 0.02


def make_out_dir(path: Path) -> Path:
    """Create the results folder before any work, so that a run cannot fail at its end for want of it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"cannot create the results folder {path}: {error}") from None
    if not os.access(path, os.W_OK):
        raise SystemExit(f"the results folder {path} is not writable")
    return path


def flops_per_step(params, n_noise: int, with_ref: bool = True) -> tuple[float, float]:
    """(linear, attention) FLOPs of one CFG-batched DiT call; ``n_noise`` image tokens per image."""
    p, h = params.dit, params.dit.hidden_size
    mlp = p.mlp_hidden
    n_img = n_noise * (2 if with_ref else 1)
    seq = TEXT_TOKENS + n_img
    per_stream = h * 3 * h + h * h + 2 * h * mlp  # qkv, proj, mlp in+out
    double = 2 * CFG_BATCH * (n_img + TEXT_TOKENS) * per_stream
    single = 2 * CFG_BATCH * seq * (h * (3 * h + mlp) + (h + mlp) * h)
    linear = p.depth * double + p.depth_single_blocks * single
    attn = (p.depth + p.depth_single_blocks) * 4 * CFG_BATCH * seq * seq * h
    return float(linear), float(attn)


def random_model(device: torch.device, params=FULL_SIZE["v1.1"]) -> Step1XEdit:
    """v1.1 model (full size unless ``params`` says otherwise) in bf16 built with the fp8-capable Linear
    (plain bf16 until quantised); each tensor drawn where it lives, on ``device``."""
    with torch.device("meta"):
        model = Step1XEdit(params, dtype=torch.bfloat16, operations=fp8.fp8_ops)
    model.allow_fused_linears(fp8.Linear)  # its forward is F.linear while the weight is not fp8
    model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("scale", "scale_weight")) or "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, WEIGHT_STD, generator=generator)
    return model.eval()


def quantize_blocks(model: Step1XEdit) -> None:
    """In place: the block Linears become fp8 + per-tensor scale (what the loader does for fp8 storage)."""
    with torch.no_grad():
        for blocks in (model.double_blocks, model.single_blocks):
            for module in blocks.modules():
                if isinstance(module, fp8.Linear):
                    w = module.weight
                    scale = w.abs().amax().float() / fp8.FP8_MAX
                    module.weight = torch.nn.Parameter((w.float() / scale).to(fp8.FP8), requires_grad=False)
                    module.scale_weight.fill_(scale)
                    del w
    torch.cuda.empty_cache()


def edit_inputs(size: int, steps: int, device: torch.device, params) -> SamplingInputs:
    latent = size // 8
    noise = make_noise(42, 1, latent, latent)
    ref = make_noise(7, 1, latent, latent)
    d = params.connector.in_channels
    g = torch.Generator().manual_seed(3)
    cond = torch.randn(1, TEXT_TOKENS, d, generator=g)
    uncond = torch.randn(1, TEXT_TOKENS, d, generator=g)
    mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.int64)
    mask[:, :400] = 1
    return SamplingInputs(noise.to(device), ref.to(device), cond.to(device), mask.to(device), uncond.to(device),
                          mask.to(device), get_schedule(steps, (latent // 2) ** 2))


def time_steps(model, inputs: SamplingInputs, warmup: int, repeat: int, device) -> float:
    """Median seconds of one sampler step (a 1-step schedule slice run repeatedly)."""
    times = []
    one = replace(inputs, timesteps=inputs.timesteps[:2])
    for i in range(warmup + repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        sample(model, one, cfg=6.0, renorm_threshold=0.93, switches=model.params.switches, compute_dtype=torch.bfloat16, device=device)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def full_edit(model, inputs: SamplingInputs, device) -> tuple[float, torch.Tensor]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = sample(model, inputs, cfg=6.0, renorm_threshold=0.93, switches=model.params.switches, compute_dtype=torch.bfloat16,
                 device=device)
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def timed(fn, device: torch.device) -> tuple[object, float]:
    """``(fn(), seconds)``, the device synchronised before and after on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def measure(model, inputs, mode: str, size: int, args, device, reference: dict) -> dict:
    """One (mode, size) row; the first mode's final latent is the reference for the later modes' error."""
    with torch.no_grad():
        s_step = time_steps(model, inputs, warmup=3 if "compile" in mode else 2, repeat=5, device=device)
        run = {"mode": mode, "size": size, "steps": args.steps, "cfg": True, "s_per_step": s_step,
               "s_per_edit": s_step * args.steps}
        if size == args.full_edit_size:
            run["s_per_edit_measured"], latent = full_edit(model, inputs, device)
            first_step = sample(model, replace(inputs, timesteps=inputs.timesteps[:2]), cfg=6.0, renorm_threshold=0.93,
                                switches=model.params.switches, compute_dtype=torch.bfloat16, device=device)
            if "latent" not in reference:
                reference.update(latent=latent, first_step=first_step, mode=mode)
            else:
                run["rel_error_vs"] = reference["mode"]
                run["rel_latent_error"] = relative_error(latent, reference["latent"])
                run["rel_first_step_error"] = relative_error(first_step, reference["first_step"])
    lin, att = flops_per_step(model.params, (size // 16) ** 2)
    run.update({
        "tflops": (lin + att) / s_step / 1e12, "flops_per_step": lin + att,
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
    })
    return run


MODE_PRECISIONS = ("bf16", "fp8")
MODE_FLAGS = ("compile", "autotune", "unfused")


def parse_modes(modes: list[str]) -> list[tuple[str, set[str]]]:
    """``precision[-flag...]`` → (precision, flags); autotune needs compile and, since it recompiles every
    block, must come after every other compiled mode."""
    parsed = []
    for mode in modes:
        precision, *flags = mode.split("-")
        if precision not in MODE_PRECISIONS or set(flags) - set(MODE_FLAGS) or ("autotune" in flags and "compile" not in flags):
            raise SystemExit(f"mode {mode!r}: use {'|'.join(MODE_PRECISIONS)} then any of "
                             f"{', '.join('-' + f for f in MODE_FLAGS)} (-autotune only with -compile)")
        parsed.append((precision, set(flags)))
    autotuned = [i for i, (_, flags) in enumerate(parsed) if "autotune" in flags]
    if autotuned and any("compile" in flags and "autotune" not in flags for _, flags in parsed[autotuned[0]:]):
        raise SystemExit("put the -autotune modes after every other -compile mode")
    return parsed


def gelu_epilogue_check(device) -> dict:
    """fp32 error of the fused GEMM + GELU (``model.dit.layers.linear_gelu_tanh``) against both GELUs."""
    generator = torch.Generator(device).manual_seed(1)
    x, w, b = (torch.randn(*shape, device=device, generator=generator) for shape in ((512, 256), (1024, 256), (1024,)))
    fused = layers.linear_gelu_tanh(x, w, b)
    pre = torch.nn.functional.linear(x, w, b)
    return {"gelu_epilogue_vs_tanh_max_abs": (fused - torch.nn.functional.gelu(pre, approximate="tanh")).abs().max().item(),
            "gelu_epilogue_vs_erf_max_abs": (fused - torch.nn.functional.gelu(pre)).abs().max().item()}


def matmul_ceilings(device) -> dict:
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)

    def bench(fn) -> float:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            fn()
        end.record()
        torch.cuda.synchronize()
        return 2 * n**3 * 10 / (start.elapsed_time(end) / 1000) / 1e12

    out = {"matmul_tflops": bench(lambda: a @ b)}
    a8, b8 = a.to(fp8.FP8), b.to(fp8.FP8).t().contiguous().t()
    one = torch.ones((), device=device)
    out["fp8_scaled_mm_tflops"] = bench(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1024])
    parser.add_argument("--modes", nargs="+", default=["bf16-unfused", "bf16-compile", "fp8", "fp8-compile"],
                        help="precision (bf16 | fp8), then optional -compile (regional torch.compile), -autotune "
                             "(Inductor max-autotune, after -compile), -unfused (no fused GEMM epilogues)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--full-edit-size", type=int, default=1024, help="size at which the whole 28-step loop is timed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    modes = parse_modes(args.modes)
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "date": stamp, "attention_backend": attention.attention_backend(), **matmul_ceilings(device),
        **gelu_epilogue_check(device), "runs": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dit-{stamp}.json"
    model = random_model(device)
    params = model.params
    reference = {}
    blocks = [*model.double_blocks, *model.single_blocks]
    for block in blocks:
        block.compile()  # regional compilation; eager modes run under the "force_eager" stance
    autotuned = False
    for mode, (precision, flags) in zip(args.modes, modes):
        if precision == "fp8" and model.double_blocks[0].img_attn.qkv.weight.dtype != fp8.FP8:
            quantize_blocks(model)
        if "autotune" in flags and not autotuned:  # Triton GEMM templates with fused epilogues vs cuBLAS
            torch._dynamo.reset()
            for block in blocks:
                block.compile(mode="max-autotune-no-cudagraphs")
            autotuned = True
        model.set_fused_epilogues(False if "unfused" in flags else None)
        torch.compiler.set_stance("default" if "compile" in flags else "force_eager")
        for size in args.sizes:
            inputs = edit_inputs(size, args.steps, device, params)
            torch.cuda.reset_peak_memory_stats(device)
            try:
                run = measure(model, inputs, mode, size, args, device, reference)
            except Exception as err:  # a failing mode must not lose the others' numbers
                report["runs"].append({"mode": mode, "size": size, "error": f"{type(err).__name__}: {err}"[:2000]})
                print(f"{mode} {size}: {type(err).__name__}: {str(err)[:500]}", flush=True)
                continue
            report["runs"].append(run)
            path.write_text(json.dumps(report, indent=1))
            print(f"{mode:14s} {size:5d}  {run['s_per_step']:.3f} s/step  {run['s_per_edit']:.2f} s/edit  "
                  f"{run['tflops']:.0f} TFLOP/s  peak {run['peak_allocated_gib']:.1f}/{run['peak_reserved_gib']:.1f} GiB"
                  + (f"  full {run['s_per_edit_measured']:.2f} s" if 's_per_edit_measured' in run else "")
                  + (f"  err {run['rel_latent_error']:.2e} (1 step {run['rel_first_step_error']:.2e})"
                     if "rel_latent_error" in run else ""),
                  flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


if __name__ == "__main__":
    main()
