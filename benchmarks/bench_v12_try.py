"""Timing hook for one Step1X-Edit v1.2 reasoning-edit try through the pack's real v1.2 code path.

Unlike bench_reasoning.py (random weights, the batched v1.1 sampler), this runs what the nodes run:
``encode_v12`` for instruction and negative, ``sample_per_branch`` (two DiT calls per step), and the
thinker's judge with real generation. The FLUX VAE is not included (a random reference latent of the
right size stands in; the VAE is a few percent of a try). Call :func:`time_v12_try` with loaded
models, or on the device with the release folder:

    python benchmarks/bench_v12_try.py --pipeline /models/Step1X-Edit-v1p2 --image photo.png \
        --instruction 'Put a sign saying "OPEN" on the door' [--size-level 1024] [--fp8]

Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import fp8_rowwise  # noqa: E402
from benchmarks.bench_dit import timed  # noqa: E402
from tests.unit.vlm_support import import_pack_module  # noqa: E402


def time_v12_try(dit, runner, image: Image.Image, instruction: str, *, size_level: int = 1024, steps: int = 28,
                 cfg: float = 6.0, seed: int = 42, judge: bool = True) -> dict[str, float]:
    """Seconds per phase of one try: ``encode`` (2 rows), ``sample`` (``steps`` × 2 DiT calls), ``judge``
    (description, consistency, reflection, two scores; one attempt each) and ``total``.

    ``dit``: a loaded v1.2 ``Step1XEdit`` on its device (its dtype is the compute dtype);
    ``runner``: a loaded ``HFQwen25VLV12``.
    """
    encode_mod, branch, sampling, thinker = (import_pack_module(m) for m in (
        "model.vlm.v12_encode", "model.dit.branch_sampling", "model.dit.sampling", "model.reasoning.thinker"))
    device = next(dit.parameters()).device
    vlm_image = encode_mod.vlm_source_image(image, size_level)
    (cond, uncond), t_encode = timed(lambda: (encode_mod.encode_v12(runner, instruction, vlm_image).branch_text(),
                                               encode_mod.encode_v12(runner, "", vlm_image).branch_text()), device)
    latent_h, latent_w = vlm_image.height // sampling.VAE_DOWNSCALE, vlm_image.width // sampling.VAE_DOWNSCALE
    noise = sampling.make_noise(seed, 1, latent_h, latent_w)
    ref = sampling.make_noise(seed + 1, 1, latent_h, latent_w)
    schedule = sampling.get_schedule(steps, (latent_h // 2) * (latent_w // 2))
    _, t_sample = timed(lambda: branch.sample_per_branch(
        dit, noise, ref, cond, uncond, schedule, cfg, dit.params.switches.renorm_threshold,
        next(dit.parameters()).dtype, device), device)
    timings = {"encode": t_encode, "sample": t_sample, "judge": 0.0}
    if judge:
        judge_thinker = thinker.Thinker(lambda request: runner.generate(request, seed), max_attempts=1)
        _, timings["judge"] = timed(lambda: judge_thinker.judge(image, image, instruction), device)
    timings["total"] = sum(timings.values())
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", type=Path, required=True, help="the Step1X-Edit-v1p2 folder")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--instruction", required=True)
    parser.add_argument("--size-level", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--fp8", action="store_true", help="DiT blocks in float8 (benchmarks/fp8_rowwise.py operations)")
    args = parser.parse_args()
    device = torch.device("cuda")
    loader, hf = import_pack_module("model.weights.loader"), import_pack_module("nodes.encoders.vlm_v12_hf")
    kwargs = {}
    if args.fp8:
        kwargs = {"operations": fp8_rowwise.fp8_ops, "fp8_storage": True}
    dit, _ = loader.load_step1x_dit(str(args.pipeline), dtype=torch.bfloat16, device=device, **kwargs)
    runner = hf.HFQwen25VLV12.from_folders(hf.locate_v12_text_encoder(args.pipeline), torch.bfloat16, device)
    image = Image.open(args.image).convert("RGB")
    with torch.no_grad():
        time_v12_try(dit.eval(), runner, image, args.instruction, size_level=args.size_level, steps=2)  # warm-up
        print(json.dumps(time_v12_try(dit, runner, image, args.instruction, size_level=args.size_level,
                                      steps=args.steps), indent=1))


if __name__ == "__main__":
    main()
