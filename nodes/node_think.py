"""Step1X Think: v1.2's instruction rewriter as a node (image + instruction → clearer instruction).

The release's thinking mode (``Step1XEditThinker``, ``enable_thinking_mode``): one generation with the
rewriting prompt; the answer replaces the instruction. Feed the STRING to Step1X v1.2 VLM Encode (or read it).
"""
from __future__ import annotations

from comfy_api.latest import io

from ..model.reasoning.thinker import MalformedAnswer, Thinker
from ..model.vlm.image import image_tensor_to_pil
from .encoders.v12_vlm import V12VLM, SeededVLM, Step1XVLM
from .runtime.common import CATEGORY, DEFAULT_SEED, MAX_SEED


class Step1XThink(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Step1XThink",
            display_name="Step1X Think",
            category=CATEGORY,
            description="v1.2 thinking: the release's Qwen2.5-VL rewrites a vague or colloquial instruction into a "
                        "clear one (at most three actions, text to change in double quotes, in the instruction's "
                        "language), looking at the image. Sampled (top-p 0.9, temperature 0.7, ≤128 tokens), seeded.",
            inputs=[
                Step1XVLM.Input("vlm", tooltip="From Load Step1X-Edit v1.2."),
                io.Image.Input("image", tooltip="The image the instruction is about (first frame of a batch)."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="The instruction to rewrite, e.g. 'make this look like winter'."),
                io.Int.Input("seed", default=DEFAULT_SEED, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Sampling seed: one seed, one answer."),
            ],
            outputs=[io.String.Output(display_name="instruction", tooltip="The rewritten instruction.")],
        )

    @classmethod
    def execute(cls, vlm: V12VLM, image, instruction: str, seed: int) -> io.NodeOutput:
        thinker = Thinker(SeededVLM(vlm, seed))
        try:
            return io.NodeOutput(thinker.think(image_tensor_to_pil(image[0]), instruction))
        except MalformedAnswer as error:
            raise ValueError(f"Step1X Think: {error}. Try another seed.") from None
