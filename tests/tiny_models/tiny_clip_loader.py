"""Test harness plugin for ComfyUI: lets core *Load CLIP* (type qwen_image) load the tiny Qwen2.5-VL
stand-in of ``text_encoders/qwen_2.5_vl_7b.safetensors`` that make_tiny_weights.py (same folder) writes.

ComfyUI builds its Qwen2.5-VL-7B at the released sizes whatever the file holds (and tells the model
from the file by ``k_proj.bias`` being 512 wide), so a tiny file needs the tiny sizes handed in. The
tiny file carries them in its safetensors metadata (:data:`TINY_CONFIG_KEY`); for such a file
:func:`load_clip` builds ComfyUI's own Qwen2.5-VL classes at those sizes (``model_options``
``qwen25_7b_class``, as comfy/sd1_clip.py ``SD1ClipModel`` reads it) and loads the weights. Every
other file goes to ComfyUI's loader unchanged. Only the test servers and the tiny-weights run of
scripts/run_edit.sh install it (scripts/comfy_server.py ``link_tiny_weights``): never a user's ComfyUI.
"""
from __future__ import annotations

import json

TINY_CONFIG_KEY = "step1x_tiny_qwen25vl_config"   # safetensors metadata: the Hugging Face config.json
QWEN_PAD_ID = 151643   # comfy/text_encoders/qwen_image.py Qwen25_7BVLIModel special_tokens["pad"]


def tiny_qwen_clip(config: dict, state_dict: dict):
    """A ``comfy.sd.CLIP`` holding ComfyUI's Qwen2.5-VL classes at the sizes of ``config`` (a Hugging Face
    Qwen2.5-VL config.json), loaded with ``state_dict`` (ComfyUI's key layout)."""
    import comfy.sd
    import comfy.sd1_clip
    import torch
    from comfy.text_encoders import llama, qwen_image, qwen_vl

    text = config.get("text_config", config)
    vision = config["vision_config"]

    class TinyQwen25VLI(llama.Qwen25_7BVLI):
        def __init__(self, config_dict, dtype, device, operations):
            torch.nn.Module.__init__(self)
            llm = llama.Qwen25_7BVLI_Config(
                vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
                intermediate_size=text["intermediate_size"], num_hidden_layers=text["num_hidden_layers"],
                num_attention_heads=text["num_attention_heads"], num_key_value_heads=text["num_key_value_heads"],
                rms_norm_eps=text["rms_norm_eps"], rope_theta=text["rope_theta"])
            llm.head_dim = text["hidden_size"] // text["num_attention_heads"]
            llm.rope_dims = text["rope_scaling"]["mrope_section"]
            self.num_layers = llm.num_hidden_layers
            self.model = llama.Llama2_(llm, device=device, dtype=dtype, ops=operations)
            self.visual = qwen_vl.Qwen2VLVisionTransformer(
                hidden_size=vision["hidden_size"], output_hidden_size=vision["out_hidden_size"],
                intermediate_size=vision["intermediate_size"], num_heads=vision["num_heads"],
                num_layers=vision["depth"], device=device, dtype=dtype, ops=operations)
            self.visual.fullatt_block_indexes = vision["fullatt_block_indexes"]
            self.dtype = dtype

    class TinyQwen25VLIModel(qwen_image.Qwen25_7BVLIModel):
        def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, attention_mask=True,
                     model_options={}):
            comfy.sd1_clip.SDClipModel.__init__(
                self, device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config={}, dtype=dtype,
                special_tokens={"pad": QWEN_PAD_ID}, layer_norm_hidden_state=False, model_class=TinyQwen25VLI,
                enable_attention_masks=attention_mask, return_attention_masks=attention_mask,
                model_options=model_options)

    class Target:
        params = {}
        clip = qwen_image.te(dtype_llama=torch.float32)
        tokenizer = qwen_image.QwenImageTokenizer

    clip = comfy.sd.CLIP(Target(), model_options={"qwen25_7b_class": TinyQwen25VLIModel})
    missing, unexpected = clip.load_sd({k: v.float() for k, v in state_dict.items()})
    if missing or unexpected:
        raise ValueError(f"tiny Qwen2.5-VL weights do not fit its config: missing {missing}, unexpected {unexpected}")
    return clip


def tiny_config(path: str) -> dict | None:
    """The tiny config a safetensors file carries, or None (any other file)."""
    from safetensors import safe_open

    if not str(path).endswith(".safetensors"):
        return None
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(TINY_CONFIG_KEY)
    return None if text is None else json.loads(text)


async def comfy_entrypoint():
    """ComfyUI's V3 extension entry point: installs :func:`load_clip` and adds no node."""
    import comfy.sd
    import comfy.utils
    from comfy_api.latest import ComfyExtension

    class TinyClipLoader(ComfyExtension):
        async def get_node_list(self) -> list:
            return []

    core_load_clip = comfy.sd.load_clip

    def load_clip(ckpt_paths, *args, **kwargs):
        configs = [tiny_config(path) for path in ckpt_paths]
        if len(ckpt_paths) != 1 or configs[0] is None:
            return core_load_clip(ckpt_paths, *args, **kwargs)
        return tiny_qwen_clip(configs[0], comfy.utils.load_torch_file(ckpt_paths[0], safe_load=True))

    comfy.sd.load_clip = load_clip
    return TinyClipLoader()
