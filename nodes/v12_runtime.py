"""ComfyUI runtime of Step1X-Edit v1.2: its own VLM as a managed model, v1.2 conditioning, one edit.

The node files (node_v12.py, node_think.py, node_reasoning_edit.py) are thin; what they share lives
here: the ``STEP1X_VLM`` handle (a Qwen2.5-VL folder, loaded on first use as a ComfyUI-managed model
so model_management offloads it when the DiT needs the memory), the v1.2 conditioning layout, and
:class:`V12Editor`, the release's single edit (``encode_prompt`` → ``__call__``, sampled by Step1X Sampler's runner,
nodes/cfg_guider.py) used as the reasoning loop's ``edit`` callable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import torch
from comfy_api.latest import io
from PIL import Image

from ..model.checkpoint_folder import INDEX_SUFFIX, TRANSFORMER_SUBFOLDER
from ..model.image_io import OUTPUT_RESAMPLE, resize_unit_to_size_level, unit_to_uint8
from ..model.params import VERSIONS
from ..model.sampling import LATENT_CHANNELS
from ..model.vlm_image import pil_to_image_tensor
from ..model.vlm_v12_encode import V12Encoding, encode_v12, vlm_source_image
from .cfg_guider import sample_step1x
from .common import CONDITIONING_MARKER, TEXT_EMBEDS_KEY, TEXT_MASK_KEY, TXT_IDS_KEY, V12_RELEASE
from .native_model import is_step1x_model, needs_v12_model_message
from .vlm_v12_hf import HFQwen25VLV12, V12TextEncoderFolders

_vlm_patchers: dict[tuple[str, torch.dtype], comfy.model_patcher.ModelPatcher] = {}

V12_SIZE_LEVEL = 1024  # the v1.2 pipeline's default size_level (``Step1XEditPipelineV1P2.__call__``)
# The v1.2 VLM between nodes (Load Step1X-Edit v1.2 → v1.2 VLM Encode, Think, Reasoning Edit).
Step1XVLM = io.Custom("STEP1X_VLM")



class _VLMHolder(torch.nn.Module):
    """What ModelPatcher manages: it sets ``.device`` on its model, which a transformers model forbids."""

    def __init__(self, runner: HFQwen25VLV12) -> None:
        super().__init__()
        self.qwen25_vl = runner.model
        self.runner = runner
        self.device = None


@dataclass(frozen=True)
class V12VLM:
    """The ``STEP1X_VLM`` value: where v1.2's own Qwen2.5-VL lives; loaded when a node first needs it."""

    folders: V12TextEncoderFolders

    def runner(self) -> HFQwen25VLV12:
        """The loaded model on ComfyUI's text-encoder device (cached; one v1.2 VLM in memory at a time)."""
        load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
        dtype = torch.bfloat16 if mm.should_use_bf16(load_device) else torch.float32
        key = (str(self.folders.model), dtype)
        if key not in _vlm_patchers:
            _vlm_patchers.clear()
            runner = HFQwen25VLV12.from_folders(self.folders, dtype=dtype, device=offload_device)
            _vlm_patchers[key] = comfy.model_patcher.ModelPatcher(_VLMHolder(runner), load_device=load_device,
                                                                  offload_device=offload_device)
        patcher = _vlm_patchers[key]
        mm.load_models_gpu([patcher], force_full_load=True)
        return patcher.model.runner


def to_conditioning(encoding: V12Encoding) -> list:
    """A v1.2 encoding as ComfyUI CONDITIONING: ``[[embedding [1, V, D], {mask, marker, v1.2 extras}]]``."""
    device = mm.intermediate_device()
    return [[encoding.embedding.to(device), {
        "attention_mask": encoding.mask.to(device), CONDITIONING_MARKER: V12_RELEASE,
        TXT_IDS_KEY: encoding.txt_ids.to(device), TEXT_EMBEDS_KEY: encoding.text_embeds.to(device),
        TEXT_MASK_KEY: encoding.text_mask.to(device)}]]


def check_v12_model(model) -> None:
    version = model.model.diffusion_model.params.version if is_step1x_model(model) else "not Step1X-Edit"
    if version != V12_RELEASE:
        raise ValueError(needs_v12_model_message(version))


def vae_pixels(image: Image.Image, size_level: int) -> torch.Tensor:
    """The v1.2 VAE input as a ComfyUI IMAGE ``[1, h, w, 3]``: torch bilinear with antialias on [0, 1]
    floats to the size-level size (``encode_image``; unlike the VLM's LANCZOS copy)."""
    return resize_unit_to_size_level(pil_to_image_tensor(image), size_level)


def decoded_to_pil(decoded: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """VAE output (IMAGE, 0..1) → 8-bit by the release's rounding, resized back to ``size`` with PIL's
    default filter, bicubic (``_output_process_image``)."""
    pixels = unit_to_uint8(decoded[0, ..., :3], VERSIONS[V12_RELEASE].output_rounding).cpu().numpy()
    image = Image.fromarray(pixels)
    return image if image.size == size else image.resize(size, OUTPUT_RESAMPLE)


@dataclass
class V12Editor:
    """The release's single edit (``encode_image`` → ``encode_prompt`` ×2 → sampling → decode → resize back)
    as the reasoning loop's ``edit(image, prompt, negative_prompt) -> image``.

    Noise comes from one CPU generator seeded once, so later tries draw new noise (as in the release) and the
    first try equals a plain edit with the same seed.
    """

    model: object
    vlm: V12VLM
    vae: object
    size_level: int
    seed: int
    steps: int
    cfg: float
    threshold: float
    generator: torch.Generator = field(init=False)

    def __post_init__(self):
        self.generator = torch.Generator("cpu").manual_seed(self.seed)

    def encode(self, image: Image.Image, prompt: str, negative_prompt: str) -> tuple[list, list]:
        """The instruction's and the negative prompt's v1.2 CONDITIONING."""
        runner = self.vlm.runner()
        vlm_image = vlm_source_image(image, self.size_level)
        return (to_conditioning(encode_v12(runner, prompt, vlm_image)),
                to_conditioning(encode_v12(runner, negative_prompt, vlm_image)))

    def __call__(self, image: Image.Image, prompt: str, negative_prompt: str) -> Image.Image:
        positive, negative = self.encode(image, prompt, negative_prompt)
        ref_latent = self.vae.encode(vae_pixels(image, self.size_level))
        _, _, latent_h, latent_w = ref_latent.shape
        noise = torch.randn((1, LATENT_CHANNELS, latent_h, latent_w), generator=self.generator, dtype=torch.float32)
        latent = sample_step1x(self.model, positive, negative, ref_latent, noise, self.steps, self.cfg, self.threshold,
                               seed=self.seed)
        return decoded_to_pil(self.vae.decode(latent), image.size)


def list_model_folders(roots: list[str]) -> list[str]:
    """Sub-folders (up to two levels deep) of ``roots`` that hold a diffusers DiT: a pipeline folder
    (with ``transformer/``), or a lone folder of shards with their index (not a listed pipeline's own
    ``transformer/``)."""
    found = set()
    for root in roots:
        root_path = Path(root)
        if not root_path.is_dir():
            continue
        for folder in sorted(p for p in [*root_path.glob("*"), *root_path.glob("*/*")] if p.is_dir()):
            pipeline = (folder / TRANSFORMER_SUBFOLDER).is_dir()
            inside_pipeline = folder.name == TRANSFORMER_SUBFOLDER and folder.parent != root_path
            if pipeline or (not inside_pipeline and any(folder.glob("*" + INDEX_SUFFIX))):
                found.add(folder.relative_to(root_path).as_posix())
    return sorted(found)



class SeededVLM:
    """The thinker's ``generate(request)``: v1.2's VLM with seeds ``seed, seed+1, …`` per call, so one seed
    gives one result; loaded again before each call (the DiT may have pushed it off the GPU)."""

    SEED_SPACE = 2**64

    def __init__(self, vlm: V12VLM, seed: int):
        self.vlm = vlm
        self.seed = seed
        self.calls = 0

    def __call__(self, request) -> str:
        mm.throw_exception_if_processing_interrupted()
        answer = self.vlm.runner().generate(request, (self.seed + self.calls) % self.SEED_SPACE)
        self.calls += 1
        return answer
