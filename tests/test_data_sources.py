"""The user's own data (datagen.sources.data, slots, prompts): formats, slots drawn from a source,
bring-your-own prompts, sampling slots, source_ids lineage, bad data as one line, resume on a
changed source file. Scripted backend; no model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import polars as pl
import pytest

from datagen.errors import DatagenError
from datagen.recipe import load_recipe
from datagen.run.executor import expand_prompts, run_pipeline
from datagen.sources.data import ChunkConfig, DataConfig, chunk_spans, open_source
from helpers import CountingFactory, ScriptedModel, datagen_cli, write_yaml

TICKETS = [
    {"id": "T-1", "subject": "Login fails after token refresh", "body": "We get 401 right after refreshing.", "priority": 3},
    {"id": "T-2", "subject": "Bulk export hits rate limit", "body": "429 after 100 requests a minute.", "priority": 1},
    {"id": "T-3", "subject": "Webhook delivered twice", "body": "Each event arrives two times.", "priority": 1},
    {"id": "T-4", "subject": "Python SDK crash on empty page", "body": "IndexError on the last page.", "priority": 1},
    {"id": "T-5", "subject": "Sandbox keys rejected", "body": "Test keys fail with 403.", "priority": 1},
]
PROMPTS = [{"id": f"q{i}", "prompt": text} for i, text in enumerate(
    ["Explain TCP slow start.", "Write a haiku about rivers.", "What is 17 * 3?", "Name three uses of vinegar.", "Why is the sea salty?"])]

TICKET_TEMPLATE = {
    "id": "ticket_q",
    "system": "You are {{ persona }}.",
    "user": "Past tickets:\n{% for s in shots %}- {{ s.subject }}\n{% endfor %}Ask a new question like: {{ ticket.subject }} ({{ ticket.body }})",
    "slots": {
        "persona": ["a support engineer", "a developer"],
        "ticket": {"from": "tickets"},
        "shots": {"from": "tickets", "k": 2},
    },
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def project(tmp_path: Path):
    """templates/ticket_q.yaml, pipelines/examples/{tickets,prompts}.jsonl and a recipe writer."""
    write_yaml(tmp_path / "templates" / "ticket_q.yaml", TICKET_TEMPLATE)
    write_jsonl(tmp_path / "pipelines" / "examples" / "tickets.jsonl", TICKETS)
    write_jsonl(tmp_path / "pipelines" / "examples" / "prompts.jsonl", PROMPTS)

    def recipe(templates: list[dict], **fields) -> Path:
        data = {
            "name": "own_data", "seed": 5, "template_dirs": ["../templates"],
            "data": {"tickets": {"path": "examples/tickets.jsonl"}, "prompts": {"path": "examples/prompts.jsonl"}},
            "templates": templates,
            "backend": {"kind": "scripted", "sampling": {"n": 2, "max_tokens": 30}},
            "stages": [{"stage": "finished"}],
            "execution": {"shard_size": 2},
        } | fields
        return write_yaml(tmp_path / "pipelines" / "recipe.yaml", data)

    recipe.root = tmp_path
    return recipe


# --- formats -------------------------------------------------------------------------------------


def _formats(root: Path) -> dict[str, Path]:
    """The same five prompts in every format a source reads."""
    frame = pl.DataFrame(PROMPTS)
    paths = {"jsonl": write_jsonl(root / "p.jsonl", PROMPTS), "parquet": root / "p.parquet", "csv": root / "p.csv"}
    frame.write_parquet(paths["parquet"])
    frame.write_csv(paths["csv"])
    paths["save_to_disk"] = root / "saved"
    datasets.Dataset.from_list(PROMPTS).save_to_disk(str(paths["save_to_disk"]))
    paths["saved_dict"] = root / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PROMPTS), "test": datasets.Dataset.from_list(PROMPTS[:1])}).save_to_disk(str(paths["saved_dict"]))
    layout = root / "hub" / "data"
    layout.mkdir(parents=True)
    frame.slice(0, 3).write_parquet(layout / "train-00000-of-00002.parquet")
    frame.slice(3).write_parquet(layout / "train-00001-of-00002.parquet")
    frame.slice(0, 1).write_parquet(layout / "test-00000-of-00001.parquet")
    paths["load_dataset"] = root / "hub"
    assert datasets.load_dataset(str(paths["load_dataset"]), split="train").num_rows == 5  # the layout load_dataset reads
    return paths


def test_every_format_reads_the_same_rows(tmp_path):
    for kind, path in _formats(tmp_path).items():
        source = open_source("p", DataConfig(path=str(path)))
        assert source.height == 5, kind
        assert source.rows([4, 0]) == [PROMPTS[4] | {"_id": "q4"}, PROMPTS[0] | {"_id": "q0"}], kind


def test_rows_without_an_id_column_are_numbered(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": r["prompt"]} for r in PROMPTS])
    source = open_source("p", DataConfig(path=str(path)))
    assert [r["_id"] for r in source.rows([0, 4])] == ["1", "5"]
    with pytest.raises(DatagenError, match=r"no id column 'key'"):
        open_source("p", DataConfig(path=str(path), id_column="key"))


def test_byo_prompts_are_the_same_from_every_format(project, tmp_path):
    """--set data.prompts.path=FILE (relative to the working directory) swaps the file: every format
    gives the same prompts, ids and source_ids."""
    recipe = project([{"from": "prompts"}])
    expected = expand_prompts(load_recipe(recipe))
    assert expected["source_ids"].to_list() == [[f"prompts:q{i}"] for i in range(5)]
    assert [m[-1]["content"] for m in expected["messages"].to_list()] == [p["prompt"] for p in PROMPTS]
    for kind, path in _formats(tmp_path / "formats").items():
        loaded = load_recipe(recipe, [f"data.prompts.path={path}"])
        got = expand_prompts(loaded)
        assert got.select("prompt_id", "messages", "source_ids").equals(expected.select("prompt_id", "messages", "source_ids")), kind


def test_set_path_is_relative_to_the_working_directory(project, tmp_path, monkeypatch):
    other = write_jsonl(tmp_path / "elsewhere" / "mine.jsonl", [{"prompt": "Only this one."}])
    monkeypatch.chdir(other.parent)
    prompts = expand_prompts(load_recipe(project([{"from": "prompts"}]), ["data.prompts.path=mine.jsonl"]))
    assert prompts.height == 1 and prompts["source_ids"].to_list() == [["prompts:1"]]


def test_messages_column_is_used_as_is(project):
    conversations = [
        {"id": "c1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"}]},
        {"id": "c2", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me a joke."}]},
    ]
    write_jsonl(project.root / "pipelines" / "examples" / "chats.jsonl", conversations)
    recipe = project([{"from": "chats", "messages_column": "messages"}], data={"chats": {"path": "examples/chats.jsonl"}})
    prompts = expand_prompts(load_recipe(recipe))
    assert prompts["messages"].to_list() == [c["messages"] for c in conversations]
    assert prompts["template_id"].to_list() == ["chats", "chats"]
    bad = conversations + [{"id": "c3", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}]
    write_jsonl(project.root / "pipelines" / "examples" / "chats.jsonl", bad)
    with pytest.raises(DatagenError, match=r"chats.jsonl: data.chats: row 3 \(id c3\), column 'messages': .*the last one the user's"):
        load_recipe(recipe)


def test_count_takes_a_seeded_subset_in_file_order(project):
    recipe = project([{"from": "prompts", "count": 3}])
    first = expand_prompts(load_recipe(recipe))
    ids = [s[0] for s in first["source_ids"].to_list()]
    assert len(set(ids)) == 3 and ids == sorted(ids)
    assert expand_prompts(load_recipe(recipe))["prompt_id"].equals(first["prompt_id"])
    seeds = {tuple(s[0] for s in expand_prompts(load_recipe(recipe, [f"seed={seed}"]))["source_ids"].to_list()) for seed in range(8)}
    assert len(seeds) > 1, "the subset depends on the seed"


# --- documents -----------------------------------------------------------------------------------


def test_chunks_in_characters_cover_the_text_with_overlap(tmp_path):
    words = " ".join(f"w{i:03d}" for i in range(400))  # 1599 characters, words of 4 characters
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "sub" / "guide.md").write_text(words)
    (tmp_path / "docs" / "notes.txt").write_text("Short note.")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    source = open_source("docs", DataConfig(path=str(tmp_path / "docs"), chunks=ChunkConfig(size=300, overlap=60)))
    rows = source.frame.collect().sort("_row")
    assert set(rows["file"]) == {"sub/guide.md", "notes.txt"}
    guide = rows.filter(pl.col("file") == "sub/guide.md")
    assert guide["id"].to_list() == [f"sub/guide.md#{n}" for n in range(guide.height)]
    texts = guide["text"].to_list()
    assert all(len(t) <= 300 for t in texts)
    assert all(not t.startswith(" ") and t.split()[0].startswith("w") and len(t.split()[0]) == 4 for t in texts), "cut between words"
    tokens = [t.split() for t in texts]
    for before, after in zip(tokens, tokens[1:]):
        shared = set(before) & set(after)
        assert 8 <= len(shared) <= 16, "about 60 characters (12 words) of overlap"
    assert sorted(set(w for t in tokens for w in t)) == words.split(), "every word is in a chunk"


def test_chunk_spans_in_units():
    text = "abcdefghij"
    assert chunk_spans(text, list(range(11)), 4, 1) == ["abcd", "defg", "ghij"]
    assert chunk_spans(text, [0, 3, 6, 9, 10], 2, 0) == ["abcdef", "ghij"]


def test_chunks_in_tokens_hold_at_most_size_tokens(tmp_path):
    from tokenizers import Tokenizer

    from datagen.llm.embedded import embedded_model_dir

    text = "The rate limiter allows 100 requests per minute per API key. " * 40
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "limits.md").write_text(text)
    source = open_source("docs", DataConfig(path=str(tmp_path / "docs"), chunks=ChunkConfig(size=64, overlap=8, unit="tokens")))
    tokenizer = Tokenizer.from_file(str(embedded_model_dir() / "tokenizer.json"))
    texts = source.frame.collect()["text"].to_list()
    assert len(texts) > 5
    assert all(len(tokenizer.encode(t, add_special_tokens=False).ids) <= 64 for t in texts)
    assert max(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts) >= 48


# --- slots drawn from a source -------------------------------------------------------------------


def test_one_row_per_prompt_and_shots_without_replacement(project):
    recipe = project([{"name": "ticket_q", "count": 10}])
    prompts = expand_prompts(load_recipe(recipe))
    assert prompts.height == 10 and prompts["prompt_id"].n_unique() == 10
    by_id = {t["id"]: t for t in TICKETS}
    seen = Counter()
    for row in prompts.iter_rows(named=True):
        slots = json.loads(row["slots"])
        ticket = by_id[slots["ticket"].removeprefix("tickets:")]
        shots = [by_id[s.removeprefix("tickets:")] for s in slots["shots"]]
        seen[ticket["id"]] += 1
        user = row["messages"][-1]["content"]
        assert f"{ticket['subject']} ({ticket['body']})" in user
        assert len({s["id"] for s in shots} | {ticket["id"]}) == 3, "two distinct shots, neither the ticket itself"
        assert all(f"- {s['subject']}" in user for s in shots)
        assert row["source_ids"] == [slots["ticket"]] + slots["shots"]
    assert set(seen.values()) == {2}, "10 prompts over 5 tickets: every ticket twice (a new order each round)"
    again = expand_prompts(load_recipe(recipe))
    assert again["prompt_id"].equals(prompts["prompt_id"]) and again["messages"].equals(prompts["messages"])
    other = expand_prompts(load_recipe(recipe, ["seed=6"]))
    assert not other["slots"].equals(prompts["slots"])


def test_count_defaults_to_one_prompt_per_row_and_is_bounded(project):
    prompts = expand_prompts(load_recipe(project([{"name": "ticket_q"}])))
    assert sorted(json.loads(s)["ticket"] for s in prompts["slots"]) == [f"tickets:T-{i}" for i in range(1, 6)]
    write_yaml(project.root / "templates" / "ticket_q.yaml", dict(TICKET_TEMPLATE, user="{{ ticket.subject }}", slots={k: v for k, v in TICKET_TEMPLATE["slots"].items() if k != "shots"}))
    assert expand_prompts(load_recipe(project([{"name": "ticket_q", "count": 10}])))["prompt_id"].n_unique() == 10
    with pytest.raises(DatagenError, match="count 11: only 10 distinct prompts"):
        expand_prompts(load_recipe(project([{"name": "ticket_q", "count": 11}])))  # 5 tickets x 2 personas


def test_weight_column_draws_heavy_rows_more_often(project):
    template = dict(TICKET_TEMPLATE, slots=dict(TICKET_TEMPLATE["slots"], shots={"from": "tickets", "k": 1, "weight_column": "priority"}))
    write_yaml(project.root / "templates" / "ticket_q.yaml", template)
    prompts = expand_prompts(load_recipe(project([{"name": "ticket_q", "count": 10}])))
    shots = Counter(json.loads(s)["shots"][0] for s in prompts["slots"])
    # T-1 weighs 3 of the 6 left when it is not the ticket itself (8 prompts of 10): about 4 + more than any other
    assert shots["tickets:T-1"] == max(shots.values()) and shots["tickets:T-1"] >= 3


def test_unknown_column_in_a_template_names_the_column(project):
    template = dict(TICKET_TEMPLATE, user="{{ ticket.subjet }} {% for s in shots %}{{ s['body'] }}{% endfor %}")
    write_yaml(project.root / "templates" / "ticket_q.yaml", template)
    with pytest.raises(DatagenError) as err:
        load_recipe(project([{"name": "ticket_q", "count": 2}]))
    assert "tickets.jsonl: data.tickets: template 'ticket_q' (slots.ticket) uses the column 'subjet'" in str(err.value)
    template["user"] = "{{ ticket.subject }} {% for s in shots %}{{ s.title }}{% endfor %}"
    write_yaml(project.root / "templates" / "ticket_q.yaml", template)
    with pytest.raises(DatagenError, match=r"\(slots.shots\) uses the column 'title'"):
        load_recipe(project([{"name": "ticket_q", "count": 2}]))


def test_a_slot_from_an_unknown_source_is_refused(project):
    template = dict(TICKET_TEMPLATE, slots=dict(TICKET_TEMPLATE["slots"], ticket={"from": "tikets"}))
    write_yaml(project.root / "templates" / "ticket_q.yaml", template)
    with pytest.raises(DatagenError, match=r"ticket_q.yaml: slots.ticket: .*'tikets'.*data: tickets, prompts"):
        load_recipe(project([{"name": "ticket_q"}]))


# --- sampling slots ------------------------------------------------------------------------------


def test_temperature_per_prompt_is_applied_and_recorded(project, tmp_path):
    template = dict(TICKET_TEMPLATE, sampling={"temperature": [0.3, 0.7, 1.1]})
    write_yaml(project.root / "templates" / "ticket_q.yaml", template)
    recipe = project([{"name": "ticket_q", "count": 8}, {"from": "prompts", "sampling": {"temperature": {"min": 0.2, "max": 0.4}}}])
    backend = ScriptedModel(["An answer long enough to keep."])
    run_pipeline(load_recipe(recipe), tmp_path / "out", progress=False, backend_factory=lambda: backend)
    asked = {r.messages[-1]["content"]: r.sampling.temperature for call in backend.calls for r in call.requests}
    rows = pl.read_parquet(tmp_path / "out" / "data" / "*.parquet")
    assert rows.height == 26  # (8 + 5) prompts x n = 2
    for row in rows.iter_rows(named=True):
        assert asked[row["messages"][-2]["content"] if row["messages"][-1]["role"] == "assistant" else row["messages"][-1]["content"]] == row["temperature"]
        assert json.loads(row["sampling"])["temperature"] == row["temperature"]
    ticket_rows = rows.filter(pl.col("template_id") == "ticket_q")
    byo_rows = rows.filter(pl.col("template_id") == "prompts")
    assert set(ticket_rows["temperature"]) == {0.3, 0.7, 1.1}
    assert byo_rows["temperature"].is_between(0.2, 0.4).all() and byo_rows["temperature"].n_unique() == 5
    assert all(call.sampling.temperature == 0.8 for call in backend.calls), "the recipe's own stays the call's"


# --- lineage -------------------------------------------------------------------------------------


def test_source_ids_survive_later_steps(project, tmp_path):
    recipe = project(
        [{"name": "ticket_q", "count": 4}],
        stages=[{"stage": "finished"}, {"stage": "llm", "name": "restyle", "user": "Rewrite: {{ completion }}", "sampling": {"n": 2, "max_tokens": 30}}],
    )
    run_pipeline(load_recipe(recipe), tmp_path / "out", progress=False, backend_factory=lambda: ScriptedModel(["A reply that is kept."]))
    rows = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert rows.num_rows == 16  # 4 prompts x 2 samples x 2 rewrites
    for row in rows:
        slots = json.loads(row["slots"])
        assert row["source_ids"] == [slots["ticket"]] + slots["shots"] and len(row["source_ids"]) == 3


# --- bad data: one line naming file, row and column ----------------------------------------------


BAD_FILES = {
    "missing": (None, r"^--set data.prompts.path=.*nothere.jsonl: data.prompts.path: file not found: .*nothere.jsonl"),  # the --set that named it
    "empty": (b"", r"empty.jsonl: data.prompts: the source has no rows"),
    "null": (b'{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": null}\n', r"null.jsonl: data.prompts: row 2 \(id b\), column 'prompt' has no value"),
    "not_utf8": (b'{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": "caf\xe9"}\n', r"not_utf8.jsonl: line 2: not UTF-8 text"),
    "not_json": (b'{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": "x"\n', r"not_json.jsonl: row 2 \(line 2\): not JSON"),
    "duplicate_id": (b'{"id": "a", "prompt": "ok"}\n{"id": "a", "prompt": "x"}\n', r"duplicate_id.jsonl: data.prompts: row 2 \(id a\), column 'id': the id 'a' is not unique"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_jsonl_is_one_line(project, tmp_path, case):
    content, expected = BAD_FILES[case]
    name = "nothere.jsonl" if content is None else f"{case}.jsonl"
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DatagenError) as err:
        load_recipe(project([{"from": "prompts"}]), [f"data.prompts.path={tmp_path / name}"])
    assert "\n" not in str(err.value)
    import re

    assert re.search(expected, str(err.value)), str(err.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"id,prompt\n1,ok\n2,one,two\n", r"ragged.csv: row 2 \(line 3\): 3 fields, the header has 2"),
        (b"id,subject,body\n1,a,b\n2,c\n", r"ragged.csv: row 2 \(line 3\): 2 fields, the header has 3: column 'body' is missing"),
        (b"id,prompt\n1,ok\n2,\n", r"ragged.csv: data.prompts: row 2 \(id 2\), column 'prompt' has no value"),
        (b"id,prompt\n1,\xff\n", r"ragged.csv: line 2: not UTF-8"),
    ],
)
def test_bad_csv_is_one_line(project, tmp_path, content, expected):
    (tmp_path / "ragged.csv").write_bytes(content)
    with pytest.raises(DatagenError, match=expected):
        expand_prompts(load_recipe(project([{"from": "prompts"}]), [f"data.prompts.path={tmp_path / 'ragged.csv'}"]))


def test_a_null_column_a_template_needs_is_named(project):
    rows = [dict(t) for t in TICKETS]
    rows[3]["body"] = None
    write_jsonl(project.root / "pipelines" / "examples" / "tickets.jsonl", rows)
    with pytest.raises(DatagenError, match=r"tickets.jsonl: data.tickets: row 4 \(id T-4\), column 'body' has no value .* template 'ticket_q' \(slots.ticket\) needs it"):
        load_recipe(project([{"name": "ticket_q"}]))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "data.prompts.path: file not found"),
        (b"", "no header line"),
        (b"id,prompt\n", "the source has no rows"),
        (b"id,prompt\n1,caf\xe9\n", "line 2: not UTF-8 text"),
        (b"id,prompt\n1,fine\n2,\n", "row 2 (id 2), column 'prompt' has no value"),
        (b"id,question\n1,fine\n", "uses the column 'prompt', which the source does not have (columns: id, question)"),
    ],
)
def test_bad_data_in_a_run_exits_2_with_one_line_and_writes_nothing(project, tmp_path, content, expected):
    from helpers import datagen_in_process

    recipe = project([{"name": "ticket_q", "count": 2}, {"from": "prompts"}])
    path = tmp_path / "mine.csv"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    result = datagen_in_process("run", recipe, "--out", out, "--no-progress", "--set", f"data.prompts.path={path}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and ("mine.csv" in lines[0] or "recipe.yaml" in lines[0]), result.stderr
    assert not out.exists()


def test_bad_data_through_the_cli_exits_2_and_writes_nothing(project, tmp_path):
    recipe = project([{"name": "ticket_q", "count": 2}, {"from": "prompts"}])
    (tmp_path / "bad.csv").write_bytes(b"id,prompt\n1,fine\n2,a,b\n")
    out = tmp_path / "out"
    result = datagen_cli("run", recipe, "--out", out, "--no-progress", "--set", f"data.prompts.path={tmp_path / 'bad.csv'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.csv: row 2 (line 3): 3 fields, the header has 2" in lines[0], result.stderr
    assert not out.exists()


# --- resume --------------------------------------------------------------------------------------


def test_a_changed_source_row_reruns_only_what_depends_on_it(project, tmp_path):
    recipe = project([{"from": "prompts"}])  # 5 prompts in shards of 2
    out = tmp_path / "out"
    first = CountingFactory(lambda: ScriptedModel(["An answer that is long enough."]))
    run_pipeline(load_recipe(recipe), out, progress=False, backend_factory=first)
    assert first.requests == 5
    again = CountingFactory(lambda: ScriptedModel(["An answer that is long enough."]))
    run_pipeline(load_recipe(recipe), out, progress=False, backend_factory=again)
    assert again.requests == 0, "nothing changed: nothing is asked again"

    changed = [dict(p) for p in PROMPTS]
    changed[2]["prompt"] = "What is 19 * 3?"  # shard 1 holds prompts 2 and 3
    write_jsonl(project.root / "pipelines" / "examples" / "prompts.jsonl", changed)
    digest = json.loads((out / "run" / "manifest.json").read_text())["resolved"]["data_files"]["prompts"]["digest"]
    third = CountingFactory(lambda: ScriptedModel(["An answer that is long enough."]))
    run_pipeline(load_recipe(recipe), out, progress=False, backend_factory=third)
    assert json.loads((out / "run" / "manifest.json").read_text())["resolved"]["data_files"]["prompts"]["digest"] != digest
    asked = [r.messages[-1]["content"] for b in third.started for call in b.calls for r in call.requests]
    assert sorted(asked) == sorted(["What is 19 * 3?", PROMPTS[3]["prompt"]])
    rows = datasets.load_dataset(str(out), split="train")
    users = [m[-2]["content"] for m in rows["messages"]]
    assert "What is 19 * 3?" in users and "What is 17 * 3?" not in users and rows.num_rows == 10


def test_a_reference_column_fills_the_reference(project):
    rows = [{"id": "m1", "prompt": "What is 6 * 7?", "reference": "42"}, {"id": "m2", "prompt": "Say hi.", "reference": None}]
    write_jsonl(project.root / "pipelines" / "examples" / "prompts.jsonl", rows)
    recipe = project([{"from": "prompts"}])
    prompts = expand_prompts(load_recipe(recipe))
    assert prompts["reference"].to_list() == ["42", None]
    rows[0]["reference"] = "\\boxed{42}"
    write_jsonl(project.root / "pipelines" / "examples" / "prompts.jsonl", rows)
    changed = expand_prompts(load_recipe(recipe))
    assert changed["prompt_id"][0] != prompts["prompt_id"][0] and changed["prompt_id"][1] == prompts["prompt_id"][1]
    renamed = [{"id": r["id"], "prompt": r["prompt"], "answer": r["reference"]} for r in rows]
    write_jsonl(project.root / "pipelines" / "examples" / "prompts.jsonl", renamed)
    assert expand_prompts(load_recipe(project([{"from": "prompts", "reference_column": "answer"}])))["reference"].to_list() == ["\\boxed{42}", None]
    with pytest.raises(DatagenError, match="reads references from the column 'reference'"):
        load_recipe(project([{"from": "prompts", "reference_column": "reference"}]))
