"""Per-edit time of the full-size DiT on several GPUs: CFG parallel × Ulysses sequence parallel.

Launch on a multi-GPU machine (one process per GPU):
    torchrun --nproc_per_node 4 benchmarks/bench_parallel.py --cfg 2 --sp 2 --out benchmarks/results
``--cfg 1 --sp 1`` under ``--nproc_per_node 1`` is the single-GPU baseline of the same run. Every rank
builds the same random weights (same seed); rank 0 prints and writes ``parallel-<date>-<world>.json``.
Keep NCCL_NVLS_ENABLE=0 on shared hosts (device tool KINDS.md). Not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_dit import GIB, edit_inputs, random_model  # noqa: E402
from model.dit.parallel import make_plan, sample_parallel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cfg", type=int, default=2)
    parser.add_argument("--sp", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (regional)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", device_id=device)
    plan = make_plan(args.cfg, args.sp)
    model = random_model(device)
    if args.compile:
        for block in [*model.double_blocks, *model.single_blocks]:
            block.compile()
    inputs = edit_inputs(args.size, args.steps, device, model.params)
    times = []
    with torch.no_grad():
        for _ in range(2):  # the first run warms up (and compiles)
            dist.barrier()
            torch.cuda.synchronize()
            start = time.perf_counter()
            sample_parallel(model, inputs, 6.0, 0.93, model.params.switches, torch.bfloat16, device, plan)
            torch.cuda.synchronize()
            dist.barrier()
            times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        row = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "date": stamp,
               "world": dist.get_world_size(), "cfg_degree": args.cfg, "sp_degree": args.sp, "size": args.size,
               "steps": args.steps, "compile": args.compile, "s_per_edit": times[-1],
               "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"parallel-{stamp}-{dist.get_world_size()}.json").write_text(json.dumps(row, indent=1))
        print(json.dumps(row))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
