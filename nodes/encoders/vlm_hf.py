"""Route 2: Qwen2.5-VL from a Hugging Face folder, run through transformers (``Qwen2_5_VLForConditionalGeneration``;
checked with transformers 5.x).

The image is sized and patchified by the pack (``model.vlm.image``): transformers 5's processor
resizes differently from the 4.49 one the reference used. Positions are computed by the pack
(``model.vlm.prompt.mrope_positions``) and passed in, which also fixes transformers 5's text-only
positions when ``mm_token_type_ids`` is missing; ``mm_token_type_ids`` is passed as well.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from PIL import Image

from ...model.vlm.image import qwen2vl_pixel_values
from ...model.vlm.prompt import IMAGE_PAD_ID, keep_mask, zero_outputs_where_masked

logger = logging.getLogger(__name__)

QWEN25_VL_MODEL_TYPE = "qwen2_5_vl"  # config.json "model_type" of Qwen2.5-VL checkpoints
REQUIRED_FILES = ("config.json", "tokenizer_config.json")


def check_hf_folder(folder: Path) -> None:
    """Raise a ValueError naming the problem if ``folder`` is not a Qwen2.5-VL HF folder."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a Hugging Face model folder (missing {', '.join(missing)}); "
                         "Step1X-Edit needs Qwen/Qwen2.5-VL-7B-Instruct")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} has no .safetensors weights; Step1X-Edit needs Qwen2.5-VL-7B-Instruct "
                         "in safetensors format")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != QWEN25_VL_MODEL_TYPE:
        raise ValueError(f"{folder} holds a '{model_type}' model; Step1X-Edit needs Qwen2.5-VL "
                         f"(model_type '{QWEN25_VL_MODEL_TYPE}', e.g. Qwen/Qwen2.5-VL-7B-Instruct)")


class HFQwen25VL:
    """Qwen2.5-VL-7B-Instruct (or a tiny test model) loaded from a Hugging Face folder."""

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        self.model = model  # transformers Qwen2_5_VLForConditionalGeneration
        self.tokenizer = tokenizer

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: torch.dtype = torch.bfloat16,
                    device: torch.device | str = "cpu") -> "HFQwen25VL":
        folder = Path(folder)
        check_hf_folder(folder)
        return cls.load(folder, folder, dtype, device)

    @classmethod
    def load(cls, model_folder: Path, tokenizer_folder: Path, dtype: torch.dtype, device: torch.device | str):
        """transformers' Qwen2.5-VL (SDPA attention, frozen, eval) and its tokenizer."""
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_folder, dtype=dtype, attn_implementation="sdpa").to(device)
        model.requires_grad_(False).eval()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
        logger.info("loaded %s Qwen2.5-VL from %s (%s, %s)", cls.__name__, model_folder, dtype, device)
        return cls(model, tokenizer)

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def last_hidden_state(self, ids: torch.Tensor, positions: torch.Tensor, image: Image.Image,
                          flash_padding: bool = True) -> torch.Tensor:
        """Final-norm output [L, D] (float32) for ids [L] and M-RoPE positions [3, L]."""
        device = self.model.device
        dtype = self.model.dtype
        pixel_values, grid_thw = qwen2vl_pixel_values(image)
        keep = keep_mask(ids)[None].to(device)
        language_model = self.model.model.language_model
        attentions = [layer.self_attn for layer in language_model.layers]
        with zero_outputs_where_masked(attentions, keep, flash_padding):
            out = self.model.model(
                input_ids=ids[None].to(device),
                attention_mask=keep.long(),
                position_ids=positions[:, None, :].to(device),
                pixel_values=pixel_values.to(device, dtype),
                image_grid_thw=grid_thw.to(device),
                mm_token_type_ids=(ids == IMAGE_PAD_ID).long()[None].to(device),
                use_cache=False,
            )
        return out.last_hidden_state[0].float()
