"""The pack's node list, handed to ComfyUI through ``comfy_entrypoint`` (V3 extension API)."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .node_core_sampling import Step1XCoreSamplerSetup
from .node_latent import Step1XPackRefLatent, Step1XUnpackDecode
from .node_loader import Step1XModelLoader
from .node_lora import Step1XLoraLoader
from .node_reasoning_edit import Step1XReasoningEdit
from .node_sampler import Step1XSampler
from .node_teacache import Step1XTeaCache
from .node_think import Step1XThink
from .node_v12 import Step1XV12Encode, Step1XV12Loader
from .node_vlm_encode import Step1XVLMEncode

NODES: list[type[io.ComfyNode]] = [
    Step1XModelLoader, Step1XVLMEncode, Step1XPackRefLatent, Step1XSampler, Step1XUnpackDecode,
    Step1XLoraLoader, Step1XCoreSamplerSetup, Step1XTeaCache,
    Step1XV12Loader, Step1XV12Encode, Step1XThink, Step1XReasoningEdit,
]


class Step1XEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> Step1XEditExtension:
    return Step1XEditExtension()
