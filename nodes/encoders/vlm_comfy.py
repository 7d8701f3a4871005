"""Route 1: ComfyUI's own Qwen2.5-VL-7B text encoder (CLIPLoader type ``qwen_image``), driven so
that tokens, image preprocessing, positions, layer and slicing equal Step1X-Edit's
(official ``Qwen25VL_7b_Embedder``). ComfyUI side: ``comfy/text_encoders/qwen_image.py``, ``llama.py``
(``Qwen25_7BVLI``) and ``qwen_vl.py``.

Only ComfyUI's modules and loaded weights run (LoRA patches and fp8 casting included); the model
stays a ComfyUI-managed model (``CLIP.load_model`` -> ``model_management``), so it is offloaded
like any text encoder when the DiT needs the memory. The pack supplies the image (already
VLM-sized, so ComfyUI's own resize is an identity), the ids with the quote splitting, the M-RoPE
positions with Step1X's id-0 padding semantics, and the raster-order fix where ComfyUI's ViT returns
its tokens in window order (probed: :func:`vit_returns_window_order`). ComfyUI internals move between
releases: :func:`check_comfy_internals` names any that this route uses and this ComfyUI lacks
(probed in nodes/runtime/comfy_compat.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator

import torch
from PIL import Image

from comfy.text_encoders import llama

from ..runtime.comfy_compat import QWEN_VL_MISSING

from ...model.vlm.image import pil_to_image_tensor
from ...model.vlm.prompt import IMAGE_PAD_ID, keep_mask, zero_outputs_where_masked

QWEN_ENCODER_KEY = "qwen25_7b"  # attribute of the text encoder and tokenizer (comfy/text_encoders/qwen_image.py)
# Window-order probe: a ViT without blocks on a grid larger than one 112-pixel window (4×4 merged).
PROBE_GRID = (1, 16, 16)
PROBE_WIDTH = 8


def comfyui_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:
        return "unknown"
    return __version__


def _incompatible(what: str) -> RuntimeError:
    return RuntimeError(f"Step1X VLM Encode cannot drive this ComfyUI's Qwen2.5-VL (ComfyUI "
                        f"{comfyui_version()}): {what}. Use the Hugging Face folder input instead, or update the "
                        "Step1X-Edit pack.")


def check_comfy_internals() -> None:
    """Raise RuntimeError naming the ComfyUI internals this route uses that this ComfyUI lacks."""
    if QWEN_VL_MISSING:
        raise _incompatible("it lacks " + ", ".join(QWEN_VL_MISSING))


def _describe(clip: Any) -> str:
    encoder = getattr(clip, "cond_stage_model", None)
    if encoder is None:
        return type(clip).__name__
    parts = [f"{name} ({type(getattr(child, 'transformer', child)).__name__})"
             for name, child in encoder.named_children()]
    return f"{type(encoder).__name__} with " + (", ".join(parts) or "no sub-encoders")


def check_qwen25_vl_clip(clip: Any) -> None:
    """Raise ValueError naming what was given unless ``clip`` holds ComfyUI's Qwen2.5-VL-7B."""
    encoder = getattr(getattr(clip, "cond_stage_model", None), QWEN_ENCODER_KEY, None)
    tokenizer = getattr(getattr(clip, "tokenizer", None), QWEN_ENCODER_KEY, None)
    if (not isinstance(getattr(encoder, "transformer", None), llama.Qwen25_7BVLI)
            or not hasattr(tokenizer, "tokenizer")):
        raise ValueError(f"the CLIP input is {_describe(clip)}, not Qwen2.5-VL: Step1X-Edit needs "
                         "Qwen2.5-VL-7B-Instruct loaded with 'Load CLIP' type qwen_image (e.g. "
                         "qwen_2.5_vl_7b_fp8_scaled.safetensors or the bf16 file)")


class PlainTorchOps:
    """torch.nn layers for the throwaway probe ViT: ComfyUI's ops can hand their weights to model management
    (dynamic VRAM keeps them unset until a patcher loads the model), which never loads a probe."""

    Linear = torch.nn.Linear
    Conv3d = torch.nn.Conv3d
    RMSNorm = torch.nn.RMSNorm


@lru_cache(maxsize=None)
def vit_returns_window_order(vit_class: type) -> bool:
    """Whether ``vit_class.forward`` leaves merged tokens in window order (0.3.75) or in raster order.

    A ViT without blocks maps each merged token from its own patches only, so its output is the
    merger of the patch embedding, possibly permuted by the window index.
    """
    generator = torch.Generator().manual_seed(0)
    vit = vit_class(hidden_size=PROBE_WIDTH, output_hidden_size=PROBE_WIDTH, intermediate_size=PROBE_WIDTH,
                    num_heads=1, num_layers=0, ops=PlainTorchOps)
    with torch.no_grad():
        for parameter in vit.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        grid = torch.tensor([PROBE_GRID])
        num_patches = PROBE_GRID[1] * PROBE_GRID[2]
        patch_width = vit.patch_embed.proj.weight[0].numel()
        pixels = torch.randn(num_patches, patch_width, generator=generator)
        out = vit(pixels, grid)
        raster = vit.merger(vit.patch_embed(pixels))
        window_index = vit.get_window_index(grid)[0]
    if torch.allclose(out, raster):
        return False
    if torch.allclose(out, raster[window_index]):
        return True
    raise _incompatible("the vision tower returns its tokens in an unknown order")


@contextmanager
def _raster_order(vit: torch.nn.Module) -> Iterator[None]:
    """Put the ViT's merged tokens back in raster order (HF's ``hidden_states[argsort(window_index)]``)."""
    if not vit_returns_window_order(type(vit)):
        yield
        return

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        window_index = module.get_window_index(args[1])[0]
        return output[torch.argsort(window_index.to(output.device))]

    handle = vit.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class ComfyQwen25VL:
    """Step1X encoding through the Qwen2.5-VL model of a ComfyUI CLIP object."""

    def __init__(self, clip: Any) -> None:
        check_comfy_internals()
        check_qwen25_vl_clip(clip)
        self.clip = clip
        self.encoder = getattr(clip.cond_stage_model, QWEN_ENCODER_KEY)  # SDClipModel
        self.tokenizer = getattr(clip.tokenizer, QWEN_ENCODER_KEY).tokenizer  # transformers Qwen2Tokenizer

    @property
    def hidden_size(self) -> int:
        return self.encoder.transformer.model.config.hidden_size

    def load(self) -> None:
        """Device placement and LoRA patches, through ComfyUI's model management."""
        self.clip.load_model()

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def last_hidden_state(self, ids: torch.Tensor, positions: torch.Tensor, image: Image.Image,
                          flash_padding: bool = True) -> torch.Tensor:
        """Final-norm output [L, D] (float32) for ids [L] (image pads expanded), positions [3, L]."""
        transformer = self.encoder.transformer  # llama.Qwen25_7BVLI
        # Where ComfyUI runs the model (comfy/sd.py CLIP.encode_from_tokens): with dynamic VRAM or partial
        # loading the weights themselves may live elsewhere, or not yet at all.
        device = self.clip.patcher.load_device
        image_slots = (ids == IMAGE_PAD_ID).nonzero().flatten()
        start, count = int(image_slots[0]), image_slots.numel()
        image_item = {"type": "image", "data": pil_to_image_tensor(image), "original_type": "image"}
        tokens = ids[:start].tolist() + [image_item] + ids[start + count:].tolist()
        with _raster_order(transformer.visual):
            embeds, _, _, embeds_info = self.encoder.process_tokens([tokens], device)
        spliced = [(info["index"], info["size"]) for info in embeds_info]
        if spliced != [(start, count)]:
            raise _incompatible(f"the image was spliced as (index, tokens) {spliced}, expected "
                                f"[({start}, {count})]")
        keep = keep_mask(ids)[None].to(device)
        attentions = [layer.self_attn for layer in transformer.model.layers]
        with zero_outputs_where_masked(attentions, keep, flash_padding):
            hidden, _ = transformer.model(None, attention_mask=keep.long(), embeds=embeds,
                                          position_ids=positions.to(device), dtype=torch.float32)
        return hidden[0].float()
