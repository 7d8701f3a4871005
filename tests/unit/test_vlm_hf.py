"""Route 2 (nodes/encoders/vlm_hf.py): the tiny HF Qwen2.5-VL folder through transformers reproduces every
golden ``vlm/`` case: ids, mask exactly; last hidden state and embedding within tolerance."""
from __future__ import annotations

import json

import pytest
import torch

from tests.unit.vlm_support import (VLM_DIR, assert_v11_sdpa_semantics, case_names, import_pack_module, load_case, max_abs_error,
                                    tolerance, window)

HF = import_pack_module("nodes.encoders.vlm_hf")
P = import_pack_module("model.vlm.prompt")
I = import_pack_module("model.vlm.image")


@pytest.fixture(scope="module")
def encoder():
    return HF.HFQwen25VL.from_folder(VLM_DIR / "tiny-qwen25vl", dtype=torch.float32)


@pytest.mark.parametrize("name", case_names())
def test_hf_route_matches_reference(name, encoder):
    case = load_case(name)
    image = I.resize_for_vlm(case.raw_image(), case.size_level)
    grid = I.llm_grid_hw(image)
    for k, row in enumerate(case.rows):
        out = P.encode_prompt(encoder, row["prompt"], image, grid, **window())
        length = len(out.input_ids)
        assert out.input_ids.tolist() == row["input_ids"][:length]
        assert length == min(row["seq_len"], window()["drop"] + window()["max_length"])
        assert torch.equal(out.mask, case.tensors["mask"][k])
        err = max_abs_error(out.emb, case.tensors["emb"][k])
        assert err <= tolerance("emb_abs"), f"{name} row {k}: emb max abs error {err:.3e}"
        hidden = encoder.last_hidden_state(out.input_ids, P.mrope_positions(out.input_ids, grid), image)
        err = max_abs_error(hidden, case.tensors[f"last_hidden_{k}"][:length])
        assert err <= tolerance("last_hidden_abs"), f"{name} row {k}: last hidden max abs error {err:.3e}"


@pytest.mark.parametrize("name", case_names())
def test_hf_route_v1_1_sdpa_semantics(name, encoder):
    """v1.1's SDPA attends to a free-standing '!': equal to v1.0 except where the fixture stores both."""
    assert_v11_sdpa_semantics(encoder, name)


def test_folder_that_is_not_qwen25_vl_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="'qwen3'.*Qwen2.5-VL"):
        HF.check_hf_folder(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="missing config.json"):
        HF.check_hf_folder(tmp_path)
