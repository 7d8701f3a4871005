"""Step caches on the native Step1X model: seconds per edit, steps skipped and latent error of core EasyCache,
core LazyCache and the pack's TeaCache at several thresholds each (each method's default included), against
the uncached edit on the same seed and weights.

Every edit is Step1X Sampler's path (nodes/runtime/cfg_guider.py ``sample_step1x``: the native model under core's
CFGGuider and Euler KSAMPLER) on random full-size bf16 weights, 1024², 28 steps, CFG 6 with the v1.1
renormalisation. Random weights move unlike trained ones (their step-to-step changes, hence what a cache
skips and what skipping costs, differ): read the skip counts and errors as a check that each cache works
on this model and as relative costs, not as the quality on real edits (README, "Step caches").

Device: ``python benchmarks/bench_caches.py --comfyui .work/ComfyUI --out benchmarks/results`` (one H200:
under 8 minutes). ``--tiny`` runs a tiny random model on the CPU (a quick check of the script). Writes
``caches-<date>.json`` (schema of benchmarks/bench_dit.py: report fields and one row per run) and prints
one line per run. Not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_dit import TEXT_TOKENS, WEIGHT_STD, make_out_dir, relative_error  # noqa: E402
from model.dit.params import FULL_SIZE, ConnectorParams, DiTParams, Step1XParams  # noqa: E402
from model.dit.sampling import make_noise  # noqa: E402

CFG = 6.0
RENORM_THRESHOLD = 0.93   # the official v1.1 rule (model/dit/params.py RENORM_OFFICIAL)
CFG_BRANCHES = 2
NOISE_SEED, REFERENCE_SEED, TEXT_SEED = 42, 7, 3
PROMPT_TOKENS = 400       # unmasked text tokens of the random instruction (as bench_dit.py's inputs)
# Thresholds per method, each method's default first: core EasyCache / LazyCache reuse_threshold 0.2 with
# start 0.15, end 0.95 (comfy_extras/nodes_easycache.py); TeaCache 0.25 (nodes/node_teacache.py), then the FLUX
# table's 0.4 and 0.6.
THRESHOLDS = {"easycache": (0.2, 0.1, 0.4), "lazycache": (0.2, 0.1, 0.4), "teacache": (0.25, 0.4, 0.6)}
CORE_CACHE_WINDOW = {"start_percent": 0.15, "end_percent": 0.95}
# --tiny: a 2 + 2 block model at 64 px, 8 steps, float32 on the CPU.
TINY_PARAMS = Step1XParams(DiTParams(context_in_dim=32, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2,
                                     axes_dim=(8, 12, 12)),
                           ConnectorParams(in_channels=48, hidden_size=32, heads_num=2, depth=2), "v1.1")
TINY_SIZE, TINY_STEPS, TINY_TEXT_TOKENS = 64, 8, 16


def import_comfyui(path: Path, cpu: bool) -> None:
    """ComfyUI importable after the repository (whose ``tests`` and ``nodes`` it would shadow), as the unit tests
    import it (tests/unit/comfy_support.py)."""
    sys.path.append(str(path.resolve()))
    from comfy.cli_args import args

    args.cpu = cpu
    import comfy.model_management  # noqa: F401  (after args.cpu)


def native_model(params, dtype: torch.dtype, device: torch.device):
    """The native model (nodes/runtime/native_model.py) over random weights, in a ModelPatcher on ``device``."""
    import comfy.model_patcher
    import comfy.ops

    from tests.unit.vlm_support import import_pack_module

    native = import_pack_module("nodes.runtime.native_model")
    with torch.device("meta"):
        net = native.Step1XDiffusion(params, dtype=dtype, operations=comfy.ops.pick_operations(dtype, dtype, load_device=device))
    net.allow_fused_linears(comfy.ops.disable_weight_init.Linear)   # as nodes/node_loader.py does
    net.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, WEIGHT_STD, generator=generator)
    return comfy.model_patcher.ModelPatcher(native.Step1XModel(net, dtype, dtype), load_device=device,
                                            offload_device=torch.device("cpu"))


def edit_inputs(params, size: int, text_tokens: int) -> tuple[list, list, torch.Tensor, torch.Tensor]:
    """Random v1.1 conditioning, raw reference latent and the official noise of one edit."""
    latent = size // 8
    generator = torch.Generator().manual_seed(TEXT_SEED)
    mask = torch.zeros(1, text_tokens, dtype=torch.int64)
    mask[:, :min(PROMPT_TOKENS, text_tokens)] = 1

    def prompt():
        return [[torch.randn(1, text_tokens, params.connector.in_channels, generator=generator),
                 {"attention_mask": mask, "step1x_edit": params.version}]]
    return prompt(), prompt(), make_noise(REFERENCE_SEED, 1, latent, latent), make_noise(NOISE_SEED, 1, latent, latent)


@contextmanager
def block_passes(patcher):
    """Batch rows the DiT's block stack ran on (a skipped step runs none; one step is 2 rows)."""
    rows = []
    hook = patcher.model.diffusion_model.double_blocks[0].register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0]))
    try:
        yield rows
    finally:
        hook.remove()


def cached_models(patcher) -> list[tuple[str, float, object]]:
    """(method, threshold, patcher) for every cache setting."""
    from comfy_extras import nodes_easycache

    from tests.unit.vlm_support import import_pack_module

    teacache = import_pack_module("nodes.node_teacache")
    nodes = {"easycache": nodes_easycache.EasyCacheNode, "lazycache": nodes_easycache.LazyCacheNode}
    models = []
    for method, thresholds in THRESHOLDS.items():
        for threshold in thresholds:
            if method == "teacache":
                model = teacache.with_teacache(patcher, threshold)
            else:
                (model,) = nodes[method].execute(patcher, reuse_threshold=threshold, verbose=False,
                                                 **CORE_CACHE_WINDOW).result
            models.append((method, threshold, model))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI source tree (0.3.75 or newer)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (checks the script)")
    args = parser.parse_args()
    make_out_dir(args.out)
    import_comfyui(args.comfyui, cpu=args.tiny)
    from tests.unit.vlm_support import import_pack_module

    sample_step1x = import_pack_module("nodes.runtime.cfg_guider").sample_step1x
    device = torch.device("cpu" if args.tiny else "cuda")
    params, dtype = (TINY_PARAMS, torch.float32) if args.tiny else (FULL_SIZE["v1.1"], torch.bfloat16)
    size, steps = (TINY_SIZE, TINY_STEPS) if args.tiny else (args.size, args.steps)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "date": stamp, "size": size, "steps": steps,
              "cfg": CFG, "weights": "tiny float32" if args.tiny else "random bf16, full size", "runs": []}
    path = args.out / f"caches-{stamp}.json"
    patcher = native_model(params, dtype, device)
    positive, negative, reference, noise = edit_inputs(params, size, TINY_TEXT_TOKENS if args.tiny else TEXT_TOKENS)

    def edit(model) -> tuple[float, torch.Tensor, int]:
        with block_passes(patcher) as rows, torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            latent = sample_step1x(model, positive, negative, reference, noise, steps, CFG, RENORM_THRESHOLD)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start, latent, sum(rows)

    edit(patcher)   # warm-up: loading, kernel selection
    uncached_s, uncached, passes = edit(patcher)
    runs = [("uncached", None, uncached_s, uncached, passes)]
    for method, threshold, model in cached_models(patcher):
        runs.append((method, threshold, *edit(model)))
    for method, threshold, seconds, latent, passes in runs:
        row = {"mode": method, "threshold": threshold,
               "default": threshold is not None and threshold == THRESHOLDS[method][0],
               "s_per_edit": seconds, "speedup": uncached_s / seconds, "block_passes": passes,
               "steps_skipped": steps - passes / CFG_BRANCHES, "rel_latent_error": relative_error(latent, uncached)}
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    path.write_text(json.dumps(report, indent=1))
    print(path)


if __name__ == "__main__":
    main()
