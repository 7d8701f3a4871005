"""One v1.2 reasoning-edit try on one GPU with the 7B VLM and the 12B DiT sharing the card.

A try (the release's reflection loop, ``Step1XEditPipelineV1P2.__call__``) = the thinker rewrites the
instruction (VLM generation with the image), the edit (VLM encode of two rows, 28 DiT steps at 1024²,
CFG) and the judge (VLM generation with both images).
Random full-size weights; generation lengths are fixed (min = max new tokens) because random weights
never stop on their own. Device only:
    python benchmarks/bench_reasoning.py --out DIR [--dit bf16 fp8] [--compile]
Not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_dit import GIB, edit_inputs, quantize_blocks, random_model  # noqa: E402
from benchmarks.bench_pipeline import QWEN_TEXT, QWEN_VISION  # noqa: E402
from model.dit.sampling import sample  # noqa: E402

THINK_IMAGE_TOKENS = 1024   # a 1024×768 thumbnail at the thinker's 512²…802816 px bounds ≈ 1000 tokens
JUDGE_IMAGE_TOKENS = 2048   # source + edited image
PROMPT_TEXT_TOKENS = 400    # system prompt + instruction
THINK_NEW_TOKENS = 256
JUDGE_NEW_TOKENS = 128
ENCODE_TOKENS = 572         # 218 prefix + 324 image + 30 instruction tokens, per row


def build_vlm(device):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(text_config=QWEN_TEXT, vision_config=QWEN_VISION, **QWEN_TEXT)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    return model, config


def vlm_request(config, image_tokens: int, device):
    side = int(image_tokens**0.5) * 2
    pixel_values = torch.randn(side * side, 3 * 2 * 14 * 14, device=device, dtype=torch.bfloat16)
    grid = torch.tensor([[1, side, side]], device=device)
    n_image = (side // 2) ** 2
    ids = torch.randint(0, 150000, (1, PROMPT_TEXT_TOKENS + n_image), device=device)
    ids[0, 20:20 + n_image] = config.image_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixel_values,
            "image_grid_thw": grid, "mm_token_type_ids": (ids == config.image_token_id).long()}


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dit", nargs="+", default=["bf16", "fp8"])
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    vlm, config = build_vlm(device)
    dit = random_model(device)
    if args.compile:
        for block in [*dit.double_blocks, *dit.single_blocks]:
            block.compile()
    inputs = edit_inputs(1024, 28, device, dit.params)
    think = vlm_request(config, THINK_IMAGE_TOKENS, device)
    judge = vlm_request(config, JUDGE_IMAGE_TOKENS, device)
    encode = vlm_request(config, 324, device)

    def generate(request, new_tokens):
        with torch.no_grad():
            vlm.generate(**request, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                         top_p=0.9, temperature=0.7)

    def edit():
        with torch.no_grad():
            for _ in range(2):
                vlm(**{k: v for k, v in encode.items() if k != "attention_mask"}, output_hidden_states=True)
            sample(dit, inputs, 6.0, 0.93, dit.params.switches, torch.bfloat16, device)

    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
              "compile": args.compile, "runs": []}
    generate(think, 4)  # warm-up
    edit()
    for mode in args.dit:
        if mode == "fp8":
            quantize_blocks(dit)
            edit()  # warm-up (recompiles for fp8 weights when compiled)
        torch.cuda.reset_peak_memory_stats(device)
        think_s = timed(lambda: generate(think, THINK_NEW_TOKENS))
        edit_s = timed(edit)
        judge_s = timed(lambda: generate(judge, JUDGE_NEW_TOKENS))
        row = {"mode": f"reasoning-try-{mode}", "size": 1024, "steps": 28, "cfg": True, "think_s": think_s,
               "think_new_tokens": THINK_NEW_TOKENS, "edit_s": edit_s, "judge_s": judge_s,
               "judge_new_tokens": JUDGE_NEW_TOKENS, "s_per_try": think_s + edit_s + judge_s,
               "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
               "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"reasoning-{report['date']}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
