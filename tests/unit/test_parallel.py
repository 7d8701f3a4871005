"""CFG- and sequence-parallel sampling on CPU (gloo, 2–4 processes) equals the single-process sampler."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.dit import sampling
from model.dit.params import VERSIONS
from model.dit.parallel import ParallelPlan, make_plan, sample_parallel, shard_sizes
from tests.golden import assert_close, model_sets
from tests.unit.test_model_parity import build_model, edit_loop_inputs

GRIDS = [(2, 1), (1, 2), (2, 2), (1, 3)]  # (cfg_degree, sp_degree)
# The releases that batch cond and uncond (v1.0, v1.1); v1.2 samples per branch (model/dit/branch_sampling.py).
BATCHED_SETS = [i for i, s in enumerate(model_sets()) if s.has("sampling.safetensors")
                and s.manifest.get("weights_layout") != "diffusers"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, set_index: int, grid: tuple[int, int], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fixtures = model_sets()[set_index]
        model = build_model(fixtures)
        inputs, entry = edit_loop_inputs(fixtures)
        plan = make_plan(*grid)
        with torch.no_grad():
            latent = sample_parallel(model, inputs, entry["cfg_guidance"], entry["timesteps_truncate"],
                                     model.params.switches, torch.float32, torch.device("cpu"), plan)
        torch.save(latent, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_batched_sets_cover_v10_and_v11():
    assert {model_sets()[i].version for i in BATCHED_SETS} >= {"v1.0", "v1.1"}


def test_shard_sizes_cover_every_token():
    assert shard_sizes(12, 4) == [3, 3, 3, 3]
    assert shard_sizes(13, 4) == [4, 3, 3, 3]
    assert sum(shard_sizes(7, 3)) == 7


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"cfg{g[0]}xsp{g[1]}")
@pytest.mark.parametrize("set_index", BATCHED_SETS, ids=lambda i: model_sets()[i].version)
def test_parallel_sampler_matches_single_process(tmp_path, grid, set_index):
    fixtures = model_sets()[set_index]
    heads = fixtures.manifest["config"]["dit"]["num_heads"]
    world = grid[0] * grid[1]
    if heads % grid[1]:
        with pytest.raises(ValueError, match="head count"):
            sample_parallel(build_model(fixtures), edit_loop_inputs(fixtures)[0], 1.0, 1.0, VERSIONS[fixtures.version], torch.float32,
                            torch.device("cpu"), ParallelPlan(grid[0], grid[1], 0, 0, None, None))
        return
    mp.spawn(_worker, args=(world, _free_port(), set_index, grid, str(tmp_path)), nprocs=world, join=True)
    inputs, entry = edit_loop_inputs(fixtures)
    model = build_model(fixtures)
    with torch.no_grad():
        single = sampling.sample(model, inputs, entry["cfg_guidance"], entry["timesteps_truncate"],
                                 model.params.switches, torch.float32, torch.device("cpu"))
    atol, rtol = fixtures.tolerance("sampling.safetensors")
    expected = fixtures.tensors("sampling.safetensors")["final_latent"]
    for rank in range(world):
        latent = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert_close(latent, single, atol, rtol, f"rank {rank} vs single process")
        assert_close(latent, expected, atol, rtol, f"rank {rank} vs reference")
