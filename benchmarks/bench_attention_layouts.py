"""cuDNN attention at the 1024² edit shape for the q/k/v layouts the DiT can hand it (device only).

The compiled loop's attention runs at ≈ 582 TFLOP/s (profile_step.py) against 683 for contiguous inputs
measured alone on the same card type (H100). This separates layout from sustained-load effects: each
layout timed alone, then interleaved with the single block's big GEMMs.
``python benchmarks/bench_attention_layouts.py --out DIR`` writes ``attention-<date>.json``. Not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

BATCH, HEADS, HEAD_DIM = 2, 24, 128          # CFG batch, full-size heads (official ``Step1XParams``)
TOKENS = 640 + 2 * 4096                      # text + noise + reference tokens at 1024²
GEMM_ROWS, GEMM_IN, GEMM_OUT = BATCH * TOKENS, 3072, 12288  # the single block's MLP GEMM
REPEAT = 20


def layouts(device) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """q, k, v ``[B, H, S, D]`` views with the strides each producer gives."""
    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=torch.bfloat16)

    packed = randn(BATCH, TOKENS, 3, HEADS, HEAD_DIM)  # the qkv Linear's output, viewed per head
    bshd = [randn(BATCH, TOKENS, HEADS, HEAD_DIM).transpose(1, 2) for _ in range(3)]
    return {
        "contiguous [B,H,S,D]": tuple(randn(BATCH, HEADS, TOKENS, HEAD_DIM) for _ in range(3)),
        "[B,S,H,D] transposed": tuple(bshd),
        "views of packed qkv": tuple(packed[:, :, i].transpose(1, 2) for i in range(3)),
    }


def time_ms(fn, repeat: int = REPEAT) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    flops = 4 * BATCH * HEADS * TOKENS * TOKENS * HEAD_DIM
    a = torch.randn(GEMM_ROWS, GEMM_IN, device=device, dtype=torch.bfloat16)
    w = torch.randn(GEMM_OUT, GEMM_IN, device=device, dtype=torch.bfloat16)
    gemm_ms = time_ms(lambda: a @ w.t())
    rows = []
    for name, (q, k, v) in layouts(device).items():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            alone = time_ms(lambda: scaled_dot_product_attention(q, k, v))
            both = time_ms(lambda: (a @ w.t(), scaled_dot_product_attention(q, k, v)))
        row = {"layout": name, "strides": [list(t.stride()) for t in (q, k, v)], "ms_alone": alone,
               "tflops_alone": flops / alone / 1e9, "ms_interleaved": both - gemm_ms,
               "tflops_interleaved": flops / (both - gemm_ms) / 1e9}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
              "gemm_ms": gemm_ms, "gemm_tflops": 2 * GEMM_ROWS * GEMM_IN * GEMM_OUT / gemm_ms / 1e9, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"attention-{report['date']}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


if __name__ == "__main__":
    main()
