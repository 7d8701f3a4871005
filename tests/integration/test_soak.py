"""Many edits in a row on one server: every result arrives, and memory stays flat after warm-up.

Each edit is the shipped edit workflow at one step with its own seed, so ComfyUI's cache cannot skip the
sampler, the decode or the save (the encoder and the reference latent are cached, as in real use). The
reference is core's ImageScale + VAE Encode at 64×64 instead of Pack Ref Latent's 256² minimum: the
full-width FLUX VAE's decode is most of an edit's time on the CPU, and 64² keeps 50 edits near a minute
on 2 cores.
"""
from __future__ import annotations

from PIL import Image
from workflow_files import edit_prompt, node_id_of, set_inputs

SOAK_EDITS = 50
WARMUP_EDITS = 10   # first model loads, allocator pools and ComfyUI's caches fill up here
SOAK_SIDE = 64      # px, the edit's working size
SEED_BASE = 5000
RUN_TIMEOUT_S = 600
MIB = 1024**2
# Resident-memory growth allowed over the 40 edits after warm-up. Measured on 2 CPU cores: under 1 MiB
# (RSS grows in allocator steps, not per edit). 64 MiB is 1.6 MiB per edit: less than one of the decode's
# 64×64×128 float32 activations (2 MiB) kept per edit, and far less than a model copy kept per edit
# (the FLUX VAE alone is 160 MiB).
RSS_GROWTH_LIMIT_MIB = 64
# Allocated GPU memory (PyTorch's active bytes: /system_stats torch_vram_total − torch_vram_free) allowed to
# grow after warm-up, on a CUDA server: the models stay loaded and an edit's activations are freed, so the
# same reasoning and bound apply.
GPU_GROWTH_LIMIT_MIB = 64


def soak_prompt(seed: int) -> dict:
    """The edit workflow at one step, with a 64×64 reference from core ImageScale + VAE Encode."""
    prompt = edit_prompt(steps=1, seed=seed)
    load, vae = node_id_of(prompt, "LoadImage"), node_id_of(prompt, "VAELoader")
    del prompt[node_id_of(prompt, "Step1XPackRefLatent")]
    prompt["20"] = {"class_type": "ImageScale", "inputs": {"image": [load, 0], "upscale_method": "bilinear",
                                                           "width": SOAK_SIDE, "height": SOAK_SIDE, "crop": "disabled"}}
    prompt["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": [vae, 0]}}
    return set_inputs(prompt, "Step1XSampler", ref_latent=["21", 0])


def gpu_allocated_bytes(client) -> int | None:
    """PyTorch's allocated bytes on the server's device, or None when it runs on the CPU."""
    device = client.get_json("/system_stats")["devices"][0]
    if device["type"] != "cuda":
        return None
    return device["torch_vram_total"] - device["torch_vram_free"]


def run_edits(client, base_dir, seeds: range) -> list[str]:
    """Queue an edit per seed at once, wait for each; every one must save one 64×64 image."""
    prompt_ids = [client.queue(soak_prompt(seed)) for seed in seeds]
    saved = []
    for prompt_id in prompt_ids:
        history = client.wait(prompt_id, RUN_TIMEOUT_S)
        images = [image for output in history["outputs"].values() for image in output.get("images", [])]
        assert len(images) == 1, f"prompt {prompt_id} saved {len(images)} images"
        path = base_dir / "output" / images[0]["subfolder"] / images[0]["filename"]
        with Image.open(path) as image:
            assert image.size == (SOAK_SIDE, SOAK_SIDE), f"{path}: {image.size}"
        saved.append(str(path))
    return saved


def test_many_edits_in_a_row_all_arrive_without_memory_growth(server, client, base_dir):
    saved = run_edits(client, base_dir, range(SEED_BASE, SEED_BASE + WARMUP_EDITS))
    rss_after_warmup, gpu_after_warmup = server.resident_memory_bytes(), gpu_allocated_bytes(client)
    saved += run_edits(client, base_dir, range(SEED_BASE + WARMUP_EDITS, SEED_BASE + SOAK_EDITS))
    rss_growth = (server.resident_memory_bytes() - rss_after_warmup) / MIB
    assert len(set(saved)) == SOAK_EDITS
    assert server.alive(), f"the server died:\n{server.log_tail()}"
    assert rss_growth < RSS_GROWTH_LIMIT_MIB, (
        f"the server's resident memory grew by {rss_growth:.0f} MiB over {SOAK_EDITS - WARMUP_EDITS} edits")
    if gpu_after_warmup is not None:
        gpu_growth = (gpu_allocated_bytes(client) - gpu_after_warmup) / MIB
        assert gpu_growth < GPU_GROWTH_LIMIT_MIB, (
            f"allocated GPU memory grew by {gpu_growth:.0f} MiB over {SOAK_EDITS - WARMUP_EDITS} edits")
