"""v1.2 thinking and reflection as pure logic: answer parsing, score caps, retries, the try loop.

No ComfyUI, no transformers: the VLM is a ``generate(request) -> answer`` callable and the edit an
``edit(image, prompt, negative_prompt) -> image`` callable, both injected, so tests replay scripted
answers. Behaviour follows the release (diffusers fork, branch ``step1xedit_v1p2``,
``pipeline_step1x_edit_thinker.py`` and ``Step1XEditPipelineV1P2.__call__``). Two deliberate
differences, both where the release would crash: an exception raised by ``generate`` is not retried
(only malformed answers are), and a best-of score list that is empty or not all numbers makes that
try unrankable instead of raising in the final choice.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from . import thinker_prompts as prompts

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20  # run_full_pipeline / run_best_pipeline: each sub-call is tried at most 20 times
ERROR_PREFIX = "错误:"  # answers starting with this are failures (the release's API-error convention)
THINK_TAG = "<#Think>"
REFLECTION_TAG, FAILED_TAG, SUCCESS_TAG, OTHERS_TAG = "<#Reflection>", "<#Failed>", "<#Success>", "<#Others>"
ACTION_TAGS = (REFLECTION_TAG, FAILED_TAG, SUCCESS_TAG, OTHERS_TAG)
# The fixed records the release substitutes when a step gives up.
FAILED_REFLECTION = f"{THINK_TAG} The process encountered repeated errors and could not complete.{FAILED_TAG}"
FAILED_EVALUATION = {"meets_instruction": "no", "major_conflicts": 0, "minor_conflicts": 0, "omissions": 0,
                     "raw_score": 0.0, "reason": f"Pipeline failed after {MAX_ATTEMPTS} attempts."}
# Consistency caps (``_apply_score_caps_and_finalize``): a raw score ≤ 1.0000001 is read on a 0–1 scale.
UNIT_SCALE_LIMIT = 1.0000001
SCORE_MAX = 10.0
CAP_NOT_MET, CAP_PARTIAL, CAP_MAJOR_MANY, CAP_MAJOR_ONE, CAP_HALLU_OMIT, CAP_ANY_PROBLEM = 2.0, 5.0, 5.0, 8.0, 7.0, 8.99
SCORE_DECIMALS = 4
# Final choice: the running best starts at try 0 with this product.
INITIAL_BEST_PRODUCT = -1
FENCES = ("```json", "```")
FENCE_CLOSE_LENGTH = 3

Generate = Callable[[prompts.VLMRequest], str]


class MalformedAnswer(ValueError):
    """An answer the release would retry (or, for thinking, raise on)."""


def ask(generate: Generate, request: prompts.VLMRequest) -> str:
    """The stripped answer; an answer starting with ``错误:`` raises MalformedAnswer."""
    answer = generate(request).strip()
    if answer.startswith(ERROR_PREFIX):
        raise MalformedAnswer(f"{request.kind}: the VLM answered with an error: {answer[:200]}")
    return answer


def parse_json_block(answer: str) -> Any:
    """The greedy first-``{``-to-last-``}`` span as JSON, or None (``_parse_json_block``)."""
    match = re.search(r"\{.*\}", answer, flags=re.S)
    if not match:
        return None
    try:
        return json.loads(match.group(0))
    except json.JSONDecodeError:
        return None


def cap_consistency(obj: Mapping) -> dict:
    """Capped consistency result of a parsed answer; raises MalformedAnswer where the release retries."""
    try:
        meets = str(obj.get("meets_instruction", "")).strip().lower()
        major, minor, hallu, omit = (int(obj.get(key, 0) or 0) for key in
                                     ("major_conflicts", "minor_conflicts", "hallucinations", "omissions"))
        raw = float(obj.get("raw_score", 0))
        reason = str(obj.get("reason", "")).strip()
    except (TypeError, ValueError, OverflowError, AttributeError) as err:
        raise MalformedAnswer(f"consistency fields unusable ({err}): {obj}") from None
    if 0 <= raw <= UNIT_SCALE_LIMIT:
        raw *= SCORE_MAX
    raw = max(0.0, min(SCORE_MAX, raw))
    cap, trace = SCORE_MAX, []
    if meets == "no":
        cap = min(cap, CAP_NOT_MET)
        trace.append("cap<=2: 未满足指令关键要求")
    elif meets == "partial":
        cap = min(cap, CAP_PARTIAL)
        trace.append("cap<=5: 仅部分满足指令")
    if major >= 2:
        cap = min(cap, CAP_MAJOR_MANY)
        trace.append("cap<=5: 多个明显矛盾")
    elif major == 1:
        cap = min(cap, CAP_MAJOR_ONE)
        trace.append("cap<=8: 存在1个明显矛盾")
    if hallu > 0 or omit > 0:
        cap = min(cap, CAP_HALLU_OMIT)
        why = ([f"幻觉x{hallu}"] if hallu > 0 else []) + ([f"遗漏x{omit}"] if omit > 0 else [])
        trace.append(f"cap<=7: {', '.join(why)}")
    if meets != "yes" or major > 0 or hallu > 0 or omit > 0:
        cap = min(cap, CAP_ANY_PROBLEM)
        trace.append("cap<9: 存在明显差异/问题")
    return {"score": float(f"{min(raw, cap):.{SCORE_DECIMALS}f}"), "raw_score": raw, "cap_trace": trace,
            "meets_instruction": meets, "major_conflicts": major, "minor_conflicts": minor,
            "hallucinations": hallu, "omissions": omit, "reason": reason}


def parse_consistency(answer: str) -> dict:
    obj = parse_json_block(answer)
    if obj is None:
        raise MalformedAnswer(f"consistency: no JSON object in {answer[:200]!r}")
    return cap_consistency(obj)


def parse_reflection(answer: str) -> str:
    """The accepted reflection string from ``<#Think>`` on (``_validate_reflection_response``)."""
    think = answer.find(THINK_TAG)
    if think < 0:
        raise MalformedAnswer(f"{ERROR_PREFIX} 缺少 {THINK_TAG}")
    present = [tag for tag in ACTION_TAGS if tag in answer]
    if len(present) != 1:
        raise MalformedAnswer(
            f"{ERROR_PREFIX} 需要且仅需要 {list(ACTION_TAGS)} 之一, 但找到了 {len(present)} 个。")
    tag = present[0]
    if answer.count(tag) > 1:
        raise MalformedAnswer(f"{ERROR_PREFIX} 标签 {tag} 出现次数 > 1")
    if answer.find(tag) < think:
        raise MalformedAnswer(f"{ERROR_PREFIX} 反思/失败/成功标签必须出现在 {THINK_TAG} 之后")
    return answer[think:].strip()


def is_well_formed(reflection: str) -> bool:
    """The loop's stricter check (``validate_string``): starts with one ``<#Think>``, one tag in total."""
    if not reflection.startswith(THINK_TAG) or reflection.count(THINK_TAG) != 1:
        return False
    return sum(reflection.count(tag) for tag in ACTION_TAGS) == 1


def reflection_outcome(reflection: str) -> tuple[bool, str | None]:
    """``(success, new_instruction)`` (``format_text``); the instruction keeps its leading blanks."""
    if not is_well_formed(reflection):
        return False, None
    if REFLECTION_TAG in reflection:
        return False, reflection.split(REFLECTION_TAG)[1]
    return SUCCESS_TAG in reflection or OTHERS_TAG in reflection, None


def parse_score(answer: str) -> dict:
    """A best-of score answer: the whole (optionally fenced) answer is JSON with a ``score`` list and ``reasoning``."""
    content = answer.strip()
    for fence in FENCES:
        if content.startswith(fence):
            content = content[len(fence):-FENCE_CLOSE_LENGTH].strip()
            break
    try:
        parsed = json.loads(content)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or "reasoning" not in parsed or not isinstance(parsed.get("score"), list):
        raise MalformedAnswer(f"score: not a JSON object with a score list and reasoning: {answer[:200]!r}")
    return parsed


def score_min(scores: Any) -> float | None:
    """``min`` of a score list, or None when the release's ``min`` would fail (empty, not all numbers)."""
    if not isinstance(scores, list) or not scores:
        return None
    if not all(isinstance(s, Real) and not isinstance(s, bool) and not math.isnan(s) for s in scores):
        return None
    return min(scores)


def _failed_score(kind: str) -> dict:
    return {"score": [0, 0], "reasoning": f"{kind} evaluation failed after {MAX_ATTEMPTS} attempts."}


@dataclass
class Judgement:
    """What the thinker says about one edited image (``reflect``'s two results)."""

    reflection: str
    best_info: dict
    description: str = ""
    evaluation: dict = field(default_factory=dict)


class Thinker:
    """``Step1XEditThinker`` over an injected generator; ``max_attempts`` tries per sub-call."""

    def __init__(self, generate: Generate, max_attempts: int = MAX_ATTEMPTS):
        self.generate = generate
        self.max_attempts = max_attempts

    def _retry(self, build: Callable[[], prompts.VLMRequest], parse: Callable[[str], Any]) -> Any | None:
        for attempt in range(self.max_attempts):
            request = build()
            try:
                return parse(ask(self.generate, request))
            except MalformedAnswer as err:
                logger.info("%s attempt %d/%d failed: %s", request.kind, attempt + 1, self.max_attempts, err)
        return None

    def think(self, source: Any, instruction: str) -> str:
        """The rewritten instruction; no retry, an error answer raises (``prompt_reformat``)."""
        return ask(self.generate, prompts.think_request(source, instruction))

    def judge(self, source: Any, edited: Any, instruction: str) -> Judgement:
        """Description → consistency → reflection, each retried; then the two best-of scores."""
        description = self._retry(lambda: prompts.description_request(source, instruction), lambda a: a)
        evaluation = reflection = None
        if description is not None:
            evaluation = self._retry(lambda: prompts.consistency_request(edited, instruction, description),
                                     parse_consistency)
        if evaluation is not None:
            reflection = self._retry(lambda: prompts.reflection_request(source, edited, instruction, evaluation),
                                     parse_reflection)
        score1 = self._retry(lambda: prompts.score1_request(source, edited, instruction), parse_score)
        score2 = self._retry(lambda: prompts.score2_request(edited), parse_score)
        best = {"score1": score1 or _failed_score("score1"), "score2": score2 or _failed_score("score2")}
        if reflection is None:
            return Judgement(FAILED_REFLECTION, best, "", dict(FAILED_EVALUATION))
        return Judgement(reflection, best, description, evaluation)


def choose_best(best_info: list[dict], reflections: list[str]) -> int:
    """Index of the final image (``final_images``): largest ``min(score1)·min(score2)``; on a tie the later
    try wins unless only the earlier one's reflection contains ``<#Success>``. Unrankable tries never win."""
    best, best_product, best_success = 0, INITIAL_BEST_PRODUCT, False
    for index, info in enumerate(best_info):
        low1, low2 = score_min(info["score1"].get("score")), score_min(info["score2"].get("score"))
        if low1 is None or low2 is None:
            continue
        product = low1 * low2
        success = SUCCESS_TAG in (reflections[index] if index < len(reflections) else "")
        if product > best_product:
            best, best_product, best_success = index, product, success
        elif product == best_product and (success or not best_success):
            best, best_success = index, best_success or success
    return best


Edit = Callable[[Any, str, str], Any]
"""``edit(image, prompt, negative_prompt) -> edited image`` at the input image's size."""


@dataclass
class EditTry:
    input_image: Any
    prompt: str
    negative_prompt: str
    output_image: Any
    judgement: Judgement | None = None


@dataclass
class ReasoningResult:
    """Every try in order, the instruction after thinking (None without it) and the chosen try."""

    tries: list[EditTry]
    reformat_prompt: str | None
    final_index: int
    reflection_enabled: bool
    thinking_enabled: bool = False

    @property
    def images(self) -> list[Any]:
        return [t.output_image for t in self.tries]

    @property
    def final_image(self) -> Any:
        return self.tries[self.final_index].output_image

    @property
    def think_info(self) -> list[str] | None:
        """Each try's reflection. The release's ``__call__`` creates the list when thinking or reflection is
        on and fills it only when judging, so thinking alone gives ``[]`` and neither gives None."""
        if self.reflection_enabled:
            return [t.judgement.reflection for t in self.tries]
        return [] if self.thinking_enabled else None

    @property
    def best_info(self) -> list[dict] | None:
        """Each try's scores; ``[]`` / None like :attr:`think_info`."""
        if self.reflection_enabled:
            return [t.judgement.best_info for t in self.tries]
        return [] if self.thinking_enabled else None


def reasoning_edit(edit: Edit, thinker: Thinker, source: Any, instruction: str, max_tries: int = 3,
                   thinking: bool = False, reflection: bool = True, negative_prompt: str = "") -> ReasoningResult:
    """The release's loop (``__call__``): optional thinking, then edit → judge → act, at most ``max_tries`` edits.

    ``<#Success>``/``<#Others>`` stop; ``<#Reflection> new`` edits the previous output with ``new``;
    anything else restarts from ``source`` with the (thought) instruction. Judging always compares with
    ``source`` and the (thought) instruction. Without reflection there is exactly one edit.
    """
    prompt = thinker.think(source, instruction) if thinking else instruction
    reformat_prompt = prompt if thinking else None
    tries: list[EditTry] = []
    image, current = source, prompt
    for _ in range(max_tries if reflection else 1):
        output = edit(image, current, negative_prompt)
        attempt = EditTry(image, current, negative_prompt, output)
        tries.append(attempt)
        if not reflection:
            break
        attempt.judgement = thinker.judge(source, output, prompt)
        success, new_instruction = reflection_outcome(attempt.judgement.reflection)
        if success:
            break
        if new_instruction is not None:
            image, current = output, new_instruction
        else:
            image, current = source, prompt
    final = choose_best([t.judgement.best_info for t in tries], [t.judgement.reflection for t in tries]) \
        if reflection else 0
    return ReasoningResult(tries, reformat_prompt, final, reflection, thinking)


def describe(result: ReasoningResult, instruction: str) -> str:
    """A readable account of a reasoning edit: instruction, thought instruction, every try, the choice."""
    lines = [f"Instruction: {instruction}"]
    if result.reformat_prompt is not None:
        lines.append(f"Thought instruction: {result.reformat_prompt}")
    for index, attempt in enumerate(result.tries):
        source = "the input image" if index == 0 or attempt.input_image is result.tries[0].input_image \
            else f"the output of try {index}"
        lines.append(f"Try {index + 1}: edited {source} with {attempt.prompt!r}")
        if attempt.judgement is not None:
            best = attempt.judgement.best_info
            lines.append(f"  reflection: {attempt.judgement.reflection}")
            lines.append(f"  scores: edit success, over-editing {best['score1'].get('score')}; "
                         f"naturalness, artifacts {best['score2'].get('score')}")
    lines.append(f"Chosen: try {result.final_index + 1} of {len(result.tries)}")
    return "\n".join(lines)
