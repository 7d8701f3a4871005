"""v1.2 thinker logic (model/reasoning/) against golden ``thinker_v1_2/``: exact prompts,
answer parsing and caps, retry fallbacks, and whole reflection loops replayed from scripted answers."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import pytest
from PIL import Image

from model.reasoning import thinker as T
from model.reasoning import thinker_prompts as P
from tests.golden import GOLDEN_DIR

SET_DIR = GOLDEN_DIR / "thinker_v1_2"
pytestmark = pytest.mark.skipif(not (SET_DIR / "manifest.json").is_file(), reason="no thinker_v1_2 golden set")
PRIOR_LINE = re.compile(r"^\s*(- Score: .*|- Reason: .*)$", re.M)
FAILING_ANSWER = {"description": "错误: scripted failure", "consistency": "no json here", "reflection": "no tags",
                  "score1": "bad", "score2": "bad"}


@lru_cache(maxsize=None)
def fixture(name: str) -> dict:
    return json.loads((SET_DIR / name).read_text())


def section(file: str, key: str) -> list:
    return fixture(file)[key] if (SET_DIR / file).is_file() else []


@dataclass(frozen=True)
class Named:
    """A stand-in image: the fixtures name images instead of holding pixels."""

    name: str
    size: tuple[int, int]


class ScriptedVLM:
    """Replays scripted answers in order, checks each request's kind and records the requests."""

    def __init__(self, script: list[dict]):
        self.script = list(script)
        self.requests: list[P.VLMRequest] = []

    def __call__(self, request: P.VLMRequest) -> str:
        assert self.script, f"unscripted {request.kind} call"
        expected = self.script.pop(0)
        assert request.kind == expected["kind"], f"call {len(self.requests)}: {request.kind} != {expected['kind']}"
        self.requests.append(request)
        return expected["answer"]


# ---- prompts ---------------------------------------------------------------------------------------

def _prompt_cases():
    return [(lang, call) for lang, p in section("prompts.json", "prompts").items() for call in p["calls"]]


@pytest.mark.parametrize("lang,call", _prompt_cases(), ids=lambda x: x if isinstance(x, str) else x["kind"])
def test_requests_are_the_release_prompts(lang, call):
    p = fixture("prompts.json")["prompts"][lang]
    instruction = p["instruction"]
    assert P.answer_language(instruction) == p["language_type"]
    answers = {c["kind"]: c["answer"].strip() for c in p["calls"]}
    evaluation = T.parse_consistency(answers["consistency"])
    source, edited = "<IMAGE:source>", "<IMAGE:edited>"
    build = {
        "think": lambda: P.think_request(source, instruction),
        "description": lambda: P.description_request(source, instruction),
        "consistency": lambda: P.consistency_request(edited, instruction, answers["description"]),
        "reflection": lambda: P.reflection_request(source, edited, instruction, evaluation),
        "score1": lambda: P.score1_request(source, edited, instruction),
        "score2": lambda: P.score2_request(edited),
    }
    request = build[call["kind"]]()
    assert request.max_tokens == call["max_tokens"]
    assert request.messages == call["messages"]
    rewritten = P.rewrite_image_parts(request.messages)
    assert rewritten == call["messages_after_rewrite"]
    assert P.chat_text(rewritten) == call["chat_text"]


# ---- parsing ---------------------------------------------------------------------------------------

def consistency_call(answer: str) -> dict:
    return T.parse_consistency(T.ask(lambda r: answer, P.consistency_request("img", "x", "d")))


@pytest.mark.parametrize("case", section("parsing.json", "consistency"), ids=lambda c: c["answer"][:40])
def test_consistency_caps(case):
    assert T.parse_json_block(case["answer"].strip()) == case["parsed_json"]
    if case["result"] is None:
        with pytest.raises(T.MalformedAnswer):
            consistency_call(case["answer"])
    else:
        assert consistency_call(case["answer"]) == case["result"]


@pytest.mark.parametrize("case", section("parsing.json", "reflection"), ids=lambda c: c["answer"][:40])
def test_reflection_validation_and_loop_action(case):
    answer = case["answer"].strip()
    if not case["accepted"]:
        with pytest.raises(T.MalformedAnswer) as err:
            T.parse_reflection(answer)
        assert str(err.value) == case["error"]
        return
    returned = T.parse_reflection(answer)
    assert returned == case["returned"]
    assert T.is_well_formed(returned) == case["validate_string"]
    assert T.reflection_outcome(returned) == (case["success"], case["reflection_prompt"])


@pytest.mark.parametrize("case", section("parsing.json", "format_text"), ids=lambda c: c["text"][:40])
def test_format_text(case):
    assert T.is_well_formed(case["text"]) == case["validate_string"]
    assert list(T.reflection_outcome(case["text"])) == case["format_text"]


@pytest.mark.parametrize("case", section("parsing.json", "score"), ids=lambda c: c["answer"][:40])
def test_score_validation(case):
    if not case["accepted"]:
        with pytest.raises(T.MalformedAnswer):
            T.parse_score(T.ask(lambda r: case["answer"], P.score2_request("img")))
        return
    parsed = T.parse_score(case["answer"])
    assert parsed == case["parsed"]
    expected_min = case["min_score"]
    assert T.score_min(parsed["score"]) == (None if isinstance(expected_min, str) else expected_min)


@pytest.mark.parametrize("case", section("parsing.json", "analyze_text"), ids=lambda c: c["text"])
def test_language_detection(case):
    assert P.answer_language(case["text"]) == case["language_type"]


@pytest.mark.parametrize("case", section("parsing.json", "image_to_data_url"), ids=lambda c: str(c["input_wh"]))
def test_thumbnail_sizes(case):
    image = Image.new("RGBA", tuple(case["input_wh"]))
    sent = P.thumbnail_for_vlm(image)
    assert list(sent.size) == case["sent_wh"] and sent.mode == "RGB"


def _fallback_script(case: dict) -> list[dict]:
    """Scripted answers for a recorded call sequence. Each run of calls of one kind is failures then one
    success, except a run that gave up: a best-of score equal to the failure record, or the last
    description/consistency/reflection run when the reflection is the failure record."""
    full, best = case["run_full_pipeline"], case["run_best_pipeline"]
    prior = dict(re.findall(r"- (Score|Reason): (.*)", case.get("reflection_prompt_prior", "")))
    completed = full["reflection"] != T.FAILED_REFLECTION
    evaluation = full["evaluation"] if completed else {
        "meets_instruction": "yes", "raw_score": float(prior.get("Score", 9)), "reason": prior.get("Reason", "ok")}
    success = {
        "description": full["generation"] if completed else "A description.",
        "consistency": json.dumps({k: v for k, v in evaluation.items() if k not in ("score", "cap_trace")}),
        "reflection": full["reflection"] if completed else "<#Think> ok <#Success>",
        "score1": json.dumps(best["score1"]), "score2": json.dumps(best["score2"]),
    }
    runs: list[list[str]] = []
    for kind in case["calls"]:
        if runs and runs[-1][0] == kind:
            runs[-1].append(kind)
        else:
            runs.append([kind])
    full_runs = [r for r in runs if r[0] not in ("score1", "score2")]
    script = []
    for run in runs:
        kind = run[0]
        if kind in ("score1", "score2"):
            gave_up = best[kind] == T._failed_score(kind)
        else:
            gave_up = full["reflection"] == T.FAILED_REFLECTION and run is full_runs[-1]
        assert not gave_up or len(run) == T.MAX_ATTEMPTS
        script += [{"kind": kind, "answer": FAILING_ANSWER[kind]}] * (len(run) - (0 if gave_up else 1))
        if not gave_up:
            script.append({"kind": kind, "answer": success[kind]})
    return script


@pytest.mark.parametrize("name", list(section("parsing.json", "retry_fallbacks")))
def test_retry_fallbacks(name):
    case = fixture("parsing.json")["retry_fallbacks"][name]
    vlm = ScriptedVLM(_fallback_script(case))
    judgement = T.Thinker(vlm).judge(Named("source", (64, 48)), Named("edited", (64, 48)), "Make it red.")
    assert [r.kind for r in vlm.requests] == case["calls"]
    assert len(vlm.requests) == case["answers_used"] and not vlm.script
    full = case["run_full_pipeline"]
    assert (judgement.description, judgement.evaluation, judgement.reflection) == (
        full["generation"], full["evaluation"], full["reflection"])
    assert judgement.best_info == case["run_best_pipeline"]
    if "reflection_prompt_prior" in case:
        reflection = next(r for r in vlm.requests if r.kind == "reflection")
        text = reflection.messages[1]["content"][-1]["text"]
        assert PRIOR_LINE.findall(text) == PRIOR_LINE.findall(case["reflection_prompt_prior"])


# ---- whole loops -----------------------------------------------------------------------------------

@pytest.mark.parametrize("trace", section("traces.json", "traces"), ids=lambda t: t["name"])
def test_reflection_loop_trace(trace):
    first = trace["tries"][0]
    source = Named(first["input_image"], tuple(first["input_size_wh"]))
    vlm = ScriptedVLM(trace["vlm_calls"])
    edits = []

    def edit(image, prompt, negative_prompt):
        output = Named(f"IMAGE:output_try{len(edits) + 1}", image.size)
        edits.append({"input_image": image.name, "input_size_wh": list(image.size), "prompt": prompt,
                      "negative_prompt": negative_prompt, "output_image": output.name})
        return output

    kwargs = trace["call_kwargs"]
    result = T.reasoning_edit(edit, T.Thinker(vlm), source, trace["instruction"],
                              max_tries=kwargs.get("max_try_cnt", trace["max_try_cnt"]),
                              thinking=kwargs.get("enable_thinking_mode", False),
                              reflection=kwargs.get("enable_reflection_mode", True))
    assert edits == [{k: t[k] for k in edits[0]} for t in trace["tries"]]
    assert [t["try_index"] for t in trace["tries"]] == list(range(1, len(edits) + 1))
    out = trace["output"]
    assert [image.name for image in result.images] == out["images"]
    assert result.think_info == out["think_info"]
    assert result.best_info == out["best_info"]
    assert [result.final_image.name] == out["final_images"]
    assert result.reformat_prompt == out["reformat_prompt"]
    priors = [PRIOR_LINE.findall(r.messages[1]["content"][-1]["text"]) for r in vlm.requests if r.kind == "reflection"]
    assert [[line.strip() for line in p] for p in priors] == trace["reflection_prior"]
    assert len(vlm.script) == (trace["script_left"] or 0)
    for request in vlm.requests:
        images = [getattr(i, "name", i) for i in P.request_images(request.messages)]
        expected = {"think": ["IMAGE:source"], "description": ["IMAGE:source"], "score2": ["edited"],
                    "consistency": ["edited"], "reflection": ["IMAGE:source", "edited"],
                    "score1": ["IMAGE:source", "edited"]}[request.kind]
        assert [n if n == "IMAGE:source" else "edited" for n in images] == expected


def test_unrankable_scores_never_crash_the_choice():
    info = [{"score1": {"score": []}, "score2": {"score": [9]}},
            {"score1": {"score": [3, 4]}, "score2": {"score": [5]}},
            {"score1": {"score": ["8", 6]}, "score2": {"score": [9]}}]
    assert T.choose_best(info, ["", "", ""]) == 1
    assert T.choose_best(info[:1], [""]) == 0


def test_error_answer_to_thinking_raises():
    with pytest.raises(T.MalformedAnswer, match="think"):
        T.Thinker(lambda r: " 错误: busy").think("img", "Make it red.")


@pytest.mark.parametrize("thinking, reflection_lists", [(True, []), (False, None)], ids=["thinking", "neither"])
def test_without_reflection_one_edit_and_the_releases_empty_lists(thinking, reflection_lists):
    """Reflection off: one edit with the (thought) instruction, no judging. The release's ``think_info`` /
    ``best_info`` are the empty lists it creates when thinking is on, and absent (None) when it is off."""
    script = [{"kind": "think", "answer": '  Change the sign text to "OPEN".  '}] if thinking else []
    vlm = ScriptedVLM(script)
    edits = []

    def edit(image, prompt, negative_prompt):
        edits.append((image.name, prompt, negative_prompt))
        return Named("IMAGE:output_try1", image.size)

    instruction = 'Change the sign text to "OPEN" and make the sky orange.'
    result = T.reasoning_edit(edit, T.Thinker(vlm), Named("IMAGE:source", (64, 48)), instruction, max_tries=3,
                              thinking=thinking, reflection=False, negative_prompt="blurry")
    prompt = 'Change the sign text to "OPEN".' if thinking else instruction
    assert edits == [("IMAGE:source", prompt, "blurry")]
    assert [r.kind for r in vlm.requests] == (["think"] if thinking else []) and not vlm.script
    assert result.reformat_prompt == (prompt if thinking else None)
    assert result.think_info == reflection_lists and result.best_info == reflection_lists
    assert [image.name for image in result.images] == ["IMAGE:output_try1"]
    assert result.final_image.name == "IMAGE:output_try1"
