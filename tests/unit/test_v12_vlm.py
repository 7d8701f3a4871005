"""v1.2 encoder (model/vlm/v12_*.py, nodes/encoders/vlm_v12_hf.py) against golden ``vlm_v1_2/``.

Every case, the model folder and every tolerance come from the set's manifest. Reference embeddings
are bfloat16 (the release's dtype): an fp32 result is compared unrounded, with the reference's own
rounding (at most 2⁻⁸ of its magnitude) added to the manifest tolerance.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.golden import GOLDEN_DIR
from tests.unit.vlm_support import import_pack_module

HF = import_pack_module("nodes.encoders.vlm_v12_hf")
ENC = import_pack_module("model.vlm.v12_encode")
PROMPT = import_pack_module("model.vlm.v12_prompt")

SET_DIR = GOLDEN_DIR / "vlm_v1_2"
BF16_HALF_ULP = 2.0**-8  # bfloat16 keeps 8 significant bits: rounding moves a value by ≤ 2⁻⁸ of it
pytestmark = pytest.mark.skipif(not (SET_DIR / "manifest.json").is_file(), reason="no vlm_v1_2 golden set")


@lru_cache(maxsize=None)
def manifest() -> dict:
    return json.loads((SET_DIR / "manifest.json").read_text())


def cases() -> list[dict]:
    return manifest()["cases"] if (SET_DIR / "manifest.json").is_file() else []


def tol(name: str) -> dict:
    return manifest()["tolerance"][name]


def model_folder() -> Path:
    """``model`` reads e.g. ``../vlm/tiny-qwen25vl (reused; …)``: the path is its first word."""
    return (SET_DIR / manifest()["model"].split()[0]).resolve()


@pytest.fixture(scope="module")
def runner():
    folder = model_folder()
    return HF.HFQwen25VLV12.from_folders(HF.V12TextEncoderFolders(folder, folder), dtype=torch.float32)


def source_image(case: dict) -> Image.Image:
    return ENC.vlm_source_image(Image.open(SET_DIR / case["image_file"]), case["size_level"])


def assert_close_to_bf16(actual: torch.Tensor, reference: torch.Tensor, atol: float, rtol: float, what: str):
    actual, reference = actual.double(), reference.double()
    assert actual.shape == reference.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    excess = (actual - reference).abs() - (atol + (rtol + BF16_HALF_ULP) * reference.abs())
    assert excess.max() <= 0, f"{what}: exceeds tolerance by {excess.max().item():.3e}"


def test_manifest_constants_match_the_module():
    m = manifest()
    assert (m["edit_prefix"], m["drop"], m["max_length"]) == (PROMPT.EDIT_PREFIX, PROMPT.DROPPED_TOKENS,
                                                              PROMPT.MAX_LENGTH)
    assert (m["image_processor"]["min_pixels"], m["image_processor"]["max_pixels"]) == (ENC.VLM_MIN_PIXELS,
                                                                                      ENC.VLM_MAX_PIXELS)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["name"])
def test_vlm_image_is_the_lanczos_vae_sized_copy(case):
    image = source_image(case)
    assert list(image.size) == case["vae_size_wh"] == case["vlm_image_size_wh"]
    assert hashlib.sha256(np.asarray(image).tobytes()).hexdigest() == case["vlm_image_rgb_sha256"]
    expected = Image.open(SET_DIR / case["vlm_image_file"]).convert("RGB")
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["name"])
def test_pieces_ids_and_quote_mask(case, runner):
    t = load_file(str(SET_DIR / case["file"]))
    tokens = PROMPT.tokenize_v12(runner.tokenize, runner.special_tokens, case["prompt"], case["num_image_tokens"])
    assert tokens.template == case["template_text"]
    assert tokens.pieces == case["pieces"]
    assert tokens.piece_quoted == case["piece_in_quotation"]
    assert tokens.piece_ids == case["piece_ids"]
    assert tokens.ids == t["input_ids"][0].tolist()
    assert tokens.text_mask == t["text_mask_full"][0].tolist()
    assert [int(i > 0) for i in tokens.ids] == t["rope_attention_mask"][0].tolist()
    assert [i for i, token in enumerate(tokens.ids) if token == 0] == case["id0_positions"]


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["name"])
def test_encoding_matches_the_release(case, runner):
    t = load_file(str(SET_DIR / case["file"]))
    image = source_image(case)
    enc = ENC.encode_v12(runner, case["prompt"], image, output_dtype=torch.float32)
    assert torch.equal(enc.grid_thw, t["image_grid_thw"])
    assert list(enc.pixel_values.shape) == case["pixel_values_shape"]
    assert enc.pixel_values.double().sum().item() == pytest.approx(case["pixel_values_sum"], rel=1e-6)
    assert enc.pixel_values.double().abs().sum().item() == pytest.approx(case["pixel_values_abs_sum"], rel=1e-6)
    head = t["pixel_values_head"]
    assert torch.allclose(enc.pixel_values[: head.shape[0]], head, atol=tol("pixel_values_head")["atol"], rtol=0)
    affine = ENC.affine_source_to_vision_grid(enc.resized_wh, image.size)
    assert torch.allclose(affine, t["affine_mat"], atol=tol("affine_mat")["atol"], rtol=0)
    assert torch.equal(enc.positions, t["position_ids_raw"][:, 0])
    assert torch.allclose(enc.shifted, t["position_ids_shifted"], atol=tol("position_ids_shifted")["atol"], rtol=0)
    valid = case["valid_len"]
    assert enc.embedding.shape[1] == valid and torch.equal(enc.mask, t["mask"])
    assert torch.equal(enc.text_mask, t["text_masks"]) and int(enc.text_mask.sum()) == case["quoted_tokens_kept"]
    kept_ids = torch.tensor(enc.tokens.ids[manifest()["drop"]:][:valid])
    vision = kept_ids == ENC.IMAGE_PAD_ID
    assert torch.equal(vision.long()[None], t["vision_mask"]) and int(vision.sum()) == case["vision_tokens_kept"]
    assert torch.allclose(enc.txt_ids, t["txt_ids"], atol=tol("txt_ids")["atol"], rtol=0)
    assert torch.equal(enc.txt_ids[~vision, 1:], torch.zeros(int((~vision).sum()), 2))
    assert [enc.txt_ids[:, 0].min().item(), enc.txt_ids[:, 0].max().item()] == case["txt_ids_axis0_range"]
    embedding_tol = tol("embedding")
    assert_close_to_bf16(enc.embedding, t["embedding"], embedding_tol["atol"], embedding_tol["rtol"], "embedding")
    assert_close_to_bf16(enc.text_embeds, t["text_embeds"], tol("text_embeds")["atol"], 0.0, "text_embeds")
    # Text tokens are table lookups: bit-equal once rounded like the release.
    text_rows = enc.text_embeds[0, ~vision].to(torch.bfloat16)
    assert torch.equal(text_rows, t["text_embeds"][0, ~vision])


def test_release_dtype_is_the_default_output(runner):
    case = cases()[0]
    t = load_file(str(SET_DIR / case["file"]))
    enc = ENC.encode_v12(runner, case["prompt"], source_image(case))
    assert enc.embedding.dtype == enc.text_embeds.dtype == t["embedding"].dtype
    assert torch.allclose(enc.embedding.float(), t["embedding"].float(), atol=tol("embedding")["atol"],
                          rtol=tol("embedding")["rtol"])
    branch = enc.branch_text()
    assert branch.txt_ids.shape == (enc.embedding.shape[1], 3) and branch.text_mask is enc.text_mask


@pytest.mark.parametrize("text,pieces,quoted", [
    # a Chinese opening quote with nothing before it is dropped (fork quirk, kept on purpose)
    ("“ab”c", ["a", "b", "”c"], [True, True, False]),
    # an unclosed quote after a closed pair: the tail is glued back, no new quoted pieces
    ('x"a"y"bc', ['x"', "a", '"y"bc'], [False, True, False]),
    # styles do not mix: ” inside "…" is quoted text
    ('"a”b"', ['"', "a", "”", "b", '"'], [False, True, True, True, False]),
])
def test_quote_splitting_rules(text, pieces, quoted):
    assert PROMPT.split_in_quotation(text, 0) == (pieces, quoted)


def test_protected_window_ignores_quotes():
    # the first quote is protected, so the second one opens a quotation that never closes
    assert PROMPT.split_in_quotation('ab"c"d', 3) == (['ab"c"d'], [False])
    assert PROMPT.split_in_quotation('ab"c"d', 2) == (['ab"', "c", '"d'], [False, True, False])


def _pipeline_folder(root: Path, class_name: str = "Step1XEditPipelineV1P2") -> Path:
    """A v1.2-like pipeline folder around the tiny Qwen (symlinks, no copies)."""
    pipeline = root / "Step1X-Edit-v1p2"
    for sub in ("text_encoder", "processor"):
        (pipeline / sub).mkdir(parents=True)
        for file in model_folder().iterdir():
            (pipeline / sub / file.name).symlink_to(file)
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return pipeline


def test_v12_text_encoder_found_from_pipeline_or_its_subfolder(tmp_path):
    pipeline = _pipeline_folder(tmp_path)
    for path in (pipeline, pipeline / "text_encoder"):
        folders = HF.locate_v12_text_encoder(path)
        assert folders == HF.V12TextEncoderFolders(pipeline / "text_encoder", pipeline / "processor")


def test_stock_qwen_is_refused_with_the_folder_to_use(tmp_path):
    with pytest.raises(ValueError, match=r"stock Qwen2\.5-VL.*Step1X-Edit-v1p2 folder.*text_encoder/ subfolder"):
        HF.locate_v12_text_encoder(model_folder())
    other = _pipeline_folder(tmp_path, class_name="QwenImageEditPipeline")
    with pytest.raises(ValueError, match="stock Qwen2.5-VL"):
        HF.locate_v12_text_encoder(other / "text_encoder")
    with pytest.raises(ValueError, match="holds no Qwen2.5-VL"):
        HF.locate_v12_text_encoder(tmp_path)
