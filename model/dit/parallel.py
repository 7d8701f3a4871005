"""Several processes, one edit: CFG-parallel and Ulysses sequence-parallel sampling (torch.distributed).

Ranks form a ``cfg_degree × sp_degree`` grid (rank = cfg_rank·sp_degree + sp_rank). With CFG
parallelism the instruction and the negative prompt run on different ranks and their predictions
are exchanged after every step; with sequence parallelism each rank holds a contiguous slice of the
image tokens (noise + reference) and the full text, and attention swaps "all heads, my tokens" for
"my heads, all tokens" with one all-to-all before and after (DeepSpeed-Ulysses). Text tokens are
replicated, so their stream is computed on every rank. NCCL on GPUs, gloo on CPU; the schedule,
guidance and Euler update are :func:`model.dit.sampling.denoise`, so every rank holds the same latent.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention

from .attention import apply_rope, attention
from .params import VersionSwitches
from .sampling import CFG_BRANCHES, ImageTokens, SamplingInputs, StepCallback


@dataclass(frozen=True)
class ParallelPlan:
    cfg_degree: int
    sp_degree: int
    cfg_rank: int
    sp_rank: int
    cfg_group: object | None
    sp_group: object | None


def make_plan(cfg_degree: int, sp_degree: int) -> ParallelPlan:
    """Create the process groups; every rank must call this with the same arguments."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if cfg_degree not in (1, CFG_BRANCHES):
        raise ValueError(f"cfg_degree must be 1 or {CFG_BRANCHES} (instruction and negative prompt), got {cfg_degree}")
    if cfg_degree * sp_degree != world:
        raise ValueError(f"cfg_degree {cfg_degree} × sp_degree {sp_degree} must equal the world size {world}")
    sp_groups = [dist.new_group([c * sp_degree + s for s in range(sp_degree)]) for c in range(cfg_degree)]
    cfg_groups = [dist.new_group([c * sp_degree + s for c in range(cfg_degree)]) for s in range(sp_degree)]
    cfg_rank, sp_rank = divmod(rank, sp_degree)
    return ParallelPlan(cfg_degree, sp_degree, cfg_rank, sp_rank, cfg_groups[sp_rank], sp_groups[cfg_rank])


def shard_sizes(total: int, parts: int) -> list[int]:
    """Contiguous split of ``total`` tokens into ``parts`` slices, the remainder on the first ones."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def _exchange_image_heads(local: Tensor, sizes: list[int], group) -> Tensor:
    """``[B, H, T_mine, d]`` → ``[B, H/P, T, d]``: send head slice j to rank j, gather every token slice."""
    parts = dist.get_world_size(group)
    heads = local.shape[1] // parts
    send = [t.contiguous() for t in local.split(heads, dim=1)]
    recv = [local.new_empty(local.shape[0], heads, size, local.shape[3]) for size in sizes]
    dist.all_to_all(recv, send, group=group)
    return torch.cat(recv, dim=2)


def _return_image_tokens(full: Tensor, sizes: list[int], group) -> Tensor:
    """``[B, H/P, T, d]`` → ``[B, H, T_mine, d]`` (inverse of :func:`_exchange_image_heads`)."""
    rank = dist.get_rank(group)
    send = [t.contiguous() for t in full.split(sizes, dim=2)]
    recv = [full.new_empty(full.shape[0], full.shape[1], sizes[rank], full.shape[3]) for _ in sizes]
    dist.all_to_all(recv, send, group=group)
    return torch.cat(recv, dim=1)


def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor, txt_len: int, sizes: list[int], group) -> Tensor:
    """Joint attention over replicated text + sharded image tokens; same result as :func:`attention`.

    ``q, k, v [B, H, L + T_mine, d]``, ``pe`` for the same tokens → ``[B, L + T_mine, H·d]``.
    """
    q, k = apply_rope(q, k, pe)
    parts, rank = dist.get_world_size(group), dist.get_rank(group)
    heads = q.shape[1] // parts
    mine = slice(rank * heads, (rank + 1) * heads)
    q_all, k_all, v_all = (
        torch.cat((t[:, mine, :txt_len], _exchange_image_heads(t[:, :, txt_len:], sizes, group)), dim=2)
        for t in (q, k, v)
    )
    out = scaled_dot_product_attention(q_all, k_all, v_all)
    txt_heads = [torch.empty_like(out[:, :, :txt_len]) for _ in range(parts)]
    dist.all_gather(txt_heads, out[:, :, :txt_len].contiguous(), group=group)
    img = _return_image_tokens(out[:, :, txt_len:], sizes, group)
    return rearrange(torch.cat((torch.cat(txt_heads, dim=1), img), dim=2), "b h s d -> b s (h d)")


def _gather_tokens(local: Tensor, sizes: list[int], group) -> Tensor:
    """Concatenate every rank's token slice ``[R, T_i, C]`` → ``[R, T, C]`` (padded all-gather)."""
    longest = max(sizes)
    padded = local.new_zeros(local.shape[0], longest, local.shape[2])
    padded[:, : local.shape[1]] = local
    pieces = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(pieces, padded, group=group)
    return torch.cat([p[:, :size] for p, size in zip(pieces, sizes)], dim=1)


def sample_parallel(
    model,
    inputs: SamplingInputs,
    cfg: float,
    renorm_threshold: float,
    switches: VersionSwitches,
    compute_dtype: torch.dtype,
    device: torch.device,
    plan: ParallelPlan,
    callback: StepCallback | None = None,
) -> Tensor:
    """:func:`model.dit.sampling.sample` spread over the ranks of ``plan``; every rank returns the latent."""
    num_heads = model.params.dit.num_heads
    if num_heads % plan.sp_degree:
        raise ValueError(f"sequence parallelism over {plan.sp_degree} ranks needs the head count ({num_heads}) "
                         "to be divisible by it")
    branches = range(CFG_BRANCHES) if plan.cfg_degree == 1 else (plan.cfg_rank,)
    tokens = ImageTokens.prepare(inputs.noise, inputs.ref_latent, switches, len(branches), compute_dtype, device)
    sizes = shard_sizes(tokens.ids.shape[0], plan.sp_degree)
    start = sum(sizes[: plan.sp_rank])
    mine = slice(start, start + sizes[plan.sp_rank])
    llm_embedding, mask, txt_ids = inputs.branch_text(branches, device)
    txt_len = llm_embedding.shape[1]
    pe = model.positions(txt_ids, tokens.ids[None, mine])
    attn = attention if plan.sp_degree == 1 else partial(
        ulysses_attention, txt_len=txt_len, sizes=sizes, group=plan.sp_group)
    batch = tokens.batch

    def predict(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        tokens.write_step(x, t)
        txt, vec = model.embed(tokens.timestep, llm_embedding, tokens.timestep, mask, compute_dtype)
        local = model.blocks(model.img_in(tokens.model_input[:, mine]), txt, vec, pe, attn)
        pred = local if plan.sp_degree == 1 else _gather_tokens(local, sizes, plan.sp_group)
        pred = pred[:, :tokens.n_noise].float()
        if plan.cfg_degree == 1:
            return pred[:batch], pred[batch:]
        both = [torch.empty_like(pred) for _ in range(CFG_BRANCHES)]
        dist.all_gather(both, pred, group=plan.cfg_group)
        return both[0], both[1]

    return tokens.denoise_to_latent(predict, inputs.timesteps, cfg, renorm_threshold, callback)
