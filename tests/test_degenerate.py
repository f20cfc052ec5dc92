"""Degenerate model text: loops get `repetitive` in `finished`, judge rationales that loop or parrot
are `judge_error`, revisions that describe revising are `revise_error`; healthy texts of the same
shapes (long answers, lists, code with repeated lines, poems with refrains, Chinese) pass.

The degenerate texts are written the way SmolLM2-135M writes them at low temperature."""

from __future__ import annotations

import json
import re

import pytest

from datagen.text.degenerate import MIN_DISTINCT, is_repetitive, rationale_problem, repetition, revision_problem
from datagen.steps.finished import FinishedConfig
from datagen.steps.judge import JudgeConfig, JudgeStage
from datagen.steps.revise import ReviseConfig, ReviseStage
from helpers import RIGHT, ScriptedModel, candidate_frame, samples_frame

# --- recorded degenerate texts -------------------------------------------------------------------

LOOP_SENTENCE = (
    "To find the number of minutes in 3.5 hours, we need to multiply 3.5 by 60. "
    + "The answer is 210 minutes. The answer is 210 minutes. " * 14
)
LOOP_AFTER_GOOD_START = (
    "Volcanoes form where magma from deep inside the Earth rises through cracks in the crust. Over many "
    "eruptions, layers of lava and ash build up a mountain. Some volcanoes, like those in Hawaii, erupt gently, "
    "while others explode violently because their magma is thick and full of gas. "
    + "The volcano is a volcano that is a volcano that is a volcano. " * 12
)
LOOP_CUT_OFF = "I'm sorry, but I can't assist with that. " * 9 + "I'm sorry, but I can"
WORD_LOOP = "Rivers rivers rivers rivers " * 10
CHINESE_LOOP = "河流是水的通道。" + "河流是河流的河流。" * 12
LIST_LOOP = "\n".join(["1. The bridge is a bridge.", "2. The bridge is a bridge.", "3. The bridge is a bridge."] * 5)

LOOPING_RATIONALE = "the response-{code} is a reference to the response-{code} " * 4
LOOPING_RATIONALE_NO_CODE = "The response is good. The response is good. The response is good. " * 4

META_REVISIONS = [
    "To rewrite the original response, I will focus on providing a clear and concise answer to the question "
    "about minutes in 3.5 hours.",
    "I will revise the response to make it more helpful and honest, by adding the calculation.",
    "The revised response should explain that one hour has 60 minutes and then multiply.",
    "In the revised response, I removed the refusal and added the calculation of 3.5 x 60.",
    "The original response was not helpful because it refused to answer a simple question.",
    "Here's how I would revise the response: first, remove the refusal, then answer the question.",
]

# --- healthy texts that must pass ------------------------------------------------------------------

LONG_ANSWER = (
    "Bridges carry loads across gaps by turning weight into forces that their materials can resist. A beam "
    "bridge is the simplest: a horizontal span resting on supports, where the top of the beam is squeezed and "
    "the bottom is stretched. Arch bridges push the load outward along a curve into abutments at each end, which "
    "is why stone arches built by the Romans still stand. Suspension bridges hang the deck from cables draped "
    "over tall towers and anchored in the ground; the cables are in tension and the towers in compression. "
    "Cable-stayed bridges connect the deck directly to the towers with straight cables, which suits medium spans. "
    "Engineers choose among these by the length of the gap, the ground at each end, the traffic the bridge must "
    "carry, wind and earthquakes, and the budget. Modern designs are checked with computer models and, for long "
    "spans, wind-tunnel tests of scale models, because the Tacoma Narrows collapse in 1940 showed that wind can "
    "make a deck twist until it fails."
)
NUMBERED_LIST = "\n".join(
    f"{i}. Step {i}: {task}." for i, task in enumerate(
        ["measure the span of the river", "test the soil at both banks", "choose a beam, arch or suspension design",
         "estimate the loads from traffic and wind", "draw the plans and check them with software",
         "build the foundations and piers", "place the deck and the railings", "inspect the bridge before opening"], 1)
)
CODE = '''def add_matrices(a, b):
    rows = len(a)
    cols = len(a[0])
    result = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    for i in range(rows):
        for j in range(cols):
            result[i][j] = a[i][j] + b[i][j]
    return result

assert add_matrices([[1, 2, 3]] * 3, [[1, 1, 1]] * 3) == [[2, 3, 4]] * 3
assert add_matrices([[0, 0, 0]] * 3, [[5, 6, 7]] * 3) == [[5, 6, 7]] * 3
assert add_matrices([[9, 9, 9]] * 3, [[1, 1, 1]] * 3) == [[10, 10, 10]] * 3
'''
POEM = """The river runs beneath the hill,
Row, row, the water's song;
It carries leaves and stones at will,
Row, row, the water's song.

At dawn the herons wade and wait,
Row, row, the water's song;
The fishermen are never late,
Row, row, the water's song.

And when the autumn rains come down,
Row, row, the water's song;
It floods the fields beside the town,
Row, row, the water's song."""
CHINESE_ANSWER = (
    "河流是陆地上流动的水，它们从山上的泉水和融化的雪开始，沿着地势流向湖泊或大海。"
    "一条河流会带走泥沙，在下游形成平原和三角洲，为农业提供肥沃的土地。"
    "人们自古以来就在河边居住，利用河水灌溉、运输和发电，因此许多城市都建在大河旁边。"
)
HEALTHY = {"long answer": LONG_ANSWER, "numbered list": NUMBERED_LIST, "code with repeated lines": CODE,
           "poem with a refrain": POEM, "chinese prose": CHINESE_ANSWER, "short answer": RIGHT}
LOOPS = {"sentence loop": LOOP_SENTENCE, "loop after a good start": LOOP_AFTER_GOOD_START, "cut-off refusal loop": LOOP_CUT_OFF,
         "word loop": WORD_LOOP, "chinese loop": CHINESE_LOOP, "list of one line": LIST_LOOP}


@pytest.mark.parametrize("name", LOOPS)
def test_loops_are_repetitive(name):
    assert is_repetitive(LOOPS[name]), repetition(LOOPS[name])


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_texts_are_not_repetitive(name):
    figures = repetition(HEALTHY[name])
    assert not figures.repetitive, figures
    if figures.distinct is not None:
        assert figures.distinct > MIN_DISTINCT + 0.2, "well clear of the threshold, not just under it"


def test_finished_reasons_and_precedence():
    rows = [
        {"completion": LOOP_SENTENCE, "finish_reason": "stop"},
        {"completion": LOOP_CUT_OFF, "finish_reason": "length", "sampling": json.dumps({"max_tokens": 64})},
        {"completion": LONG_ANSWER[:300], "finish_reason": "length", "sampling": json.dumps({"max_tokens": 64})},
        {"completion": "   ", "finish_reason": "stop"},
        {"completion": POEM, "finish_reason": "stop"},
        {"completion": CODE, "finish_reason": "stop"},
    ]
    out = FinishedConfig().build()(candidate_frame(rows))
    assert out["finished_reason"].to_list() == ["repetitive", "repetitive", "truncated", "empty", None, None]
    assert out["finished_keep"].to_list() == [False, False, False, False, True, True]
    assert out["finished_max_tokens"].to_list() == [None, 64, 64, None, None, None], "a cut-off row shows the limit it hit"
    kept = FinishedConfig(drop_repetitive=False).build()(candidate_frame(rows[:1]))
    assert kept["finished_keep"].to_list() == [True]


# --- judge ---------------------------------------------------------------------------------------


def judge_with(rationale_for) -> JudgeStage:
    """A judge model whose rationale is `rationale_for(code, candidate)` and every score 5."""

    def reply(request, index):
        content = request.messages[-1]["content"]
        code = re.search(r"CODE: ([0-9a-f]{16})", content).group(1)
        candidate = re.search(r"<response-[0-9a-f]{16}>\n(.*?)\n</response-", content, re.S).group(1)
        scores = dict(helpfulness=5, correctness=5, instruction_following=5, clarity=5)
        return json.dumps({"rationale": rationale_for(code, candidate)[:300], **scores})

    model = ScriptedModel(reply=reply)
    return JudgeStage(JudgeConfig(rubric="helpfulness", min_score=3), backend_factory=lambda: model)


@pytest.mark.parametrize(
    ("rationale_for", "problem"),
    [
        (lambda code, candidate: LOOPING_RATIONALE.format(code=code), "repetition loop"),
        (lambda code, candidate: f"The response-{code} is a reference to the prompt-{code}.", "fence markers"),
        (lambda code, candidate: LOOPING_RATIONALE_NO_CODE, "repetition loop"),
        (lambda code, candidate: candidate, "copies the response"),
        (lambda code, candidate: "Tell me about bridges, their history and how engineers choose a design at a hard level.", "copies the prompt"),
        (lambda code, candidate: "", "says nothing"),
    ],
    ids=["loops on the fence", "quotes the fence", "loops", "parrots the candidate", "parrots the prompt", "empty"],
)
def test_degenerate_rationales_are_judge_errors_never_scores(rationale_for, problem):
    asked = [{"role": "user", "content": "Tell me about bridges, their history and how engineers choose a design at a hard level."}]
    out = judge_with(rationale_for)(samples_frame({"p": [LONG_ANSWER]}, messages=asked))
    row = out.to_dicts()[0]
    assert row["judge_score"] is None and row["judge_helpfulness"] is None, "no score from a degenerate verdict"
    assert problem in row["judge_error"]
    assert row["judge_keep"] and row["judge_reason"] is None  # on_error: keep, but as an error, not a score


def test_sound_rationales_keep_their_scores():
    sound = "Correct conversion of 3.5 hours to 210 minutes, with the multiplication shown; clear and complete."
    out = judge_with(lambda code, candidate: sound)(samples_frame({"p": [RIGHT, LONG_ANSWER]}))
    assert out["judge_error"].to_list() == [None, None] and out["judge_score"].to_list() == [5.0, 5.0]
    assert rationale_problem("Quotes the key step: 3.5 hours is 3.5 x 60 = 210 minutes, which is right.", [RIGHT], "abc") is None


# --- revise --------------------------------------------------------------------------------------

REFUSAL = "I'm sorry, but I can't help with homework questions. Please ask your teacher instead."
CRITIQUE = "The response refuses a harmless arithmetic question instead of answering it, which is not helpful."


def revise_with(revision: str):
    def reply(request, index):
        return CRITIQUE if request.messages[-1]["content"].startswith("Critique request:") else revision

    model = ScriptedModel(reply=reply)
    return ReviseStage(ReviseConfig(), backend_factory=lambda: model)(candidate_frame([{"completion": REFUSAL}])).to_dicts()[0]


@pytest.mark.parametrize("revision", META_REVISIONS)
def test_revisions_that_describe_revising_are_errors(revision):
    row = revise_with(revision)
    assert row["revise_revision"] is None and "describes the revision" in row["revise_error"]


@pytest.mark.parametrize(
    ("revision", "problem"),
    [
        ("The response refuses a harmless arithmetic question instead of answering it, which is not helpful at all.", "repeats the critique"),
        ("Sure! " + "3.5 hours is 210 minutes. " * 12, "repetition loop"),
    ],
)
def test_revisions_that_restate_the_critique_or_loop_are_errors(revision, problem):
    assert problem in revise_with(revision)["revise_error"]


@pytest.mark.parametrize("revision", [RIGHT, LONG_ANSWER, POEM, CODE, "To rewrite a fraction as a decimal, divide: 7/2 = 3.5, so 3.5 hours is 210 minutes."])
def test_real_revisions_pass(revision):
    row = revise_with(revision)
    assert row["revise_error"] is None and row["revise_revision"] == revision.strip()
    assert revision_problem(revision, CRITIQUE, REFUSAL) is None
