"""Bad inputs: each one is answered with a clear message in ComfyUI's error response, and the server
keeps serving (the next good prompt runs).

| input                                  | where it is caught                 | message names            |
| -------------------------------------- | ---------------------------------- | ------------------------ |
| a FLUX-style DiT, not Step1X-Edit      | Load Step1X Model (execution)      | the family, the fix      |
| a truncated checkpoint                 | Load Step1X Model (execution)      | truncated, download again|
| a checkpoint with a gap in its blocks  | Load Step1X Model (execution)      | the missing blocks       |
| a checkpoint with NaN weights          | Step1X Sampler (execution, at end) | NaN, the likely causes   |
| a missing model file                   | Load Step1X Model validation (400) | the file, the folder     |
| a VAE that is not the FLUX VAE (TAESD) | Pack Ref Latent (execution)        | FLUX VAE                 |
| a text encoder that is not Qwen2.5-VL  | VLM Encode (execution)             | Qwen2.5-VL               |
| an image under 16 px                   | Pack Ref Latent (execution)        | at least 16 px           |
| an image over 16384 px                 | Pack Ref Latent (execution)        | the limit                |
| steps 0                                | ComfyUI validation (HTTP 400)      | steps, the minimum       |
| cfg NaN                                | Step1X Sampler validation (400)    | finite                   |
| mismatched batch sizes                 | Step1X Sampler (execution)         | batch sizes              |
"""
from __future__ import annotations

import math
import uuid

import pytest
from bad_files import GAPPED_DIT, NAN_DIT, TEXT_ONLY_ENCODER, TRUNCATED_DIT, WRONG_FAMILY_DIT
from PIL import Image
from queue_edit import ComfyError
from workflow_files import edit_prompt, load_api, node_id_of, quick, set_inputs

RUN_TIMEOUT_S = 300


def write_input_image(base_dir, width: int, height: int) -> str:
    name = f"bad_{width}x{height}_{uuid.uuid4().hex[:6]}.png"
    Image.new("RGB", (width, height), (120, 80, 40)).save(base_dir / "input" / name)
    return name


def pack_only_prompt(image: str, vae: str = "ae.safetensors") -> dict:
    """LoadImage → Pack Ref Latent → Unpack/Decode → SaveImage: the image checks without the encoder."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "3": {"class_type": "Step1XPackRefLatent",
              "inputs": {"image": ["1", 0], "vae": ["2", 0], "size_level": 256, "resize_filter": "lanczos"}},
        "4": {"class_type": "Step1XUnpackDecode", "inputs": {"samples": ["3", 0], "vae": ["2", 0],
                                                             "output_size": "original"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"bad/{uuid.uuid4().hex}"}},
    }


def with_checkpoint(name: str) -> dict:
    return set_inputs(edit_prompt(), "Step1XModelLoader", ckpt_name=name)


def with_batches(image_batch: int, reference_batch: int) -> dict:
    """The instruction is encoded for a batch of image_batch, the reference for reference_batch."""
    prompt = edit_prompt()
    load = node_id_of(prompt, "LoadImage")
    prompt["20"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [load, 0], "amount": image_batch}}
    prompt["21"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [load, 0], "amount": reference_batch}}
    set_inputs(prompt, "Step1XVLMEncode", image=["20", 0])
    return set_inputs(prompt, "Step1XPackRefLatent", image=["21", 0])


# (case, prompt builder taking the base dir, words the server's message must contain)
EXECUTION_ERRORS = [
    ("wrong checkpoint family", lambda base: with_checkpoint(WRONG_FAMILY_DIT), ["not a Step1X-Edit DiT", "FLUX"]),
    ("truncated checkpoint", lambda base: with_checkpoint(TRUNCATED_DIT), ["truncated", "download"]),
    ("checkpoint with a gap in its blocks", lambda base: with_checkpoint(GAPPED_DIT),
     ["(Step1XModelLoader) failed", f"{GAPPED_DIT} is damaged: single_blocks 0 is missing", "Download the file again"]),
    ("checkpoint with NaN weights", lambda base: with_checkpoint(NAN_DIT),
     ["(Step1XSampler) failed", "NaN or infinite values, first after step 1 of 2", "damaged weights",
      "fp16 overflow", "a LoRA with bad values"]),
    ("VAE is not the FLUX VAE", lambda base: set_inputs(edit_prompt(), "VAELoader", vae_name="taesd"),
     ["FLUX VAE", "4-channel"]),
    ("text encoder is not Qwen2.5-VL",
     lambda base: set_inputs(quick(load_api("step1x_edit_hf_folder")), "Step1XVLMEncode", hf_folder=TEXT_ONLY_ENCODER),
     ["Qwen2.5-VL"]),
    ("image under 16 px", lambda base: pack_only_prompt(write_input_image(base, 12, 40)), ["12×40", "at least 16"]),
    ("image over the size limit", lambda base: pack_only_prompt(write_input_image(base, 16400, 16)),
     ["16400×16", "16384"]),
    ("mismatched batch sizes", lambda base: with_batches(2, 3), ["batch sizes do not match", "positive 2", "latent 3"]),
]

VALIDATION_ERRORS = [
    ("steps 0", lambda: edit_prompt(steps=0), ["steps", "Value 0 smaller than min of 1"]),
    ("cfg NaN", lambda: edit_prompt(cfg=math.nan), ["cfg must be a finite number"]),
    ("cfg out of range", lambda: edit_prompt(cfg=-1.0), ["cfg must be between 0.0 and 100.0"]),
    # The loader's validate_inputs answers for ckpt_name instead of ComfyUI's "Value not in list".
    ("missing model file", lambda: with_checkpoint("step1x-edit-missing.safetensors"),
     ["step1x-edit-missing.safetensors", "models/diffusion_models", "press R"]),
]


@pytest.mark.parametrize("case, build, words", EXECUTION_ERRORS, ids=[c[0] for c in EXECUTION_ERRORS])
def test_bad_input_fails_its_node_with_a_clear_message(client, base_dir, case, build, words):
    with pytest.raises(ComfyError) as failure:
        client.run(build(base_dir), RUN_TIMEOUT_S)
    message = str(failure.value)
    for word in words:
        assert word in message, f"{case}: '{word}' not in the server's message:\n{message}"
    assert "Traceback" not in message


@pytest.mark.parametrize("case, build, words", VALIDATION_ERRORS, ids=[c[0] for c in VALIDATION_ERRORS])
def test_bad_input_is_refused_before_running(client, case, build, words):
    with pytest.raises(ComfyError) as refusal:
        client.queue(build())
    message = str(refusal.value)
    for word in words:
        assert word in message, f"{case}: '{word}' not in the server's answer:\n{message}"


def test_combined_conditioning_is_refused_with_the_fix(client):
    """Core conditioning nodes that merge entries break the one-embedding-per-row contract."""
    prompt = edit_prompt()
    encode = node_id_of(prompt, "Step1XVLMEncode")
    prompt["30"] = {"class_type": "ConditioningSetTimestepRange",
                    "inputs": {"conditioning": [encode, 0], "start": 0.0, "end": 1.0}}
    prompt["31"] = {"class_type": "ConditioningCombine",
                    "inputs": {"conditioning_1": [encode, 0], "conditioning_2": ["30", 0]}}
    set_inputs(prompt, "Step1XSampler", positive=["31", 0])
    with pytest.raises(ComfyError) as failure:
        client.run(prompt, RUN_TIMEOUT_S)
    assert "connect the VLM Encode output directly" in str(failure.value)


def test_server_still_runs_a_good_prompt_after_the_bad_ones(client):
    history = client.run(edit_prompt(seed=7), RUN_TIMEOUT_S)
    assert history["status"]["status_str"] == "success"
