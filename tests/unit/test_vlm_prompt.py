"""Prompt side of the VLM encoder (model/vlm/prompt.py) against the golden ``vlm/`` fixtures."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.unit.vlm_support import VLM_DIR, case_names, import_pack_module, load_case, vlm_spec, window

P = import_pack_module("model.vlm.prompt")


@pytest.fixture(scope="module")
def tokenize():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(VLM_DIR / "tiny-qwen25vl")
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_prefix_constant_is_the_reference_prefix():
    assert P.STEP1X_PREFIX == vlm_spec()["prefix"]


def test_window_constants_are_the_reference_ones():
    spec = vlm_spec()
    assert (P.DROPPED_TOKENS, P.MAX_LENGTH) == (spec["drop"], spec["max_length"])


@pytest.mark.parametrize("name", case_names())
def test_template_and_split_pieces(name):
    for row in load_case(name).rows:
        template = P.build_template(row["prompt"], window()["prefix"])
        assert template == row["template_text"]
        assert P.split_quoted(template) == row["split_segments"]


@pytest.mark.parametrize("name", case_names())
def test_token_ids_positions_and_mask(name, tokenize):
    case = load_case(name)
    for k, row in enumerate(case.rows):
        tokens = P.tokenize_step1x(tokenize, row["prompt"], window()["prefix"])
        assert tokens.piece_ids == row["split_segment_ids"]
        ids = P.expand_image_pad(tokens.ids, row["num_image_tokens"])
        assert ids == row["input_ids"]
        assert ids.index(P.VISION_START_ID) == row["tokens_before_vision_start"]
        assert torch.equal(torch.tensor(ids), case.tensors[f"input_ids_{k}"].flatten())
        ids_t = torch.tensor(ids)
        keep = P.keep_mask(ids_t)
        assert (~keep).nonzero().flatten().tolist() == row["id0_positions"]
        assert torch.equal(keep.long(), case.tensors[f"attention_mask_{k}"].flatten())
        _, grid_h, grid_w = row["image_grid_thw"]
        positions = P.mrope_positions(ids_t, (grid_h // 2, grid_w // 2))
        assert torch.equal(positions, case.tensors[f"position_ids_{k}"])


@pytest.mark.parametrize("name", case_names())
def test_drop_and_pad_of_reference_hidden_states(name):
    """Slicing the fixture's full last hidden state gives its emb and mask exactly."""
    case = load_case(name)
    for k, row in enumerate(case.rows):
        emb, mask = P.drop_and_pad(case.tensors[f"last_hidden_{k}"], window()["drop"], window()["max_length"])
        assert torch.equal(emb, case.tensors["emb"][k])
        assert torch.equal(mask, case.tensors["mask"][k])
        assert int(mask.sum()) == row["mask_sum"] == row["kept_len"]


def test_split_quoted_single_characters_and_apostrophes():
    head = "x" * (P.QUOTE_INDEX_THRESHOLD + 1)
    assert P.split_quoted(head + 'say "a b" ok') == [head + 'say "', "“a”", "“ ”", "“b”", '" ok']
    assert P.split_quoted(head + "it's") == [head + 'it"', "“s”"]
    assert P.split_quoted(head + "“hi”") == [head + '"', "“h”", "“i”", '"']
    # quotes at or before the threshold do not toggle
    early = 'a "b" ' + "y" * P.QUOTE_INDEX_THRESHOLD
    assert P.split_quoted(early) == [early]
    assert P.split_quoted(head + "「早」‘x’") == [head + "「早」‘x’"]


def test_strip_piece_quotes_needs_both_ends():
    assert P.strip_piece_quotes([P.OPEN_QUOTE_ID, 46, P.CLOSE_QUOTE_ID]) == [46]
    assert P.strip_piece_quotes([P.OPEN_QUOTE_ID, 18987]) == [P.OPEN_QUOTE_ID, 18987]
    assert P.strip_piece_quotes([47249, P.CLOSE_QUOTE_ID]) == [47249, P.CLOSE_QUOTE_ID]


def test_merge_takes_plain_ids_before_vision_end_and_split_ids_from_it():
    end = P.VISION_END_ID
    assert P.merge_plain_and_split_ids([1, 2, end, 3], [9, end, 4, 5]) == [1, 2, end, 4, 5]
    with pytest.raises(ValueError, match="vision_end"):
        P.merge_plain_and_split_ids([1, 2], [end])


def test_instruction_with_braces_is_inserted_verbatim():
    assert "{x} {}" in P.build_template("{x} {}")


def test_truncation_cuts_after_the_window_and_warns(caplog):
    ids = list(range(1000))
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert P.truncate_to_window(ids, 217, 640) == ids[:857]
    assert "1000 tokens" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert P.truncate_to_window(ids[:857], 217, 640) == ids[:857]
    assert caplog.text == ""


def test_drop_and_pad_short_sequence_is_zero_padded():
    hidden = torch.arange(30, dtype=torch.float32).reshape(10, 3) + 1
    emb, mask = P.drop_and_pad(hidden, drop=4, max_length=8)
    assert torch.equal(emb[:6], hidden[4:]) and torch.all(emb[6:] == 0)
    assert mask.tolist() == [1] * 6 + [0] * 2 and mask.dtype == torch.int64


def test_positions_skip_id0_tokens():
    pad = P.IMAGE_PAD_ID
    ids = torch.tensor([5, 0, 6, pad, pad, pad, pad, pad, pad, 7, 0, 8])
    positions = P.mrope_positions(ids, (2, 3))
    expected = torch.tensor([
        [0, 1, 1, 2, 2, 2, 2, 2, 2, 5, 1, 6],
        [0, 1, 1, 2, 2, 2, 3, 3, 3, 5, 1, 6],
        [0, 1, 1, 2, 3, 4, 2, 3, 4, 5, 1, 6],
    ])
    assert torch.equal(positions, expected)
