"""ComfyUI-side costs on one GPU (random full-size weights): low-VRAM DiT steps through ComfyUI's
partial loading, FLUX VAE encode/decode, and the Qwen2.5-VL-7B encoder forward.

Device only: ``python benchmarks/bench_pipeline.py --comfyui .work/ComfyUI --out DIR``. Writes
``pipeline-<date>.json`` and prints a table. Not a test.

The fp8 rows (``--weights fp8``, the ``fp8-error`` part) build their layers with ``comfy.ops.scaled_fp8_ops``,
which ComfyUI 0.3.x up to 0.3.75 has; newer ComfyUI keeps fp8 in per-layer quantized layers that load from
a converted file: measure those with ``bench_vram_budgets.py``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_dit import (  # noqa: E402
    GIB, edit_inputs, flops_per_step, full_edit, make_out_dir, random_model, relative_error)
from model.weights.checkpoint import quantize_fp8  # noqa: E402
from model.dit.transformer import Step1XEdit  # noqa: E402
from model.weights.loader import FP8_BLOCK_PREFIXES  # noqa: E402
from model.dit.params import FULL_SIZE  # noqa: E402
from model.dit.sampling import sample  # noqa: E402
from dataclasses import replace  # noqa: E402

FLUX_VAE_CONFIG = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                   "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
# Qwen2.5-VL-7B-Instruct config.json (text and vision towers).
QWEN_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
                 rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
QWEN_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31], in_chans=3)


def timed(fn, repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fill_random_from_gpu(module: torch.nn.Module, device) -> None:
    """Random bf16 weights drawn on the GPU and copied into CPU parameters (fast for 12 B values)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("scale", "scale_weight", "scale_input")) or "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, device=device, dtype=torch.bfloat16).mul_(0.02).to(p.dtype).cpu())


def dit_lowvram(budgets_gib: list[float], size: int, device, compiled: bool, weights: str,
                fp8_matmul: bool = False) -> list[dict]:
    """The DiT through ComfyUI's ModelPatcher: full load (budget 0) or partial loads of the given sizes;
    each row's one-step latent is compared with the first budget's (offloaded layers run unfused).

    ``weights`` "bf16" builds it with ``comfy.ops.pick_operations`` for bf16 weights and compute; "fp8" with
    ``comfy.ops.scaled_fp8_ops`` (fp8 storage, one scale per tensor): what Load Step1X Model does.
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops

    fp8 = weights == "fp8"
    operations = (comfy.ops.scaled_fp8_ops(fp8_matrix_mult=fp8_matmul, override_dtype=torch.float8_e4m3fn) if fp8
                  else comfy.ops.pick_operations(torch.bfloat16, torch.bfloat16, load_device=device))
    with torch.device("meta"):
        model = Step1XEdit(FULL_SIZE["v1.1"], dtype=torch.bfloat16, operations=operations)
    model.allow_fused_linears(comfy.ops.disable_weight_init.Linear)  # as nodes/node_loader.py does
    model.to_empty(device="cpu")
    fill_random_from_gpu(model, device)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    if compiled:  # what Load Step1X Model's torch_compile does (nodes/runtime/dit_runtime.py run_compiled_or_eager)
        for block in [*model.double_blocks, *model.single_blocks]:
            block.compile()
    inputs = edit_inputs(size, 28, device, model.params)
    one = replace(inputs, timesteps=inputs.timesteps[:2])
    rows = []
    reference = None
    lin, att = flops_per_step(model.params, (size // 16) ** 2)
    for budget in budgets_gib:
        mm.unload_all_models()
        mm.soft_empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        if budget:
            patcher.load(device, lowvram_model_memory=int(budget * GIB))
        else:
            patcher.load(device, full_load=True)
        with torch.no_grad():
            s_step = timed(lambda: sample(model, one, 6.0, 0.93, model.params.switches, torch.bfloat16, device), repeat=3, warmup=2)
            first_step = sample(model, one, 6.0, 0.93, model.params.switches, torch.bfloat16, device)
        if reference is None:  # the first budget's one-step latent
            reference = first_step
        kind = weights + ("-fp8-matmul" if fp8_matmul else "")
        mode = f"{kind}-comfy-lowvram-{budget:g}GiB" if budget else f"{kind}-comfy-full-load"
        row = {"mode": mode + ("-compile" if compiled else ""), "size": size, "steps": 28,
               "cfg": True, "s_per_step": s_step, "s_per_edit": 28 * s_step, "tflops": (lin + att) / s_step / 1e12,
               "weights_on_gpu_gib": patcher.loaded_size() / GIB,
               "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
               "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
               "rel_first_step_error_vs_first_budget": relative_error(first_step, reference)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        patcher.detach()
    mm.unload_all_models()
    model = patcher = None   # frees the weights before the cache is emptied
    mm.soft_empty_cache()
    return rows


def quantized_copy(model: Step1XEdit, operations, device) -> Step1XEdit:
    """The same network built with ComfyUI's scaled-fp8 ``operations``, as Load Step1X Model stores fp8:
    the blocks' Linear weights become ``W / s`` in e4m3 with ``s = max|W| / 448`` (one scale per tensor,
    ``model.weights.checkpoint.quantize_fp8``); every other tensor stays bf16 (``assign`` keeps its dtype)."""
    with torch.device("meta"):
        fp8_model = Step1XEdit(model.params, dtype=torch.bfloat16, operations=operations)
    state = model.state_dict()
    for name, param in fp8_model.named_parameters():
        if param.dtype == torch.float8_e4m3fn and name.endswith(".weight") and name.startswith(FP8_BLOCK_PREFIXES):
            state[name], state[name.removesuffix("weight") + "scale_weight"] = quantize_fp8(state[name])
    fp8_model.load_state_dict(state, assign=True)
    return fp8_model.to(device).eval()


def fp8_error(size: int, device) -> list[dict]:
    """Final and one-step latent of ComfyUI's two fp8 paths against bf16 on the same seed and weights.

    Reference: bf16 weights, eager, unfused (the reference maths). Rows: scaled fp8 storage with bf16
    matmul (Load Step1X Model ``fp8_e4m3fn``) and fp8 matmul (``fp8_e4m3fn_fast``), both eager. Relative
    L2 error of the latent; random weights, so the trajectory amplifies differences.
    """
    import comfy.ops

    model = random_model(device)
    model.set_fused_epilogues(False)
    inputs = edit_inputs(size, 28, device, model.params)
    one = replace(inputs, timesteps=inputs.timesteps[:2])

    def first_and_final(net) -> tuple[torch.Tensor, torch.Tensor, float]:
        with torch.no_grad():
            first = sample(net, one, 6.0, 0.93, net.params.switches, torch.bfloat16, device)
            seconds, final = full_edit(net, inputs, device)
        return first, final, seconds

    ref_first, ref_final, ref_s = first_and_final(model)
    rows = [{"mode": "bf16-eager-unfused", "size": size, "steps": 28, "s_per_edit_measured": ref_s}]
    for label, fast in (("fp8-comfy-scaled", False), ("fp8-comfy-fp8-matmul", True)):
        fp8_model = quantized_copy(model, comfy.ops.scaled_fp8_ops(fp8_matrix_mult=fast, override_dtype=torch.float8_e4m3fn), device)
        first, final, seconds = first_and_final(fp8_model)
        rows.append({"mode": label, "size": size, "steps": 28, "s_per_edit_measured": seconds,
                     "rel_error_vs": "bf16-eager-unfused", "rel_first_step_error": relative_error(first, ref_first),
                     "rel_latent_error": relative_error(final, ref_final)})
        del fp8_model
        torch.cuda.empty_cache()
    return rows


def vae_costs(size: int, device) -> dict:
    import comfy.sd
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    state = {}
    for prefix, cls in (("encoder.", Encoder), ("decoder.", Decoder)):
        with torch.device(device):
            module = cls(**FLUX_VAE_CONFIG)
        state.update({prefix + k: v.detach().to(torch.bfloat16) * 0.02 for k, v in module.state_dict().items()})
    vae = comfy.sd.VAE(sd=state)
    image = torch.rand(1, size, size, 3)
    torch.cuda.reset_peak_memory_stats(device)
    encode_s = timed(lambda: vae.encode(image))
    latent = vae.encode(image)
    decode_s = timed(lambda: vae.decode(latent))
    return {"mode": "flux-vae", "size": size, "encode_s": encode_s, "decode_s": decode_s,
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB}


def vlm_costs(device, image_tokens: int = 324, text_tokens: int = 248) -> dict:
    """Two rows (instruction, negative) through Qwen2.5-VL-7B bf16: the encoder's work per edit."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(text_config=QWEN_TEXT, vision_config=QWEN_VISION, **QWEN_TEXT)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: no fp32 copy of the 7B weights
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    side = int(image_tokens**0.5) * 2  # patches per side (merge 2×2)
    pixel_values = torch.randn(side * side, 3 * 2 * 14 * 14, device=device, dtype=torch.bfloat16)
    grid = torch.tensor([[1, side, side]], device=device)
    image_token_id = config.image_token_id
    ids = torch.randint(0, 150000, (1, text_tokens + image_tokens), device=device)
    ids[0, 218:218 + image_tokens] = image_token_id
    mm_types = (ids == image_token_id).long()

    def run():
        with torch.no_grad():
            for _ in range(2):
                model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid, mm_token_type_ids=mm_types,
                      output_hidden_states=True)

    run()
    torch.cuda.reset_peak_memory_stats(device)  # the forward's own peak, weights included
    seconds = timed(run)
    out = {"mode": "qwen2.5-vl-7b-encode", "tokens": int(ids.shape[1]), "rows": 2, "s_per_edit": seconds,
           "weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / GIB,
           "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB}
    model = None   # frees the weights before the cache is emptied
    torch.cuda.empty_cache()
    return out


def fp8_refusal(args) -> str | None:
    """Why the asked fp8 rows cannot run in this ComfyUI (None when they can or none was asked for)."""
    if not ((args.weights == "fp8" and "dit" in args.parts) or "fp8-error" in args.parts):
        return None
    import comfy.ops

    if hasattr(comfy.ops, "scaled_fp8_ops"):
        return None
    return ("this ComfyUI has no comfy.ops.scaled_fp8_ops (fp8 lives in per-layer quantized layers there): "
            "run the fp8 rows with benchmarks/bench_vram_budgets.py --dtypes fp8 fp8_fast, or use ComfyUI 0.3.75")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0, 6.0, 4.0])
    parser.add_argument("--parts", nargs="+", default=["vlm", "vae", "dit"])
    parser.add_argument("--compile", action="store_true", help="compile the DiT blocks (regional torch.compile)")
    parser.add_argument("--weights", choices=["bf16", "fp8"], default="bf16")
    parser.add_argument("--fp8-matmul", action="store_true", help="ComfyUI's fp8 matrix multiplication (--fast)")
    args = parser.parse_args()
    make_out_dir(args.out)
    sys.path.insert(0, str(args.comfyui.resolve()))
    refusal = fp8_refusal(args)
    if refusal:
        parser.error(refusal)
    device = torch.device("cuda")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
              "date": stamp, "runs": []}
    path = args.out / f"pipeline-{stamp}.json"
    parts = {"vlm": lambda: [vlm_costs(device)], "vae": lambda: [vae_costs(args.size, device)],
             "dit": lambda: dit_lowvram(args.budgets, args.size, device, args.compile, args.weights, args.fp8_matmul),
             "fp8-error": lambda: fp8_error(args.size, device)}
    for part in args.parts:
        try:
            rows = parts[part]()
        except Exception as err:  # keep the other parts' numbers
            rows = [{"mode": part, "error": f"{type(err).__name__}: {err}"[:2000]}]
        for row in rows:
            print(json.dumps(row), flush=True)
        report["runs"] += rows
        path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
