"""Sampling with one DiT call per CFG branch: cond and uncond text of different lengths (v1.2).

v1.2's encoder keeps no padding and gives each prompt its own Qwen-derived text ids, quoted-token
embeddings and mask (diffusers fork ``pipeline_step1x_edit_v1p2.py`` ``encode_prompt``), so cond and
uncond cannot share a batch without padding. Padding would change the result: the DiT's joint
attention has no key mask, and padded text tokens would be attended. The release runs two batch-1
calls per step (``Step1XEditPipelineV1P2.__call__``); so does :func:`sample_per_branch`.
The work per step equals the batched call's (same tokens, same matmuls).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .sampling import ImageTokens, StepCallback


@dataclass(frozen=True)
class BranchText:
    """One CFG branch's text, batch 1 (the fork's ``TextEmbedderOutput`` from ``encode_prompt``).

    embedding: last VLM hidden states ``[1, L, D]``; mask: ``[1, L]`` (all ones in v1.2);
    txt_ids: RoPE ids ``[L, 3]`` float32; text_embeds: VLM input embeddings ``[1, L, D]`` and
    text_mask: ``[1, L]`` (1 on quoted tokens), both None for models without ``text_token_mapping``.
    """

    embedding: Tensor
    mask: Tensor
    txt_ids: Tensor
    text_embeds: Tensor | None = None
    text_mask: Tensor | None = None

    def __post_init__(self):
        length = self.embedding.shape[1]
        if self.embedding.shape[0] != 1 or self.mask.shape != (1, length) or self.txt_ids.shape != (length, 3):
            raise ValueError(
                f"branch text must be batch 1 with matching lengths: embedding {tuple(self.embedding.shape)}, "
                f"mask {tuple(self.mask.shape)}, txt_ids {tuple(self.txt_ids.shape)}"
            )

    def model_inputs(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(embedding, mask, text_embeds, text_mask)`` on ``device``, repeated to ``batch`` rows."""
        def rows(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device).expand(batch, *t.shape[1:])
        return rows(self.embedding), rows(self.mask), rows(self.text_embeds), rows(self.text_mask)


def sample_per_branch(
    model,
    noise: Tensor,
    ref_latent: Tensor | None,
    cond: BranchText,
    uncond: BranchText,
    timesteps: Tensor,
    cfg: float,
    renorm_threshold: float,
    compute_dtype: torch.dtype,
    device: torch.device,
    callback: StepCallback | None = None,
) -> Tensor:
    """:func:`model.dit.sampling.denoise` with cond and uncond as separate DiT calls → final latent ``[B, 16, h, w]``.

    noise / ref_latent: ``[B, 16, h, w]`` in the model's latent scaling (ref_latent None: text-to-image);
    the B images share the branch texts (the fork's ``num_images_per_prompt``). Guidance is
    renormalised on steps with ``t > renorm_threshold`` (:func:`model.dit.sampling.guided_velocity`).
    """
    tokens = ImageTokens.prepare(noise, ref_latent, model.params.switches, 1, compute_dtype, device)
    branches = [branch.model_inputs(tokens.batch, device) for branch in (cond, uncond)]
    pes = [model.positions(branch.txt_ids[None].to(device=device, dtype=torch.float32), tokens.ids[None])
           for branch in (cond, uncond)]

    def predict(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        tokens.write_step(x, t)
        img = model.img_in(tokens.model_input)  # the same image tokens for both branches: embed them once
        preds = []
        for (embedding, mask, text_embeds, text_mask), pe in zip(branches, pes):
            txt, vec = model.embed(tokens.timestep, embedding, tokens.timestep, mask, compute_dtype, text_embeds,
                                   text_mask)
            preds.append(model.blocks(img, txt, vec, pe)[:, :tokens.n_noise].float())
        return preds[0], preds[1]

    return tokens.denoise_to_latent(predict, timesteps, cfg, renorm_threshold, callback)
