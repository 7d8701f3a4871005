"""Kernel-level profile of one compiled full-size sampler step at 1024² (device only; prints a table)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_dit import edit_inputs, quantize_blocks, random_model, time_steps  # noqa: E402
from model.dit.sampling import sample  # noqa: E402
from dataclasses import replace  # noqa: E402


def main() -> None:
    device = torch.device("cuda")
    model = random_model(device)
    for block in [*model.double_blocks, *model.single_blocks]:
        block.compile()
    inputs = edit_inputs(int(sys.argv[1]) if len(sys.argv) > 1 else 1024, 28, device, model.params)
    for fp8_mode in (False, True):
        if fp8_mode:
            quantize_blocks(model)
        with torch.no_grad():
            print("fp8" if fp8_mode else "bf16", "s/step", time_steps(model, inputs, 3, 5, device), flush=True)
            one = replace(inputs, timesteps=inputs.timesteps[:2])
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                sample(model, one, 6.0, 0.93, model.params.switches, torch.bfloat16, device)
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90), flush=True)


if __name__ == "__main__":
    main()
