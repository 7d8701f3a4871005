"""Step1X-Edit v1.2's own Qwen2.5-VL (the pipeline's ``text_encoder/``) through transformers.

v1.2 ships its Qwen2.5-VL inside the diffusers pipeline folder and the release encodes and thinks
with that model (the pipeline's ``text_encoder``). Whether its weights differ from stock Qwen2.5-VL-7B-Instruct
cannot be told from the code, so a stock Qwen is never used in its place. Files cannot prove where
weights came from either; :func:`locate_v12_text_encoder` uses the layout the release ships:

* accepted: a folder whose ``model_index.json`` names a ``Step1XEdit…`` pipeline (use its
  ``text_encoder/`` and, for the tokenizer, ``processor/``), or such a folder's ``text_encoder/``
  itself; also a Qwen2.5-VL folder whose ``config.json`` ``_name_or_path`` mentions Step1X;
* refused, with a message naming the folder to use: anything else that holds a Qwen2.5-VL, e.g.
  ``Qwen/Qwen2.5-VL-7B-Instruct`` (config, tokenizer and weights side by side, no Step1X pipeline
  around it).

Importable without ComfyUI; transformers is imported when a model is loaded.
"""
from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ...model.reasoning import thinker_prompts as prompts
from ...model.vlm.image import FETCH_MAX_PIXELS, FETCH_MIN_PIXELS, qwen2vl_pixel_values, smart_resize
from ...model.vlm.prompt import IMAGE_PAD_ID
from ...model.vlm.v12_encode import V12Runner
from ...model.vlm.v12_prompt import IMAGE_PAD_TOKEN
from .vlm_hf import QWEN25_VL_MODEL_TYPE, HFQwen25VL

logger = logging.getLogger(__name__)

PIPELINE_INDEX = "model_index.json"  # diffusers pipeline folder marker
PIPELINE_CLASS_KEY = "_class_name"
STEP1X_PIPELINE_PREFIX = "Step1XEdit"  # Step1XEditPipeline (v1.1-diffusers), Step1XEditPipelineV1P2 (v1.2)
STEP1X_NAME_MARK = "step1x"
TEXT_ENCODER_SUBFOLDER = "text_encoder"
TOKENIZER_SUBFOLDERS = ("processor", "tokenizer")  # where diffusers pipelines keep the tokenizer files
TOKENIZER_FILE = "tokenizer_config.json"
V12_FOLDER_HINT = "Step1X-Edit-v1p2"  # the release's folder name on the Hub
# The thinker's processor (QwenGenerativeAIClient): 512²…802816 pixels per image, after
# qwen_vl_utils' own fetch resize (its defaults, FETCH_*). Both resizes are PIL bicubic.
THINKER_MIN_PIXELS = 512 * 512
THINKER_MAX_PIXELS = 802816
MERGE = 2  # 2×2 patches per merged (LLM) token


@dataclass(frozen=True)
class V12TextEncoderFolders:
    model: Path  # config.json + safetensors of the Qwen2.5-VL
    tokenizer: Path  # tokenizer files (the pipeline's processor/)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _is_step1x_pipeline(folder: Path) -> bool:
    return str(_json(folder / PIPELINE_INDEX).get(PIPELINE_CLASS_KEY, "")).startswith(STEP1X_PIPELINE_PREFIX)


def _tokenizer_folder(pipeline: Path | None, model: Path) -> Path:
    candidates = [pipeline / name for name in TOKENIZER_SUBFOLDERS] if pipeline else []
    for folder in [*candidates, model]:
        if (folder / TOKENIZER_FILE).is_file():
            return folder
    raise ValueError(f"no tokenizer next to {model}: Step1X-Edit v1.2 keeps it in the pipeline's "
                     f"{TOKENIZER_SUBFOLDERS[0]}/ folder; download that folder too")


def _stock_qwen_message(folder: Path) -> str:
    return (f"{folder} is a stock Qwen2.5-VL ({QWEN25_VL_MODEL_TYPE} model with no Step1X-Edit pipeline around "
            f"it). Step1X-Edit v1.2 encodes and reasons with its own Qwen2.5-VL: use the {TEXT_ENCODER_SUBFOLDER}/ "
            f"folder of the v1.2 release, i.e. point this input at the {V12_FOLDER_HINT} folder (the one holding "
            f"{PIPELINE_INDEX}, {TEXT_ENCODER_SUBFOLDER}/ and {TOKENIZER_SUBFOLDERS[0]}/) or at its "
            f"{TEXT_ENCODER_SUBFOLDER}/ subfolder.")


def locate_v12_text_encoder(path: str | Path) -> V12TextEncoderFolders:
    """The v1.2 text encoder for a user-given folder, or a ValueError that names the folder to use."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder. Point this input at the {V12_FOLDER_HINT} folder.")
    if _is_step1x_pipeline(folder):
        model = folder / TEXT_ENCODER_SUBFOLDER
        if not (model / "config.json").is_file():
            raise ValueError(f"{folder} is a Step1X-Edit pipeline folder without {TEXT_ENCODER_SUBFOLDER}/config.json; "
                             f"download its {TEXT_ENCODER_SUBFOLDER}/ folder")
        return V12TextEncoderFolders(model, _tokenizer_folder(folder, model))
    config = _json(folder / "config.json")
    if config.get("model_type") != QWEN25_VL_MODEL_TYPE:
        raise ValueError(f"{folder} holds no Qwen2.5-VL (config.json model_type {config.get('model_type')!r}). "
                         f"Point this input at the {V12_FOLDER_HINT} folder.")
    if _is_step1x_pipeline(folder.parent):
        return V12TextEncoderFolders(folder, _tokenizer_folder(folder.parent, folder))
    if STEP1X_NAME_MARK in str(config.get("_name_or_path", "")).lower():
        return V12TextEncoderFolders(folder, _tokenizer_folder(None, folder))
    raise ValueError(_stock_qwen_message(folder))


def thinker_pixels(image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """A thinker image as the release's client feeds it: thumbnail (≤ 1024), fetch resize, processor resize.

    Returns pixel_values ``[(H/14)(W/14), 1176]`` and grid_thw ``[1, 3]``.
    """
    image = prompts.thumbnail_for_vlm(image)
    height, width = smart_resize(image.height, image.width, FETCH_MIN_PIXELS, FETCH_MAX_PIXELS)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    height, width = smart_resize(height, width, THINKER_MIN_PIXELS, THINKER_MAX_PIXELS)
    return qwen2vl_pixel_values(image.resize((width, height), Image.Resampling.BICUBIC))


class HFQwen25VLV12(HFQwen25VL, V12Runner):
    """A Qwen2.5-VL run in the v1.2 way: explicit M-RoPE positions, no attention mask, features split out."""

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        super().__init__(model, tokenizer)
        self.special_tokens = sorted({token.content for token in tokenizer.added_tokens_decoder.values()}
                                     | set(getattr(tokenizer, "additional_special_tokens", None) or []))

    @classmethod
    def from_folders(cls, folders: V12TextEncoderFolders, dtype: torch.dtype = torch.bfloat16,
                     device: torch.device | str = "cpu") -> "HFQwen25VLV12":
        return cls.load(folders.model, folders.tokenizer, dtype, device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.get_input_embeddings()(ids.to(self.device)).float()

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        out = self.model.model.get_image_features(pixel_values.to(self.device, self.model.dtype),
                                                  image_grid_thw=grid_thw.to(self.device))
        return out.pooler_output[0].float()

    @torch.no_grad()
    def language_model(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model.model.language_model(inputs_embeds=embeds[None].to(self.device, self.model.dtype),
                                              position_ids=positions[:, None, :].to(self.device), use_cache=False)
        return out.last_hidden_state[0].float()

    def _prompt_ids(self, request: prompts.VLMRequest) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Chat ids ``[1, L]`` with each image's pads expanded, and the images' pixel values and grids."""
        messages = prompts.rewrite_image_parts(request.messages)
        text_parts = prompts.chat_text(messages).split(IMAGE_PAD_TOKEN)
        images = [thinker_pixels(image) for image in prompts.request_images(messages)]
        if len(images) != len(text_parts) - 1:
            raise ValueError(f"{request.kind}: {len(images)} images for {len(text_parts) - 1} image places")
        text = text_parts[0]
        for (_, grid), part in zip(images, text_parts[1:]):
            text += IMAGE_PAD_TOKEN * (int(grid.prod()) // MERGE**2) + part
        ids = torch.tensor([self.tokenize(text)])
        return ids, [pixels for pixels, _ in images], [grid for _, grid in images]

    @torch.no_grad()
    def generate(self, request: prompts.VLMRequest, seed: int) -> str:
        """One thinker answer with the release's sampling (top-p 0.9, temperature 0.7, ≤ 128 new tokens;
        anything else from the folder's generation_config, as in the release), seeded: one seed, one answer."""
        ids, pixels, grids = self._prompt_ids(request)
        kwargs = {"input_ids": ids.to(self.device), "attention_mask": torch.ones_like(ids).to(self.device)}
        if pixels:
            kwargs["pixel_values"] = torch.cat(pixels).to(self.device, self.model.dtype)
            kwargs["image_grid_thw"] = torch.cat(grids).to(self.device)
            if "mm_token_type_ids" in inspect.signature(self.model.forward).parameters:  # transformers ≥ 5
                kwargs["mm_token_type_ids"] = (ids == IMAGE_PAD_ID).int().to(self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = self.model.generate(**kwargs, max_new_tokens=prompts.RELEASE_MAX_NEW_TOKENS, do_sample=True,
                                      top_p=prompts.RELEASE_TOP_P, temperature=prompts.RELEASE_TEMPERATURE,
                                      eos_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
