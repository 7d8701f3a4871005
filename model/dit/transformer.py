"""The Step1X-Edit DiT: connector + FLUX-style double/single stream blocks.

Official ``modules/model_edit.py`` ``Step1XEdit``. Parameter names equal the checkpoint keys. v1.2
adds ``text_token_mapping`` (diffusers fork ``transformer_step1x_edit.py``
``Step1XEditTransformer2DModel``): quoted tokens' VLM input embeddings, mapped to the connector
width, are added to the connector output before ``txt_in``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import attention, embed_positions
from .connector import Qwen2Connector
from .layers import DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock, timestep_embedding
from .params import TIME_EMBED_DIM, Step1XParams


class Step1XEdit(nn.Module):
    """``forward(img [B, N_img, 64], img_ids [B, N_img, 3], txt_ids [B, L, 3], timesteps [B],
    llm_embedding [B, L, D], t_vec [B], mask [B, L])`` → prediction ``[B, N_img, 64]``.

    For an edit ``N_img = 2N`` (noisy tokens then reference tokens) and the sampler keeps the first N;
    for text-to-image ``N_img = N``. v1.2 models also need ``text_embeds [B, L, D]`` (the VLM's input
    embeddings) and ``text_mask [B, L]`` (1 on quoted tokens).
    """

    def __init__(self, params: Step1XParams, dtype=None, device=None, operations=nn):
        super().__init__()
        p = params.dit
        if p.hidden_size % p.num_heads:
            raise ValueError(f"hidden size {p.hidden_size} is not divisible by {p.num_heads} heads")
        if sum(p.axes_dim) != p.head_dim:
            raise ValueError(f"RoPE axes {p.axes_dim} must sum to the head dim {p.head_dim}")
        self.params = params
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.img_in = operations.Linear(p.in_channels, p.hidden_size, bias=True, dtype=dtype, device=device)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, p.hidden_size, **kw)
        self.vector_in = MLPEmbedder(p.vec_in_dim, p.hidden_size, **kw)
        self.txt_in = operations.Linear(p.context_in_dim, p.hidden_size, bias=True, dtype=dtype, device=device)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(p.hidden_size, p.num_heads, p.mlp_ratio, p.qkv_bias, **kw) for _ in range(p.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(p.hidden_size, p.num_heads, p.mlp_ratio, **kw) for _ in range(p.depth_single_blocks)
        )
        self.final_layer = LastLayer(p.hidden_size, p.out_channels, **kw)
        self.connector = Qwen2Connector(params.connector, params.switches.connector_scale_factor, **kw)
        c = params.connector
        self.text_token_mapping = (
            operations.Linear(c.in_channels, c.hidden_size, bias=True, dtype=dtype, device=device)
            if params.switches.text_token_mapping else None
        )

    def set_fused_epilogues(self, fuse: bool | None) -> None:
        """Fused GEMM epilogues in every block: None = on NVIDIA GPUs (default), True / False = forced
        (:class:`model.dit.layers.FusedEpilogues`)."""
        for block in [*self.double_blocks, *self.single_blocks]:
            block.fuse_epilogues = fuse

    def allow_fused_linears(self, *linear_classes: type) -> None:
        """Linear classes (besides ``nn.Linear``) whose ``forward`` is ``F.linear(x, weight, bias)`` when
        the weight is stored in ``x``'s dtype on its device and no ComfyUI cast flag or patch is set,
        e.g. ``comfy.ops.disable_weight_init.Linear``; layers of other classes are never fused."""
        forwards = frozenset(cls.forward for cls in linear_classes)
        for block in [*self.double_blocks, *self.single_blocks]:
            block.plain_linear_forwards = forwards

    def embed(
        self, timesteps: Tensor, llm_embedding: Tensor, t_vec: Tensor, mask: Tensor, dtype: torch.dtype,
        text_embeds: Tensor | None = None, text_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Connector and embeddings: ``(txt [B, L, H], vec [B, H])`` in ``dtype``."""
        txt, y = self.connector(llm_embedding.to(dtype), t_vec.to(dtype), mask)
        if self.text_token_mapping is not None:
            if text_embeds is None or text_mask is None:
                raise ValueError(
                    f"Step1X-Edit {self.params.version} needs text_embeds and text_mask from its own VLM encoder: "
                    "encode with 'Step1X v1.2 VLM Encode'."
                )
            mapped = self.text_token_mapping(text_embeds.to(dtype))
            txt = txt + mapped * text_mask[..., None].to(mapped.dtype)
        vec = self.time_in(timestep_embedding(timesteps.to(dtype), TIME_EMBED_DIM)) + self.vector_in(y)
        return self.txt_in(txt), vec

    def positions(self, txt_ids: Tensor, img_ids: Tensor) -> Tensor:
        p = self.params.dit
        return embed_positions(torch.cat((txt_ids, img_ids), dim=1), p.axes_dim, p.theta)

    def stack(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor, attn=attention) -> Tensor:
        """The 19 + 38 blocks without the final layer: image tokens ``[B, N_img, H]`` → ``[B, N_img, H]``.

        ``attn`` is the joint attention (sequence-parallel runs pass :func:`model.dit.parallel.ulysses_attention`).
        """
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe, attn)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, vec, pe, attn)
        return x[:, txt.shape[1] :]

    def blocks(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor, attn=attention) -> Tensor:
        """:meth:`stack` and the final layer: image tokens ``[B, N_img, H]`` → ``[B, N_img, 64]``."""
        return self.final_layer(self.stack(img, txt, vec, pe, attn), vec)

    def forward(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        llm_embedding: Tensor,
        t_vec: Tensor,
        mask: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        dtype = img.dtype
        txt, vec = self.embed(timesteps, llm_embedding, t_vec, mask, dtype, text_embeds, text_mask)
        return self.blocks(self.img_in(img), txt, vec, self.positions(txt_ids, img_ids))
