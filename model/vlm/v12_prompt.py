"""Step1X-Edit v1.2's Qwen2.5-VL prompt: template, quote/special-token pieces, ids and quote mask.

Pure Python + torch. Reference: the diffusers fork, branch
``step1xedit_v1p2``, ``pipeline_step1x_edit_v1p2.py`` (``EDIT_PREFIX``,
``split_string_in_quotation[_and_special_tokens]``, ``_get_qwenvl_embeds``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .prompt import IMAGE_PAD_ID, IMAGE_PLACEHOLDER, TEMPLATE_HEAD, TEMPLATE_TAIL, expand_image_pad

# Module constant ``EDIT_PREFIX`` of the v1.2 pipeline; the third line ends in a space (``\u0020``).
EDIT_PREFIX = (
    "Given a reference image and a user editing instruction.\n"
    "You need to understand the information of the reference image and the content of the editing instruction,\n"
    "and then generate a detailed description of the edited target image based on the reference image and the "
    "editing instruction. \n"
    "The description should include the requirements in the editing instruction and try to closely match the "
    "content of the target image.\n"
    "The editing instruction is:"
)
# ``apply_chat_template(..., add_vision_id=True)`` labels the single image (``_get_qwenvl_embeds``).
VISION_ID_LABEL = "Picture 1: "
IMAGE_PAD_TOKEN = "<|image_pad|>"
# ``_get_qwenvl_embeds``: hidden states before this position are dropped (the template head and the
# prefix up to its final "is"), at most this many are kept, and nothing is padded.
DROPPED_TOKENS = 90
MAX_LENGTH = 2048

ENGLISH_QUOTE = '"'
CHINESE_OPEN_QUOTE, CHINESE_CLOSE_QUOTE = "“", "”"


def build_template_v12(instruction: str, prefix: str = EDIT_PREFIX) -> str:
    """The templated chat text: one user turn ``prefix + " " + instruction``, then the labelled image."""
    return TEMPLATE_HEAD + prefix + " " + instruction + VISION_ID_LABEL + IMAGE_PLACEHOLDER + TEMPLATE_TAIL


def split_in_quotation(text: str, protected: int) -> tuple[list[str], list[bool]]:
    """Pieces of ``text`` and whether each lies inside quotes (fork ``split_string_in_quotation``).

    Characters inside ``"…"`` or ``“…”`` become one piece each (flag True); an opening quote ends the
    current outside piece, a closing quote starts the next one; styles do not mix. The first
    ``protected`` characters are never quotes. An unclosed quote's content is glued back onto the
    preceding outside piece. Fork quirk kept: a ``“`` that opens with an empty outside buffer is dropped.
    """
    pieces: list[str] = []
    quoted: list[bool] = []
    closing: str | None = None  # the quote that ends the current quotation, None outside
    buffer = ""
    inside: list[str] = []
    for index, char in enumerate(text):
        if index < protected:
            buffer += char
        elif closing is None:
            if char == ENGLISH_QUOTE or char == CHINESE_OPEN_QUOTE:
                if char == ENGLISH_QUOTE or buffer:
                    pieces.append(buffer + char)
                    quoted.append(False)
                buffer = ""
                closing = ENGLISH_QUOTE if char == ENGLISH_QUOTE else CHINESE_CLOSE_QUOTE
            else:
                buffer += char
        elif char == closing:
            pieces.extend(inside)
            quoted.extend([True] * len(inside))
            inside = []
            closing = None
            buffer = char
        else:
            inside.append(char)
    if closing is not None:
        unclosed = "".join(inside) + buffer
        if pieces and not quoted[-1]:
            pieces[-1] += unclosed
        else:
            pieces.append(unclosed)
            quoted.append(False)
    elif buffer:
        pieces.append(buffer)
        quoted.append(False)
    return pieces, quoted


def split_pieces(text: str, protected: int, special_tokens: Sequence[str]) -> tuple[list[str], list[bool]]:
    """Special tokens as their own pieces, quote splitting in between (fork ``…_and_special_tokens``).

    ``protected`` counts from the start of ``text``; each stretch between special tokens gets the part
    of that window that overlaps it.
    """
    if not special_tokens:
        return split_in_quotation(text, protected)
    alternatives = sorted({re.escape(token) for token in special_tokens}, key=len, reverse=True)
    parts = [part for part in re.split(f"({'|'.join(alternatives)})", text) if part]
    special = set(special_tokens)
    pieces: list[str] = []
    quoted: list[bool] = []
    start = 0
    for part in parts:
        if part in special:
            pieces.append(part)
            quoted.append(False)
        else:
            part_pieces, part_quoted = split_in_quotation(part, max(0, protected - start))
            pieces += part_pieces
            quoted += part_quoted
        start += len(part)
    return pieces, quoted


@dataclass(frozen=True)
class V12Tokens:
    """The full token sequence of one prompt, before the 90-token drop.

    ids / text_mask: ``S`` entries (image pads expanded); pieces, piece_quoted, piece_ids: per piece,
    with the image piece's ids expanded too.
    """

    template: str
    pieces: list[str]
    piece_quoted: list[bool]
    piece_ids: list[list[int]]
    ids: list[int]
    text_mask: list[int]


def tokenize_v12(tokenize: Callable[[str], list[int]], special_tokens: Sequence[str], instruction: str,
                 num_image_tokens: int, prefix: str = EDIT_PREFIX) -> V12Tokens:
    """Ids and quote mask as ``_get_qwenvl_embeds`` builds them: each piece tokenised alone, the image piece expanded.

    ``tokenize`` adds no special tokens and keeps ``<|image_pad|>`` one id (a Qwen2 tokenizer does).
    """
    template = build_template_v12(instruction, prefix)
    pieces, quoted = split_pieces(template, len(prefix), special_tokens)
    piece_ids = []
    for piece in pieces:
        ids = list(tokenize(piece))
        if IMAGE_PAD_TOKEN in piece:
            ids = expand_image_pad(ids, num_image_tokens)
        piece_ids.append(ids)
    ids = [i for piece in piece_ids for i in piece]
    if ids.count(IMAGE_PAD_ID) != num_image_tokens:
        raise ValueError(f"expected {num_image_tokens} image tokens in the v1.2 prompt, found "
                         f"{ids.count(IMAGE_PAD_ID)}: remove '{IMAGE_PAD_TOKEN}' from the instruction")
    text_mask = [int(q) for piece, q in zip(piece_ids, quoted) for _ in piece]
    return V12Tokens(template, pieces, quoted, piece_ids, ids, text_mask)
