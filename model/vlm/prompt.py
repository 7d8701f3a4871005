"""Step1X-Edit's Qwen2.5-VL prompt: template, quote splitting, token ids, positions, drop/pad/mask.

Pure Python + torch (no ComfyUI, no transformers), so both encoder routes and the tests share one
definition: the template, quote splitting and id merge, id-0 padding and M-RoPE positions, and the
drop / truncate / pad / mask. "Official" below means stepfun-ai/Step1X-Edit ``modules/conditioner.py``
(``Qwen25VL_7b_Embedder.forward``, ``split_string``); positions follow transformers'
``Qwen2_5_VLForConditionalGeneration.get_rope_index``.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch

logger = logging.getLogger(__name__)

# Fixed instruction-rewriting prefix, official ``Qwen25VL_7b_PREFIX`` (1,058 characters).
STEP1X_PREFIX = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions '
    "suitable for image generation. Evaluate the level of detail in the user prompt:\n"
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and "
    "spatial relationships to create vivid and concrete scenes.\n"
    "- If the prompt is already detailed, refine and enhance the existing details slightly without "
    "overcomplicating.\n\n"
    "Here are examples of how to transform or refine prompts:\n"
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, "
    "sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n"
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring "
    "glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus "
    "passing by towering glass skyscrapers.\n\n"
    "Please generate only the enhanced description for the prompt below and avoid including any "
    "additional commentary or evaluations:\n"
    "User Prompt:"
)

# Qwen2.5-VL chat template with its default system message and the generation prompt (official
# ``Qwen25VL_7b_Embedder.forward``, ``apply_chat_template``).
TEMPLATE_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
TEMPLATE_TAIL = "<|im_end|>\n<|im_start|>assistant\n"

# Qwen2.5-VL special ids (tokenizer_config.json of Qwen2.5-VL-7B-Instruct).
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_PAD_ID = 151655
# Id 0 is "!": the official mask ``ids > 0`` treats a free-standing "!" as padding
# (``Qwen25VL_7b_Embedder.forward``).
PADDING_ID = 0
# How the official language model handles those tokens: v1.0 runs flash-attention 2 (no query,
# attention output 0), v1.1 runs SDPA (key mask only). Other rows are identical
# (``Qwen25VL_7b_Embedder.__init__``'s ``attn_implementation``).
FLASH_PADDING_BY_RELEASE = {"v1.0": True, "v1.1": False}

# Quote splitting, official ``split_string``: only quotes past this character index toggle; the
# prefix's own quotes sit at 108 and 124 of the full template string.
QUOTE_INDEX_THRESHOLD = 155
QUOTE_CHARACTERS_REPLACED = ("“", "”", "'")  # all become '"' before the walk
OPEN_QUOTE_ID = 2073  # "“", stripped from a piece's ids together with ...
CLOSE_QUOTE_ID = 854  # ... "”", only when both are present (official ``forward``)

# Official ``forward``: ``emb[0, 217:][:max_length]`` with ``max_length=640``.
DROPPED_TOKENS = 217  # 14-token header + 204-token prefix - 1: keeps the prefix's final ":" token
MAX_LENGTH = 640


def build_template(instruction: str, prefix: str = STEP1X_PREFIX) -> str:
    """The full chat string of the official template (concatenation, not ``str.format``: braces are legal)."""
    return TEMPLATE_HEAD + prefix + IMAGE_PLACEHOLDER + instruction + TEMPLATE_TAIL


def split_quoted(text: str) -> list[str]:
    """Official ``split_string``: text pieces, with every character inside quotes its own ``“c”``.

    Indices count in ``text`` (the whole template). An opening quote ends the current piece (and
    belongs to it); a closing quote starts the next one. An odd number of quotes leaves the walk
    "inside quotes" to the end, so the template tail is split per character too.
    """
    for quote in QUOTE_CHARACTERS_REPLACED:
        text = text.replace(quote, '"')
    pieces: list[str] = []
    in_quotes = False
    current = ""
    for index, char in enumerate(text):
        if char == '"' and index > QUOTE_INDEX_THRESHOLD:
            current += char
            if not in_quotes:
                pieces.append(current)
                current = ""
            in_quotes = not in_quotes
        elif in_quotes:
            pieces.append("“" + char + "”")
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def strip_piece_quotes(ids: Sequence[int]) -> list[int]:
    """Drop the wrapping ``“``/``”`` ids of one piece, only if it starts AND ends with them."""
    ids = list(ids)
    if ids and ids[0] == OPEN_QUOTE_ID and ids[-1] == CLOSE_QUOTE_ID:
        return ids[1:-1]
    return ids


def merge_plain_and_split_ids(plain_ids: Sequence[int], split_ids: Sequence[int]) -> list[int]:
    """``plain_ids`` up to (excluding) its first ``<|vision_end|>`` + ``split_ids`` from its first on."""
    plain_ids, split_ids = list(plain_ids), list(split_ids)
    for name, ids in (("plain", plain_ids), ("quote-split", split_ids)):
        if VISION_END_ID not in ids:
            raise ValueError(f"the {name} token ids have no <|vision_end|> ({VISION_END_ID}): "
                             "the tokenizer is not Qwen2.5-VL's")
    return plain_ids[: plain_ids.index(VISION_END_ID)] + split_ids[split_ids.index(VISION_END_ID):]


@dataclass(frozen=True)
class Step1XTokens:
    """Token ids of one prompt row, with the image as the single ``<|image_pad|>`` id."""

    template: str
    pieces: list[str]
    piece_ids: list[list[int]]  # raw ids of each piece, before quote stripping
    ids: list[int]  # final ids (after the id merge), one IMAGE_PAD_ID for the whole image


def tokenize_step1x(tokenize: Callable[[str], list[int]], instruction: str,
                    prefix: str = STEP1X_PREFIX) -> Step1XTokens:
    """Step1X's quote-split ids (official ``split_string``) from a tokenizer callable that adds no
    special tokens (Qwen2's does not).

    ``tokenize`` must leave ``<|image_pad|>`` a single id; the caller expands it to the image size
    (:func:`expand_image_pad`).
    """
    template = build_template(instruction, prefix)
    plain = tokenize(template)
    pieces = split_quoted(template)
    piece_ids = [list(tokenize(piece)) for piece in pieces]
    split = [i for ids in piece_ids for i in strip_piece_quotes(ids)]
    ids = merge_plain_and_split_ids(plain, split)
    if ids.count(IMAGE_PAD_ID) != 1:
        raise ValueError(f"expected one <|image_pad|> ({IMAGE_PAD_ID}) in the prompt ids, found "
                         f"{ids.count(IMAGE_PAD_ID)}: remove '<|image_pad|>' from the instruction")
    return Step1XTokens(template, pieces, piece_ids, ids)


def expand_image_pad(ids: Sequence[int], num_image_tokens: int) -> list[int]:
    """Replace the single ``<|image_pad|>`` by ``num_image_tokens`` copies (what the processor does)."""
    index = list(ids).index(IMAGE_PAD_ID)
    return list(ids[:index]) + [IMAGE_PAD_ID] * num_image_tokens + list(ids[index + 1:])


def truncate_to_window(ids: Sequence[int], drop: int = DROPPED_TOKENS,
                       max_length: int = MAX_LENGTH) -> list[int]:
    """Cut ids that can never reach the output (``drop + max_length`` on), with a warning.

    The language model is causal, so the kept hidden states do not depend on the cut tokens:
    cutting before the forward pass gives the official result (which cuts after it) for less work.
    """
    window = drop + max_length
    if len(ids) > window:
        logger.warning("Step1X VLM prompt is %d tokens; only the first %d after the %d-token prefix "
                       "are used (%d cut, the instruction's end and the assistant header first)",
                       len(ids), max_length, drop, len(ids) - window)
    return list(ids[:window])


def keep_mask(ids: torch.Tensor) -> torch.Tensor:
    """Official attention mask ``ids > 0``: False at free-standing "!" (id 0). [L] -> [L] bool."""
    return ids != PADDING_ID


def mrope_positions(ids: torch.Tensor, llm_grid_hw: tuple[int, int]) -> torch.Tensor:
    """M-RoPE positions (t, h, w) of one row with one image, official padding semantics.

    Positions are counted over kept tokens only (``ids != 0``); masked tokens get 1 (HF
    ``get_rope_index`` with an attention mask). Text before the image: p on all axes; image token
    (i, j) of the ``gh × gw`` merged grid: (s, s+i, s+j), s = kept tokens before the image; text
    after: continues at ``s + max(gh, gw)``.

    ids: [L] int; returns [3, L] int64.
    """
    grid_h, grid_w = llm_grid_hw
    keep = keep_mask(ids)
    kept_ids = ids[keep]
    image_slots = (kept_ids == IMAGE_PAD_ID).nonzero().flatten()
    num_image = grid_h * grid_w
    if image_slots.numel() != num_image:
        raise ValueError(f"{image_slots.numel()} <|image_pad|> ids for an image of {num_image} tokens")
    start = int(image_slots[0])
    if int(image_slots[-1]) != start + num_image - 1:
        raise ValueError("the <|image_pad|> ids of the image are not contiguous")
    before = torch.arange(start).expand(3, start)
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    image = torch.stack([torch.zeros_like(rows), rows, cols]) + start
    num_after = kept_ids.numel() - start - num_image
    after = (torch.arange(num_after) + start + max(grid_h, grid_w)).expand(3, num_after)
    positions = torch.ones(3, ids.numel(), dtype=torch.long)
    positions[:, keep] = torch.cat([before, image, after], dim=1)
    return positions


@contextmanager
def zero_outputs_where_masked(modules: Iterable[torch.nn.Module], keep: torch.Tensor,
                              enabled: bool = True) -> Iterator[None]:
    """While active, each module's output (or its first element) is zeroed where ``keep`` [1, L] is False.

    Applied to every self-attention of the language model this gives flash-attention's padding
    semantics (the reference): a masked token is no query, so its attention output is 0 while
    its MLP still runs. ``enabled`` False: no hooks (SDPA semantics).
    """
    if not enabled:
        yield
        return
    scale = keep.to(torch.float32)[..., None]

    def hook(_module: torch.nn.Module, _args: tuple, output):
        if isinstance(output, tuple):
            return (output[0] * scale.to(output[0].device, output[0].dtype),) + output[1:]
        return output * scale.to(output.device, output.dtype)

    with ExitStack() as stack:
        for module in modules:
            stack.callback(module.register_forward_hook(hook).remove)
        yield


def drop_and_pad(hidden: torch.Tensor, drop: int = DROPPED_TOKENS,
                 max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Official slicing: ``emb[:k] = hidden[drop:drop+k]``, zeros after; ``mask[:k] = 1``.

    hidden: [L, D] final-norm output of one row. Returns emb [max_length, D] float32 and
    mask [max_length] int64 with ``k = min(max_length, L - drop)``.
    """
    kept = hidden[drop:drop + max_length].float()
    emb = torch.zeros(max_length, hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    emb[: kept.shape[0]] = kept
    mask = torch.zeros(max_length, dtype=torch.long, device=hidden.device)
    mask[: kept.shape[0]] = 1
    return emb, mask


class Qwen25VLRunner(Protocol):
    """What an encoder route provides: its tokenizer and one forward pass of Qwen2.5-VL."""

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text`` without added special tokens; ``<|image_pad|>`` stays one id."""

    def last_hidden_state(self, ids: torch.Tensor, positions: torch.Tensor, image: Any,
                          flash_padding: bool = True) -> torch.Tensor:
        """Final-norm output [L, D] for ids [L] (image pads expanded), positions [3, L], with
        id-0 tokens excluded as keys and, if ``flash_padding``, their attention output zeroed
        (as in the official embedder)."""


@dataclass(frozen=True)
class Step1XEncoding:
    tokens: Step1XTokens
    input_ids: torch.Tensor  # [L] int64, image pads expanded, cut to drop + max_length
    emb: torch.Tensor  # [max_length, D] float32
    mask: torch.Tensor  # [max_length] int64


def encode_prompt(runner: Qwen25VLRunner, instruction: str, image: Any, llm_grid_hw: tuple[int, int],
                  prefix: str = STEP1X_PREFIX, drop: int = DROPPED_TOKENS,
                  max_length: int = MAX_LENGTH, flash_padding: bool = True) -> Step1XEncoding:
    """One conditioning row: instruction + VLM-sized image -> Step1X embedding and mask.

    ``flash_padding``: free-standing "!" as v1.0's flash-attention padding (True) or as v1.1's SDPA.
    """
    tokens = tokenize_step1x(runner.tokenize, instruction, prefix)
    ids = expand_image_pad(tokens.ids, llm_grid_hw[0] * llm_grid_hw[1])
    ids = torch.tensor(truncate_to_window(ids, drop, max_length), dtype=torch.long)
    hidden = runner.last_hidden_state(ids, mrope_positions(ids, llm_grid_hw), image, flash_padding)
    emb, mask = drop_and_pad(hidden, drop, max_length)
    return Step1XEncoding(tokens, ids, emb, mask)
