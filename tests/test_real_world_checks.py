"""Checks on real-world inputs (issue 11 and two kinds of issue 12): math answers as models and
data sets write them, Unicode forms, scripts written without spaces, texts without words, strict
JSON, uncompilable schemas and the types of a text column. Each kind is tested over siblings of
the reported input, with the right value taken from the problem itself."""

from __future__ import annotations

import json
import unicodedata

import pandas as pd
import polars as pl
import pytest

from helpers import datagen_cli, datagen_in_process
from datagen.text import strict_json
from datagen.text.answers import final_answer
from datagen.outputs.config import PairsConfig
from datagen.outputs.pairs import build_pairs
from datagen.steps.counterexample import parse_counterexample
from datagen.steps.dedup import DedupConfig, Deduplicator
from datagen.steps.verify import ContainsVerifier, ExactVerifier, JsonSchemaVerifier, MathVerifier
from datagen.steps.vote import VoteConfig
from datagen.text.normalize import normalize, tokens

# --- math answers: one parser for verify, vote and counterexample corrections ---------------------


def math(completion: str, reference: str):
    return MathVerifier().check({"completion": completion, "reference": reference})


@pytest.mark.parametrize(
    "completion",
    [
        "First I get \\boxed{5}, but that is wrong; the answer is \\boxed{7}.",
        "\\boxed{5} \\boxed{7}",  # boxes close together
        "Try \\fbox{5}. No: 3 + 4 = \\boxed{7}",  # fbox then boxed
        "Draft \\boxed{\\frac{1}{2}} and \\boxed{3}, so finally \\boxed{7}",
    ],
)
def test_the_last_box_is_the_final_answer(completion):
    assert math(completion, "7").keep
    assert math(completion, "5").reason == "wrong_answer"
    assert final_answer(completion)[1] == "7"


def test_an_empty_last_box_is_no_answer_even_after_a_right_one():
    verdict = math("\\boxed{7}, hmm, let me redo it: \\boxed{}", "7")
    assert (verdict.keep, verdict.reason) == (False, "no_answer")


def test_vote_majority_is_the_last_box_of_each_sample():
    samples = [
        "First I get \\boxed{5}, but that is wrong; the answer is \\boxed{7}.",
        "So the answer is \\boxed{7}.",
        "I think it is \\boxed{4}, no, \\boxed{7}.",
        "The answer is \\boxed{5}.",
    ]
    batch = pl.DataFrame({"prompt_id": ["p"] * 4, "sample_index": [0, 1, 2, 3], "completion": samples, "reference": ["7"] * 4})
    out = VoteConfig(ks=[1]).build()(batch)
    assert out["vote_majority"].to_list() == ["7"] * 4
    assert out["vote_pass_rate"][0] == 0.75
    assert out["vote_agreement"][0] == 0.75
    assert out["vote_answer"].to_list() == ["7", "7", "7", "5"]
    assert out["vote_correct"].to_list() == [True, True, True, False]


def test_counterexample_solutions_take_the_last_box():
    parsed = parse_counterexample("Problem: What is 3 + 4?\nSolution: It is \\boxed{5}. Wait, 3 + 4 = 7, so \\boxed{7}.")
    assert parsed["answer"] == "7" and parsed["reason"] is None


# (reference written without $, right answers, its leading number or another wrong answer)
LATEX_REFERENCES = [
    ("2\\sqrt{2}", ["\\boxed{2\\sqrt{2}}", "\\boxed{\\sqrt{8}}", "\\boxed{2 \\cdot \\sqrt{2}}"], ["\\boxed{2}", "\\boxed{\\sqrt{2}}"]),
    ("-2\\pi", ["\\boxed{-2\\pi}", "\\boxed{-\\pi \\cdot 2}"], ["\\boxed{-2}", "\\boxed{2\\pi}"]),
    ("3\\sqrt[3]{2}", ["\\boxed{3\\sqrt[3]{2}}", "\\boxed{3 \\cdot 2^{1/3}}"], ["\\boxed{3}"]),
    ("\\frac{\\sqrt{3}}{2}", ["\\boxed{\\frac{\\sqrt{3}}{2}}", "\\boxed{\\sqrt{3}/2}"], ["\\boxed{\\sqrt{3}}", "\\boxed{\\frac{1}{2}}"]),
    ("2e", ["\\boxed{2e}"], ["\\boxed{2}"]),
    ("\\pi^2", ["\\boxed{\\pi^2}", "\\boxed{\\pi \\cdot \\pi}"], ["\\boxed{\\pi}", "\\boxed{2}"]),
    ("4\\ln 2", ["\\boxed{4\\ln 2}", "\\boxed{\\ln 16}"], ["\\boxed{4}"]),
    ("$-2\\pi$", ["\\boxed{-2\\pi}"], ["\\boxed{-2}"]),
    ("\\dfrac{5}{2}", ["\\boxed{2.5}", "\\boxed{5/2}"], ["\\boxed{5}"]),
]


@pytest.mark.parametrize("reference, right, wrong", LATEX_REFERENCES, ids=[r[0] for r in LATEX_REFERENCES])
def test_latex_references_without_dollars_are_whole_expressions(reference, right, wrong):
    for completion in right:
        assert math(completion, reference).keep, completion
    for completion in wrong:
        verdict = math(completion, reference)
        assert (verdict.keep, verdict.reason) == (False, "wrong_answer"), completion


SEPARATED_1200 = ["1\\,200", "1\\ 200", "1{,}200", "1~200", "1\u2009200", "1\u202f200", "1\u00a0200", "1\\;200", "1\\thinspace 200", "1 200", "1,200"]


@pytest.mark.parametrize("written", SEPARATED_1200)
def test_digit_group_separators_are_thousands_separators(written):
    completion = f"The total is \\boxed{{{written}}}."
    assert math(completion, "1200").keep
    assert math(completion, "201").reason == "wrong_answer"  # not the mixed number 1 + 200
    assert math(completion, "200").reason == "wrong_answer"  # not the last group


@pytest.mark.parametrize("written", ["1\u2009200", "1\u202f200", "1\\,200", "1\\thinspace 200"])
def test_thin_spaces_group_digits_in_running_text_too(written):
    assert math(f"So the farm has {written} apples.", "1200").keep
    assert math(f"So the farm has {written} apples.", "201").reason == "wrong_answer"


def test_several_digit_groups_and_decimals():
    assert math("\\boxed{1\\,234\\,567}", "1234567").keep
    assert math("\\boxed{12\\,345.5}", "12345.5").keep


@pytest.mark.parametrize(
    "written",
    ["4^\\circ C", "4^{\\circ}", "4°", "4° C", "4^\\circ\\text{C}", "4^{\\circ}\\mathrm{F}", "4\\,^\\circ\\mathrm{K}", "4\\degree", "4 \\text{cm}", "4\\mbox{ m}", "4\\ \\mathrm{kg}"],
)
def test_units_and_degree_notations_are_stripped(written):
    assert math(f"so \\boxed{{{written}}}", "4").keep
    assert math(f"so \\boxed{{{written}}}", "5").reason == "wrong_answer"


def test_percent_reads_as_the_number_or_its_fraction():
    assert math("\\boxed{50\\%}", "50").keep and math("\\boxed{50\\%}", "0.5").keep
    assert math("\\boxed{50\\%}", "5").reason == "wrong_answer"


def test_full_width_digits_and_the_minus_sign():
    assert math("\\boxed{１２}", "12").keep
    assert math("\\boxed{\u22123}", "-3").keep and math("\\boxed{\u22123}", "3").reason == "wrong_answer"


# --- one text normalisation and tokenisation -------------------------------------------------------

FRENCH = "Le garçon a mangé une crème brûlée près de l'hôpital à Noël."
NFD = unicodedata.normalize("NFD", FRENCH)


def dedup(texts: list[str], **config) -> pl.DataFrame:
    return Deduplicator(DedupConfig(**config)).verdicts(pl.Series(texts, dtype=pl.String))


@pytest.mark.parametrize(
    "first, second",
    [
        (FRENCH, NFD),
        ("ＡＢＣ ｄｅｆ １２３ full width", "ABC def 123 full width"),
        ("ﬁnal ﬂow of the ﬁle", "final flow of the file"),
        ("a\u00a0b\u2009c\u3000d", "a b c d"),
    ],
    ids=["nfc_nfd", "full_width", "ligatures", "space_forms"],
)
def test_unicode_forms_are_one_text_everywhere(first, second):
    assert first != second
    assert normalize(first) == normalize(second)
    out = dedup([first, second])
    assert out["keep"].to_list() == [True, False] and out["reason"][1] == "exact_duplicate"
    assert ExactVerifier(value=first).check({"completion": second}).keep
    assert ContainsVerifier(value=first).check({"completion": f"Here: {second} Done."}).keep
    assert not ExactVerifier(value=first).check({"completion": second + " extra"}).keep


def char_jaccard(a: str, b: str, n: int = 5) -> float:
    """Ground truth, independent of datagen: Jaccard of character n-grams."""
    sa, sb = ({s[i : i + n] for i in range(len(s) - n + 1)} for s in (a, b))
    return len(sa & sb) / len(sa | sb)


# Sentences of scripts written without spaces, and the same with one character changed near the start.
NO_SPACE_PAIRS = [
    ("今天天气很好，我们一起去公园散步，然后在湖边喝茶聊天吧。", "今日天气很好，我们一起去公园散步，然后在湖边喝茶聊天吧。"),
    ("きょうはとてもいい天気なので、みんなで公園へ散歩に行きました。", "きのうはとてもいい天気なので、みんなで公園へ散歩に行きました。"),
    ("วันนี้อากาศดีมากเราจึงไปเดินเล่นที่สวนสาธารณะด้วยกัน", "วันนั้อากาศดีมากเราจึงไปเดินเล่นที่สวนสาธารณะด้วยกัน"),
]


@pytest.mark.parametrize("a, b", NO_SPACE_PAIRS, ids=["chinese", "japanese", "thai"])
def test_scripts_without_spaces_are_shingled_by_characters(a, b):
    truth = char_jaccard(normalize(a), normalize(b))
    assert 0.8 <= truth < 1.0
    assert len(tokens(a)) == len(a.replace("，", "").replace("。", "").replace("、", ""))
    out = dedup([a, b], threshold=0.8)
    assert out["keep"].to_list() == [True, False] and out["reason"][1] == "near_duplicate"
    # The similarity reported is the exact Jaccard of 5-character shingles (punctuation is no token).
    stripped = [t.replace("，", "").replace("。", "").replace("、", "") for t in (a, b)]
    assert out["similarity"][1] == pytest.approx(char_jaccard(*stripped))
    # Two different sentences of the same script are kept.
    other = dedup([a, NO_SPACE_PAIRS[0][0] if a != NO_SPACE_PAIRS[0][0] else NO_SPACE_PAIRS[1][0]], threshold=0.8)
    assert other["keep"].to_list() == [True, True]


@pytest.mark.parametrize("text", ["ສະບາຍດີ", "សួស្តីពិភពលោក", "မင်္ဂလာပါ", "ㄅㄆㄇ", "ꀀꀁꀂ", "中文", "カタカナ", "ひらがな"])
def test_every_script_without_spaces_gives_one_token_per_character(text):
    assert tokens(text) == list(normalize(text))


def test_scripts_with_spaces_keep_words():
    assert tokens("안녕하세요 세계") == ["안녕하세요", "세계"]
    assert tokens("Привет, мир!") == ["привет", "мир"]
    assert tokens("مرحبا بالعالم") == ["مرحبا", "بالعالم"]


def test_mixed_scripts_tokenise_words_and_characters():
    assert tokens("我们用Python 3写代码") == ["我", "们", "用", "python", "3", "写", "代", "码"]


WORDLESS = ["🎉🎉", "!!!", "→ ←", "★☆", "...", "🎉", "?!"]


def test_texts_without_word_characters_are_distinct_texts():
    out = dedup(WORDLESS)
    assert out["keep"].all(), out
    again = dedup(["🎉🎉", "!!!", "🎉🎉", "→ ←", "→  ←"])
    assert again["keep"].to_list() == [True, True, False, True, False]
    assert again["reason"].to_list() == [None, None, "exact_duplicate", None, "exact_duplicate"]
    assert not ExactVerifier(value="🎉🎉").check({"completion": "!!!"}).keep


@pytest.mark.parametrize(
    "a, b, size",
    [
        ("the dog bit the man", "the man bit the dog", 1),
        ("one two three four", "four three two one", 1),
        ("a b a b c", "b a b a c", 2),
        ("我爱你", "你爱我", 1),
    ],
)
def test_exact_means_same_tokens_in_the_same_order(a, b, size):
    out = dedup([a, b], shingle_size=size, threshold=0.5)
    assert out["keep"].to_list() == [True, False]
    assert out["reason"][1] == "near_duplicate"
    same = dedup([a, a.upper()], shingle_size=size)
    assert same["reason"][1] == "exact_duplicate"


def test_cli_shingle_size_one_reorder_is_near_duplicate(tmp_path):
    pl.DataFrame({"text": ["the dog bit the man", "the man bit the dog"]}).write_parquet(tmp_path / "in.parquet")
    run = datagen_cli("dedup", tmp_path / "in.parquet", "--column", "text", "--shingle-size", "1", "--out", tmp_path / "out.parquet", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "near_duplicate=1" in run.stdout and "exact_duplicate" not in run.stdout


QUESTION = [{"role": "user", "content": "写一句关于天气的话。"}]


def test_dpo_sides_in_a_script_without_spaces_are_near_duplicates():
    base = "今天天气很好，我们一起去公园散步，然后在湖边喝茶聊天，晚上再回家做饭，大家都觉得非常开心。"
    near = base[:-2] + "快。"  # one character changed at the end
    other = "明天可能会下大雨，记得出门带伞，路上小心慢行，不要在外面待太久。"
    rows = [
        {"prompt_id": "p", "candidate_id": "c0", "completion": base, "keep": True, "verify_keep": True, "verify_reason": None},
        {"prompt_id": "p", "candidate_id": "c1", "completion": near, "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
        {"prompt_id": "p", "candidate_id": "c2", "completion": unicodedata.normalize("NFD", "Ｏｋ"), "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
        {"prompt_id": "p", "candidate_id": "c3", "completion": other, "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
    ]
    base_row = {"template_id": "t", "persona": "p", "difficulty": "easy", "model": "m", "messages": QUESTION, "dropped_by": None}
    frame = pl.DataFrame([base_row | r for r in rows], infer_schema_length=None)
    pairs, tally = build_pairs(frame, PairsConfig(strategy="verified", pairs_per_prompt=3, max_length_ratio=None))
    rejected = [m[0]["content"] for m in pairs["rejected"].to_list()]
    assert near not in rejected and tally.skipped["near_duplicate"] == 1
    assert other in rejected


def test_identical_pair_sides_after_normalisation():
    rows = [
        {"prompt_id": "p", "candidate_id": "c0", "completion": FRENCH, "keep": True, "verify_keep": True, "verify_reason": None},
        {"prompt_id": "p", "candidate_id": "c1", "completion": NFD + "  ", "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
    ]
    base_row = {"template_id": "t", "persona": "p", "difficulty": "easy", "model": "m", "messages": QUESTION, "dropped_by": None}
    pairs, tally = build_pairs(pl.DataFrame([base_row | r for r in rows], infer_schema_length=None), PairsConfig(strategy="verified"))
    assert pairs.height == 0 and dict(tally.skipped) == {"identical": 1}


def test_collapse_prefixes_use_the_same_tokens():
    from datagen.steps.collapse import CollapseConfig

    def fitted(outputs):
        rows = [{"prompt_id": f"p{i}", "template_id": "t", "persona": None, "sample_index": 0, "candidate_id": f"c{i}", "completion": text} for i, text in enumerate(outputs)]
        frame = pl.DataFrame(rows).with_columns(keep=pl.lit(True), dropped_by=pl.lit(None, dtype=pl.String))
        stage = CollapseConfig(cluster_threshold=0.99, max_collapse_rate=None, prefix_tokens=6).build()
        stage.fit(lambda: iter([frame]))
        return stage(frame)["collapse_repeated_prefix"].to_list()

    # Six characters of Chinese open two outputs of different prompts; the third differs in the fifth.
    assert fitted(["好的，我来回答这个问题：河流很长。", "好的，我来回答这个问题：火山很热。", "好的，我来看看这个问题：星星很亮。"]) == [True, True, False]
    # NFC and NFD openings are one opening.
    assert fitted([FRENCH + " Premier.", NFD + " Deuxième.", "Something else entirely, written in English here."]) == [True, True, False]


# --- strict JSON -------------------------------------------------------------------------------------

NUMBER_SCHEMA = {"type": "object", "properties": {"value": {"type": "number", "minimum": 0, "maximum": 10}}, "required": ["value"]}


@pytest.mark.parametrize(
    "completion",
    [
        '{"value": NaN}',
        '{"value": Infinity}',
        '{"value": -Infinity}',
        '{"value": 1e999}',
        '{"value": 5, "extra": {"deep": [1, NaN]}}',
        '{"value": 5, "value": 6}',
        '```json\n{"value": NaN}\n```',
    ],
)
def test_non_finite_numbers_and_duplicate_keys_are_invalid_json(completion):
    verdict = JsonSchemaVerifier(schema=NUMBER_SCHEMA).check({"completion": completion})
    assert (verdict.keep, verdict.reason) == (False, "invalid_json")


def test_strict_json_keeps_what_is_json():
    assert JsonSchemaVerifier(schema=NUMBER_SCHEMA).check({"completion": '{"value": 5.5e0, "note": "NaN"}'}).keep
    assert strict_json.loads('{"a": [1, 2.5, -0.0, "Infinity"], "b": {"a": 1}}') == {"a": [1, 2.5, -0.0, "Infinity"], "b": {"a": 1}}
    for text in ("NaN", "[Infinity]", '{"a": {"a": 1, "a": 2}}', "1E400"):
        with pytest.raises(ValueError):
            strict_json.loads(text)


def test_judge_verdicts_are_parsed_strictly():
    from datagen.llm.base import Completion, Generation
    from datagen.steps.judge import JudgeConfig

    stage = JudgeConfig(rubric="helpfulness").build()
    good = {"rationale": "fine", **{c.name: 4 for c in stage.rubric.criteria}}

    def read(text: str):
        return stage._read(Generation(completions=[Completion(text=text, finish_reason="stop", completion_tokens=9)], prompt_tokens=9))

    assert read(json.dumps(good))[0] is not None
    for bad in (json.dumps(good).replace(": 4", ": NaN", 1), json.dumps(good).replace(": 4", ": -Infinity", 1), '{"rationale": "a", "rationale": "b"}'):
        verdict, error = read(bad)
        assert verdict is None and error.startswith("unparsable verdict: invalid JSON"), (bad, error)


@pytest.mark.parametrize(
    "schema, words",
    [
        ({"$ref": "#"}, "refers back to itself"),
        ({"allOf": [{"$ref": "#"}]}, "refers back to itself"),
        ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}, "refers back to itself"),
        ({"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}}, "refers back to itself"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "cannot resolve $ref"),
    ],
)
def test_uncompilable_schemas_are_refused_at_validate(project, schema, words):
    recipe = project(stages=[{"stage": "verify", "verifiers": {"*": {"kind": "json_schema", "schema": schema}}}])
    run = datagen_in_process("validate", recipe, cwd=project.root)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], run.stderr


def test_recursive_schema_that_terminates_is_accepted():
    tree = {"type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}}}
    verifier = JsonSchemaVerifier(schema=tree)
    assert verifier.check({"completion": '{"name": "a", "children": [{"name": "b", "children": []}]}'}).keep
    assert verifier.check({"completion": '{"name": "a", "children": [{"name": 3}]}'}).reason == "schema_mismatch"


# --- the text column of datagen dedup ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pandas_category", "polars_categorical", "polars_enum"])
def test_dictionary_encoded_text_is_deduplicated_like_text(tmp_path, kind):
    texts = ["the quick brown fox jumps", "a completely different line", "the quick brown fox jumps", "The Quick Brown Fox Jumps!"]
    path = tmp_path / "in.parquet"
    if kind == "pandas_category":
        pd.DataFrame({"text": pd.Series(texts, dtype="category"), "n": range(4)}).to_parquet(path)
    else:
        dtype = pl.Categorical if kind == "polars_categorical" else pl.Enum(sorted(set(texts)))
        pl.DataFrame({"text": texts, "n": range(4)}).with_columns(pl.col("text").cast(dtype)).write_parquet(path)
    run = datagen_in_process("dedup", path, "--column", "text", "--out", tmp_path / "out.parquet", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["n"].to_list() == [0, 1]
    assert out["text"].cast(pl.String).to_list() == texts[:2]


@pytest.mark.parametrize(
    "lines, what",
    [
        (['{"text": "a b c"}', '{"text": 5}'], "number"),
        (['{"text": "a b c"}', '{"text": {"x": 1}}'], "object"),
        (['{"text": "a b c"}', '{"text": null}', '{"text": [1, 2]}'], "array"),
        (['{"text": "a b c"}', '{"text": true}'], "boolean"),
    ],
)
def test_non_string_values_in_a_jsonl_text_column_are_refused(tmp_path, lines, what):
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    run = datagen_in_process("dedup", tmp_path / "in.jsonl", "--column", "text", "--out", tmp_path / "out.jsonl", cwd=tmp_path)
    assert run.returncode == 2
    line = run.stderr.strip()
    assert "\n" not in line and "in.jsonl" in line and what in line and f"row {len(lines)}" in line, line
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("values", [[1, 2], [1.5, 2.5], [[1], [2]], [True, False]])
def test_non_string_parquet_text_columns_are_refused(tmp_path, values):
    pl.DataFrame({"text": values}).write_parquet(tmp_path / "in.parquet")
    run = datagen_in_process("dedup", tmp_path / "in.parquet", "--column", "text", "--out", tmp_path / "out.parquet", cwd=tmp_path)
    assert run.returncode == 2 and "not text" in run.stderr and len(run.stderr.strip().splitlines()) == 1
