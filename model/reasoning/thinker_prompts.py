"""The v1.2 thinker's requests: prompt texts, message layout, image rewrite and chat text.

Pure Python (PIL for the thumbnail). The texts are the release's ``ImageEditEvaluator_EN`` prompts
(diffusers fork, branch ``step1xedit_v1p2``, ``pipeline_step1x_edit_thinker.py``), with the values it
inserts written as ``{instruction}``, ``{language}``, ``{description}``, ``{score}`` and ``{reason}``;
whitespace, including the indentation of the triple-quoted originals, is part of the prompt.
Images in messages are whatever object the caller passes (a PIL image at run time, a name in tests).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..vlm.prompt import IMAGE_PLACEHOLDER

# analyze_text: more than one CJK ideograph (U+4E00–U+9FFF) makes an instruction Chinese; the English
# prompts then name the answer language with these literal words.
CJK_IDEOGRAPH = re.compile("[\u4e00-\u9fff]")
CHINESE, ENGLISH = "中文", "英文"
# image_to_data_url: images are thumbnailed (aspect kept) to this longest side before PNG encoding.
MAX_IMAGE_SIDE = 1024
# The chat template's turn markers (Qwen2.5-VL, generation prompt on, no "Picture N:" labels).
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# Requested answer lengths per call (``max_tokens``); the release's client ignores them and always
# generates at most RELEASE_MAX_NEW_TOKENS (``QwenGenerativeAIClient``).
MAX_TOKENS = {"think": 512, "description": 768, "consistency": 1024, "reflection": 768, "score1": 768, "score2": 768}
RELEASE_MAX_NEW_TOKENS = 128
RELEASE_TOP_P = 0.9
RELEASE_TEMPERATURE = 0.7

THINK_SYSTEM = (
    "You are an Edit Task Instruction Rewriter. Your role is to maintain the original meaning while "
    "transforming vague, colloquial, or imprecise instructions into clear, standardized, and "
    "actionable ones. If the instructions are already sufficiently clear, they should be returned "
    "without modification."
)
THINK_USER = (
    "You are an 'editing task instruction rewriter'. Your task is:\n"
    "While keeping the meaning completely unchanged, convert the user's vague, colloquial, or "
    "informal editing instruction into a clear, standard, and actionable instruction.\n"
    "When the user's input contains complex meanings, break it down into two to three simple, clear "
    "editing instructions. Ensure these instructions do not conflict with each other and retain only "
    "the meaningful ones. Output only the rewritten content.\n"
    "The final editing instruction should preferably contain only one editing action. If the meaning "
    "is too complex to be described with a single action, the total number of actions must not "
    "exceed three.\n"
    "If the input includes explicit text modifications, enclose the text to be changed in double "
    "quotes.\n"
    "Editing types mainly include: object addition, object replacement, object deletion, color "
    "modification, background replacement, style change, material change, and text replacement.\n"
    "Where possible, the final instruction should include the editing location, the action (see the "
    "editing types), and the object being edited. Follow natural-language conventions; numbering is "
    "not allowed—use natural-language sequencing instead.\n"
    "If the user's input requires understanding and reasoning, think about where the final image "
    "will change based on the user's description, rather than returning a result prior to such "
    "reasoning.\n"
    "Rewrite in the style of the following examples.\n"
    "Example 1: User input: 'Symptoms of potassium deficiency in leaves' → Rewritten: 'Leaves turn "
    "yellow, and the tips dry out.'\n"
    "Example 2: User input: 'Make the bread look over-fried' → Rewritten: 'Change the bread’s color "
    "to a dark, toasted brown.'\n"
    "Example 3: User input: 'Photoshop me a boyfriend; make it a two-person photo' → Rewritten: 'Add "
    "a man next to the woman.'\n"
    "Example 4: User input: 'Improve this image, remove the distant power lines, keep a realistic "
    "style' → Rewritten: 'Remove the power lines.'\n"
    "Example 5: User input: 'Change “TOFEL” in the image to “IELTS”' → Rewritten: 'Replace the text "
    "\"TOFEL\" with \"IELTS\".'\n"
    "Example 6: User input: 'Make it an ID photo.' → Rewritten: 'Replace the background with white.'\n"
    "Example 7: User input: 'Change the tie to black.' → Rewritten: 'Change the tie color to black.'\n"
    "Example 8: User input: 'Remove the watermark in the bottom-right corner.' → Rewritten: 'Remove "
    "the bottom-right watermark.'\n"
    "Example 9: User input: 'Increase hair volume. Change the hairstyle to long hair. Make the "
    "person look gentler.' → Rewritten: 'Increase the amount of hair to make the person look "
    "gentler.'\n"
    "User input instruction:{instruction}\n"
    "Your returned instruction must be in {language}. Your returned instruction must be in "
    "{language}. Your returned instruction must be in {language}.\n"
    "The returned instruction is:"
)
DESCRIPTION_SYSTEM = (
    "You are a precise visual-to-text describer. Your goal is to produce a concise, factual "
    "{language} description of the **final target image** that would be obtained after applying the "
    "edit instruction to the input image. Only describe what is explicitly visible in the final "
    "target image."
)
DESCRIPTION_USER = (
    "You will see an input image and an editing instruction. Please generate a {language} "
    "description of the **target image**, strictly following these principles:\n"
    "1. **Strictly execute instruction modifications**: Any content explicitly required by the "
    "instruction must be accurately reflected in the description, without omission or substitution "
    "that conflicts with the instruction.\n"
    "2. **Unmodified parts**: Should remain consistent with the input image, but if keeping them "
    "causes conflict with the instruction, they must be replaced with a reasonable and concise form "
    "in line with the instruction’s intent (e.g., if the instruction requires an ID photo, the "
    "background must follow ID photo standards, and the original scene must not be retained).\n"
    "3. **No hallucination**: Do not add, speculate, substitute, or embellish any elements not "
    "explicitly present in the instruction or input image (including location, environment, time, "
    "lighting, character identity, clothing details, object materials, etc.).\n"
    "4. **Keep it concise**: Provide one clear {language} description of the target image, "
    "accurately conveying the key visible people, objects, poses, background, and colors; avoid "
    "phrases like “original image,” “remains unchanged,” or “required by the instruction.”\n"
    "5. **Faithfulness first**: If there is a conflict between the input image and the instruction, "
    "follow the instruction; do not mix in elements that contradict it.\n"
    "\n"
    "Editing Instruction: {instruction}\n"
    "Please directly provide the description of the target image:"
)
CONSISTENCY_SYSTEM = (
    "You are a strict image-text consistency evaluator, and you should only output strict JSON."
)
CONSISTENCY_USER = (
    "Under the premise of satisfying the [editing instruction], evaluate the consistency between the "
    "[image] and the [text description].\n"
    "            Please output only one JSON object containing the following keys:\n"
    "            - meets_instruction: \"yes\" | \"partial\" | \"no\"\n"
    "            - major_conflicts: Non-negative integer\n"
    "            - minor_conflicts: Non-negative integer\n"
    "            - omissions:       Non-negative integer\n"
    "            - raw_score:       Floating-point number from 0 to 10\n"
    "            - reason:          Brief reasoning in {language}: first state whether the "
    "instruction is satisfied, then point out the main consistencies/inconsistencies.\n"
    "            Judgment points:\n"
    "            1) Instruction satisfaction takes priority;\n"
    "            2) Obvious contradictions count as major_conflicts; minor discrepancies count as "
    "minor_conflicts;\n"
    "            3) If the description omits key elements present in the image, count them as "
    "omissions;\n"
    "            4) raw_score should follow the 0..10 scale, but do not include any extra text.\n"
    "\n"
    "            [Editing Instruction]\n"
    "            {instruction}\n"
    "\n"
    "            [Text Description]\n"
    "            {description}\n"
    "            "
)
REFLECTION_SYSTEM = (
    "You are a strict image editing result reviewer and must strictly adhere to the output format "
    "requirements provided by the user."
)
REFLECTION_USER = (
    "\n"
    "        The first image is the input; the second image is the result after applying the image "
    "\"edit instruction\".\n"
    "        The current edit instruction is: \n"
    "            {instruction}\n"
    "            I hope you can determine, based on the content of the second image and the editing "
    "instruction, whether the edited result meets the requirements, and return strictly in one of "
    "the following formats:\n"
    "        ```\n"
    "        <#Think> ...\n"
    "        <#Reflection> ...\n"
    "        ```\n"
    "        or\n"
    "        ```\n"
    "        <#Think> ...\n"
    "        <#Failed>\n"
    "        ```\n"
    "        or\n"
    "        ```\n"
    "        <#Think> ...\n"
    "        <#Success>\n"
    "        ```\n"
    "        After <#Think>, include the reasoning process; if <#Reflection> appears, it means the "
    "image did not fully follow the instruction and further modification is needed—append a "
    "\"secondary editing instruction\" after <#Reflection>; if <#Failed> appears, it is impossible to "
    "further modify the current result to meet the instruction; if <#Success> appears, the editing "
    "is successful.\n"
    "        Now check the image and the instruction using the following criteria:\n"
    "        1. Strictly check for obvious breakage or artifacts; if none are present, remove any "
    "mention of breakage from the above description; in particular, remove hand-related "
    "breakage/artifacts unless they are very severe.\n"
    "        2. If the semantic change of the background is basically correct and no obvious "
    "distortion appears, the corrected result must not contain the corresponding descriptions.\n"
    "        3. Ensure regions not mentioned by the instruction remain unchanged; if the second "
    "image introduces unexpected changes that drastically alter regions that should not change, "
    "making it impossible to continue editing based on the second image, return <#Failed> and state "
    "that a compliant editing instruction cannot be generated.\n"
    "        4. Ensure the reflection instruction after <#Reflection> is significantly different "
    "from the original instruction; if they are essentially the same, discard the case as the model "
    "lacks true editing ability.\n"
    "        5. Ensure the reflection content and any new editing instruction you return are "
    "correct.\n"
    "        6. <#Reflection> and <#Failed> may appear only once and must come after <#Think>.\n"
    "        7. In the new instruction after <#Reflection>, remove content already successfully "
    "edited in the current result to reduce duplication with the original instruction.\n"
    "        Emphasis: the instruction after <#Reflection> must be based on the second image and "
    "must not rely on information from the first image.\n"
    "        Then:\n"
    "        1. If compliant data can be obtained by further editing the current result, return only "
    "the reflection content and the secondary editing instruction in the format: "
    "<#Think>...<#Reflection>..., and nothing else.\n"
    "        2. If compliant data cannot be generated, return only the reflection content and "
    "<#Failed> in the format: <#Think>...<#Failed>, and nothing else.\n"
    "        3. If the editing is already successful, return only in the format: "
    "<#Think>...<#Success>, and nothing else.\n"
    "\n"
    "        [Historical Prior (from the previous independent scoring for reference only, not "
    "mandatory)]\n"
    "        - Score: {score}\n"
    "        - Reason: {reason}\n"
    "        Please fully refer to the prior information, but still base your judgment strictly on "
    "the actual content of the two images and the editing instruction, and provide rigorous and "
    "actionable conclusions and editing suggestions."
)
# The release's two scoring prompts open with the same header (output format and "RULES:").
SCORE_USER_HEADER = (
    "You are a professional digital artist. You will have to evaluate the effectiveness of the "
    "AI-generated image(s) based on given rules.\n"
    "        All the input images are AI-generated. All human in the images are AI-generated too. so "
    "you need not worry about the privacy confidentials.\n"
    "\n"
    "        You will have to give your output in this way (Keep your reasoning concise and short.):\n"
    "        {\n"
    "        \"score\" : [...],\n"
    "        \"reasoning\" : \"...\"\n"
    "        }\n"
    "\n"
    "RULES:\n"
    "\n"
)
SCORE1_SYSTEM = (
    "You are an expert critic of AI-generated image edits. Provide a professional, objective, and "
    "concise assessment based on the user's rules. Strictly adhere to the requested JSON output "
    "format."
)
SCORE1_USER = SCORE_USER_HEADER + (
    "        Two images will be provided: The first being the original AI-generated image and the "
    "second being an edited version of the first.\n"
    "        The objective is to evaluate how successfully the editing instruction has been executed "
    "in the second image.\n"
    "\n"
    "        Note that sometimes the two images might look identical due to the failure of image "
    "edit.\n"
    "        \n"
    "\n"
    "From scale 0 to 10: \n"
    "        A score from 0 to 10 will be given based on the success of the editing. (0 indicates "
    "that the scene in the edited image does not follow the editing instruction at all. 10 indicates "
    "that the scene in the edited image follow the editing instruction text perfectly.)\n"
    "        A second score from 0 to 10 will rate the degree of overediting in the second image. (0 "
    "indicates that the scene in the edited image is completely different from the original. 10 "
    "indicates that the edited image can be recognized as a minimal edited yet effective version of "
    "original.)\n"
    "        Put the score in a list such that output score = [score1, score2], where 'score1' "
    "evaluates the editing success and 'score2' evaluates the degree of overediting.\n"
    "\n"
    "        Editing instruction: {instruction}\n"
    "        "
)
SCORE2_SYSTEM = (
    "You are a professional digital artist. You will have to evaluate the effectiveness of the "
    "AI-generated image based on given rules. Strictly adhere to the requested JSON output format."
)
SCORE2_USER = SCORE_USER_HEADER + (
    "        The image is an AI-generated image.\n"
    "        The objective is to evaluate how successfully the image has been generated.\n"
    "\n"
    "        From scale 0 to 10: \n"
    "        A score from 0 to 10 will be given based on image naturalness. \n"
    "        (\n"
    "            0 indicates that the scene in the image does not look natural at all or give a "
    "unnatural feeling such as wrong sense of distance, or wrong shadow, or wrong lighting. \n"
    "            10 indicates that the image looks natural.\n"
    "        )\n"
    "        A second score from 0 to 10 will rate the image artifacts. \n"
    "        (\n"
    "            0 indicates that the image contains a large portion of distortion, or watermark, or "
    "scratches, or blurred faces, or unusual body parts, or subjects not harmonized. \n"
    "            10 indicates the image has no artifacts.\n"
    "        )\n"
    "        Put the score in a list such that output score = [naturalness, artifacts]\n"
    "        "
)

_FIELD = re.compile(r"\{(instruction|language|description|score|reason)\}")


def _fill(template: str, **values: str) -> str:
    """Insert values in one pass (an inserted value is never scanned for fields again)."""
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def answer_language(instruction: str) -> str:
    """``中文`` if the text holds more than one CJK ideograph, else ``英文`` (release ``analyze_text``)."""
    return CHINESE if len(CJK_IDEOGRAPH.findall(instruction)) > 1 else ENGLISH


def thumbnail_for_vlm(image: Image.Image) -> Image.Image:
    """RGB copy with the longest side at most 1024 (PIL ``thumbnail``; smaller images untouched)."""
    image = image.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return image


@dataclass(frozen=True)
class VLMRequest:
    """One generation call: which step asks, the messages as built, the release's requested length."""

    kind: str
    messages: list[dict]

    @property
    def max_tokens(self) -> int:
        return MAX_TOKENS[self.kind]


def _image(image: Any) -> dict:
    return {"type": "image_url", "image_url": {"url": image}}


def _request(kind: str, system: str, parts: list[dict]) -> VLMRequest:
    return VLMRequest(kind, [{"role": "system", "content": system}, {"role": "user", "content": parts}])


def think_request(source: Any, instruction: str) -> VLMRequest:
    user = _fill(THINK_USER, instruction=instruction, language=answer_language(instruction))
    return _request("think", THINK_SYSTEM, [_image(source), {"type": "text", "text": user}])


def description_request(source: Any, instruction: str) -> VLMRequest:
    language = answer_language(instruction)
    user = _fill(DESCRIPTION_USER, instruction=instruction, language=language)
    return _request("description", _fill(DESCRIPTION_SYSTEM, language=language),
                    [_image(source), {"type": "text", "text": user}])


def consistency_request(edited: Any, instruction: str, description: str) -> VLMRequest:
    user = _fill(CONSISTENCY_USER, instruction=instruction, language=answer_language(instruction),
                 description=description)
    return _request("consistency", CONSISTENCY_SYSTEM, [{"type": "text", "text": user}, _image(edited)])


def reflection_request(source: Any, edited: Any, instruction: str, evaluation: Mapping) -> VLMRequest:
    """The prior is the capped ``score`` (else ``raw_score``) and ``reason``, printed as Python prints them."""
    score = evaluation.get("score", evaluation.get("raw_score", "N/A"))
    user = _fill(REFLECTION_USER, instruction=instruction, score=str(score), reason=str(evaluation.get("reason", "无")))
    return _request("reflection", REFLECTION_SYSTEM, [_image(source), _image(edited), {"type": "text", "text": user}])


def score1_request(source: Any, edited: Any, instruction: str) -> VLMRequest:
    user = _fill(SCORE1_USER, instruction=instruction)
    return _request("score1", SCORE1_SYSTEM, [_image(source), _image(edited), {"type": "text", "text": user}])


def score2_request(edited: Any) -> VLMRequest:
    return _request("score2", SCORE2_SYSTEM, [_image(edited), {"type": "text", "text": SCORE2_USER}])


def rewrite_image_parts(messages: list[dict]) -> list[dict]:
    """The client's rewrite: each user image part becomes ``{"type": "image_url", "image": …}``.

    (The release means to set ``type`` to ``image`` but compares instead of assigning; the data-URL
    prefix change it also makes has no counterpart here, images stay objects.)
    """
    out = []
    for message in messages:
        content = message["content"]
        if message["role"] == "user" and isinstance(content, list):
            content = [{"type": part["type"], "image": part["image_url"]["url"]} if "image_url" in part else dict(part)
                       for part in content]
        out.append({"role": message["role"], "content": content})
    return out


def is_image_part(part: Mapping) -> bool:
    return part.get("type") == "image" or "image" in part or "image_url" in part


def chat_text(messages: list[dict]) -> str:
    """The Qwen2.5-VL chat template with the generation prompt; an image part renders as its placeholder."""
    text = ""
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = "".join(IMAGE_PLACEHOLDER if is_image_part(part) else part["text"] for part in content)
        text += f"{IM_START}{message['role']}\n{content}{IM_END}\n"
    return text + f"{IM_START}assistant\n"


def request_images(messages: list[dict]) -> list[Any]:
    """The images of a request in template order."""
    return [part.get("image", part.get("image_url", {}).get("url")) for message in messages
            if isinstance(message["content"], list) for part in message["content"] if is_image_part(part)]
