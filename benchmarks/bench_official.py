"""The official Step1X-Edit DiT and the pack's, eager, in one process on one GPU (random weights).

    python benchmarks/bench_official.py --official PATH/Step1X-Edit --out DIR [--size 1024]

``--official`` is a checkout of github.com/stepfun-ai/Step1X-Edit (its ``modules/`` and ``library/``; the
official code needs ``liger-kernel`` for its RMSNorm). Both models get the same full-size shapes and
the same inputs: cond+uncond batch of 2, 640 text tokens, noise + reference tokens. The official code
runs as its ``inference.py`` does (bf16 autocast, inference mode; also without autocast) but without its
``torch.compile`` decorators (TorchDynamo disabled) and with PyTorch SDPA in place of its flash-attn call. One DiT call per step; s/edit = median s/step × steps.
Writes ``official-<date>.json``. Not a test: no assertions on time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_dit import (CFG_BATCH, GIB, TEXT_TOKENS, WEIGHT_STD, edit_inputs, flops_per_step,  # noqa: E402
                                  random_model, time_steps)
from model.dit import attention, layers  # noqa: E402
from model.dit.params import FULL_SIZE  # noqa: E402

WARMUP, REPEAT = 2, 5


def official_model(source: Path, device: torch.device):
    """The official ``Step1XEdit`` at full size, bf16, random weights, SDPA attention."""
    sys.path.insert(0, str(source))
    from modules import attention as official_attention
    from modules.model_edit import Step1XEdit, Step1XParams

    flash_call = official_attention.attention

    def sdpa_attention(q, k, v, mode="flash", **kwargs):
        return flash_call(q, k, v, mode="torch", **kwargs)

    official_attention.attention = sdpa_attention  # layers.attention_after_rope imports it per call
    p = FULL_SIZE["v1.1"].dit
    params = Step1XParams(in_channels=p.in_channels, out_channels=p.out_channels, vec_in_dim=p.vec_in_dim,
                          context_in_dim=p.context_in_dim, hidden_size=p.hidden_size, mlp_ratio=p.mlp_ratio,
                          num_heads=p.num_heads, depth=p.depth, depth_single_blocks=p.depth_single_blocks,
                          axes_dim=list(p.axes_dim), theta=p.theta, qkv_bias=p.qkv_bias)
    with torch.device(device):
        model = Step1XEdit(params).to(torch.bfloat16)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("scale") or "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, WEIGHT_STD, generator=generator)
    return model.eval()


def official_step_seconds(model, size: int, device: torch.device, autocast: bool) -> float:
    """Median seconds of one official DiT call on a CFG batch at ``size``² (noise + reference tokens),
    under ``inference_mode`` and, with ``autocast``, bf16 autocast as ``inference.py`` ``ImageGenerator``
    runs its ``denoise``."""
    tokens = 2 * (size // 16) ** 2
    g = torch.Generator(device).manual_seed(1)
    bf16 = dict(device=device, dtype=torch.bfloat16)
    img = torch.randn(CFG_BATCH, tokens, 64, generator=g, **bf16)
    img_ids = torch.zeros(CFG_BATCH, tokens, 3, device=device)
    img_ids[..., 1] = torch.arange(tokens, device=device)[None] // (size // 16) % (size // 16)
    img_ids[..., 2] = torch.arange(tokens, device=device)[None] % (size // 16)
    txt_ids = torch.zeros(CFG_BATCH, TEXT_TOKENS, 3, device=device)
    llm = torch.randn(CFG_BATCH, TEXT_TOKENS, FULL_SIZE["v1.1"].connector.in_channels, generator=g, **bf16)
    mask = torch.zeros(CFG_BATCH, TEXT_TOKENS, dtype=torch.int64, device=device)
    mask[:, :400] = 1
    t = torch.full((CFG_BATCH,), 0.5, **bf16)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        for i in range(WARMUP + REPEAT):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(img=img, img_ids=img_ids, txt_ids=txt_ids, timesteps=t, llm_embedding=llm, t_vec=t, mask=mask)
            end.record()
            torch.cuda.synchronize()
            if i >= WARMUP:
                times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of stepfun-ai/Step1X-Edit")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    linear, attn = flops_per_step(FULL_SIZE["v1.1"], (args.size // 16) ** 2)
    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "date": stamp,
              "size": args.size, "steps": args.steps, "runs": []}
    path = args.out / f"official-{stamp}.json"

    def record(system: str, s_step: float) -> None:
        run = {"system": system, "s_per_step": s_step, "s_per_edit": s_step * args.steps,
               "tflops": (linear + attn) / s_step / 1e12,
               "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB}
        report["runs"].append(run)
        path.write_text(json.dumps(report, indent=1))
        print(f"{system:34s} {s_step:.3f} s/step  {run['s_per_edit']:.2f} s/edit  {run['tflops']:.0f} TFLOP/s  "
              f"peak {run['peak_allocated_gib']:.1f} GiB", flush=True)

    torch._dynamo.config.disable = True  # the official decorators; the pack's eager path compiles nothing
    official = official_model(args.official, device)
    for system, autocast in (("official eager, autocast (inference.py)", True), ("official eager, no autocast", False)):
        torch.cuda.reset_peak_memory_stats(device)
        record(system, official_step_seconds(official, args.size, device, autocast))
    del official
    torch.cuda.empty_cache()

    pack = random_model(device)
    inputs = edit_inputs(args.size, args.steps, device, pack.params)
    fused_norm, one_pass_modulate, rotate_pairs = layers.RMSNorm.forward, layers.modulate, attention._rotate_pairs
    for system, fused, norm, modulate in (
            ("pack eager (default)", None, fused_norm, one_pass_modulate),
            ("pack eager, unfused epilogues", False, fused_norm, one_pass_modulate),
            ("pack eager, RMSNorm as separate ops", None, rms_norm_separate_ops, one_pass_modulate),
            ("pack eager, modulation as two ops", None, fused_norm, modulate_two_ops),
            ("pack eager, RoPE with a float copy", None, fused_norm, one_pass_modulate),
            ("pack eager (default), again", None, fused_norm, one_pass_modulate)):
        pack.set_fused_epilogues(fused)
        layers.RMSNorm.forward, layers.modulate = norm, modulate
        attention._rotate_pairs = rotate_with_float_copy if "float copy" in system else rotate_pairs
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            record(system, time_steps(pack, inputs, WARMUP, REPEAT, device))
    layers.RMSNorm.forward, layers.modulate, attention._rotate_pairs = fused_norm, one_pass_modulate, rotate_pairs


def rotate_with_float_copy(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """RoPE on an explicit float32 copy of ``x`` (five passes), for the A/B against the promoting products."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]).reshape(*x.shape).type_as(x)


def modulate_two_ops(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The modulation as a product and a sum (two passes), for the A/B against ``torch.addcmul``."""
    return ((1 + scale.float()) * layers.layer_norm_f32(x) + shift.float()).to(x.dtype)


def rms_norm_separate_ops(self, x: torch.Tensor) -> torch.Tensor:
    """The same RMSNorm as one eager op per step (float32), for the A/B against ``F.rms_norm``."""
    x32 = x.float()
    weight = self.scale.to(device=x.device, dtype=x.dtype).float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + layers.NORM_EPS) * weight).to(x.dtype)


if __name__ == "__main__":
    main()
