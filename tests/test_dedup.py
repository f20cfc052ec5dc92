from __future__ import annotations

import json
import random
import re
from itertools import combinations

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash
from pydantic import ValidationError
from scipy import sparse

from helpers import datagen_cli, datagen_in_process
from datagen.errors import DatagenError
from datagen.run.executor import run_pipeline
from datagen.text.minhash import MinHasher, jaccard, pair_jaccard, shingle
from datagen.recipe import load_recipe
from datagen.steps.dedup import DedupConfig

THRESHOLD = 0.8
SIZE = 5

ADJECTIVES = (
    "quiet bright narrow ancient heavy gentle sudden careful broken golden distant hollow rapid silent crowded empty "
    "frozen humble hidden steady bitter curious fragile honest loyal modest nervous patient proud rough shallow simple"
).split()
NOUNS = (
    "river bridge teacher village engine garden window market doctor mountain harbor lantern library farmer kitchen "
    "storm island painter letter forest station captain student machine orchard bakery tower valley sailor meadow "
    "castle museum journey shadow signal ladder blanket pencil mirror compass canyon glacier volcano desert tunnel"
).split()
VERBS = "crossed repaired watched followed painted carried opened visited described measured covered noticed guarded built explored".split()
PREPOSITIONS = "near beside behind across under above beyond toward through along".split()
ADVERBS = "slowly quickly quietly carefully suddenly gently rarely often nearly barely".split()


def sentence(rng: random.Random) -> str:
    c = rng.choice
    forms = [
        lambda: f"The {c(ADJECTIVES)} {c(NOUNS)} {c(VERBS)} the {c(NOUNS)} {c(PREPOSITIONS)} the {c(ADJECTIVES)} {c(NOUNS)}.",
        lambda: f"{c(ADVERBS).capitalize()}, a {c(NOUNS)} {c(VERBS)} every {c(ADJECTIVES)} {c(NOUNS)}.",
        lambda: f"Nobody {c(VERBS)} the {c(NOUNS)} until the {c(ADJECTIVES)} {c(NOUNS)} {c(VERBS)} it {c(ADVERBS)}.",
    ]
    return c(forms)()


def paragraph(rng: random.Random, low: int = 6, high: int = 16) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(low, high)))


def edit(rng: random.Random, text: str, edits: int) -> str:
    """Substitute, delete or insert words at random places: each edit moves Jaccard by a few shingles."""
    words = text.split(" ")
    for _ in range(edits):
        i = rng.randrange(len(words))
        kind = rng.random()
        if kind < 0.5:
            words[i] = rng.choice(NOUNS + ADJECTIVES)
        elif kind < 0.75:
            del words[i]
        else:
            words.insert(i, rng.choice(ADVERBS))
    return " ".join(words)


def corpus(seed: int, originals: int, variants: int) -> list[str]:
    rng = random.Random(seed)
    docs = [paragraph(rng) for _ in range(originals)]
    docs += [edit(rng, rng.choice(docs[:originals]), rng.randint(0, 6)) for _ in range(variants)]
    rng.shuffle(docs)
    return docs


def word_shingles(text: str) -> set[tuple[str, ...]]:
    """Ground truth, written independently of datagen.text.minhash: sets of word 5-gram tuples."""
    words = re.findall(r"[^\W_]+", text.lower())
    return {tuple(words[i : i + SIZE]) for i in range(max(len(words) - SIZE + 1, 1))} if words else set()


def exact_jaccard(a: str, b: str) -> float:
    sa, sb = word_shingles(a), word_shingles(b)
    return len(sa & sb) / len(sa | sb)


def true_pairs(docs: list[str]) -> dict[tuple[int, int], float]:
    """Every pair at or above the threshold, from exact shingle-set intersections (sparse X @ X.T)."""
    ids: dict[tuple[str, ...], int] = {}
    rows, cols, sizes = [], [], []
    for d, text in enumerate(docs):
        s = word_shingles(text)
        sizes.append(len(s))
        for sh in s:
            rows.append(d)
            cols.append(ids.setdefault(sh, len(ids)))
    x = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), len(ids)))
    inter = sparse.triu(x @ x.T, k=1).tocoo()
    size = np.array(sizes)
    sims = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    return {(int(a), int(b)): float(s) for a, b, s in zip(inter.row, inter.col, sims) if s >= THRESHOLD}


def dedup(texts: list[str], **config) -> pl.DataFrame:
    """The stage applied to one batch of candidates (the batch is the whole data set)."""
    frame = pl.DataFrame({"candidate_id": [f"c{i}" for i in range(len(texts))], "completion": texts})
    extra = config.pop("extra", {})
    return DedupConfig(**config).build()(frame.with_columns(**{k: pl.Series(v) for k, v in extra.items()}))


def evaluate(docs: list[str], out: pl.DataFrame, truth: dict[tuple[int, int], float]) -> tuple[float, float]:
    """Recall: true pairs not left both in the output. Precision: dropped rows that really are within
    the threshold of the kept row they name."""
    keep = out["dedup_keep"].to_list()
    kept_row = [int(c[1:]) for c in out["dedup_cluster"]]
    recall = 1 - sum(keep[a] and keep[b] for a, b in truth) / len(truth)
    dropped = [i for i, k in enumerate(keep) if not k]
    precision = sum(exact_jaccard(docs[i], docs[kept_row[i]]) >= THRESHOLD for i in dropped) / len(dropped)
    return recall, precision


def test_recall_and_precision_against_exact_jaccard():
    docs = corpus(seed=3, originals=2000, variants=1500)
    truth = true_pairs(docs)
    near_threshold = [s for s in truth.values() if s < 0.9]
    assert len(truth) > 500 and len(near_threshold) > 100, "the corpus must hold many pairs close to the threshold"

    out = dedup(docs)
    recall, precision = evaluate(docs, out, truth)
    assert recall >= 0.95 and precision >= 0.99, (recall, precision)

    # Cluster ids: each dropped row names a kept row of its own cluster, with the exact similarity.
    rows = out.with_row_index("row")
    kept = rows.filter(pl.col("dedup_keep"))
    assert (kept["dedup_cluster"] == "c" + kept["row"].cast(pl.String)).all(), "a kept row is its own cluster"
    dropped = rows.filter(~pl.col("dedup_keep"))
    assert set(dropped["dedup_cluster"]) <= set(kept["dedup_cluster"])
    for row in dropped.head(300).iter_rows(named=True):
        target = int(row["dedup_cluster"][1:])
        assert row["dedup_similarity"] == pytest.approx(exact_jaccard(docs[row["row"]], docs[target]))
        same_words = re.findall(r"[^\W_]+", docs[row["row"]].lower()) == re.findall(r"[^\W_]+", docs[target].lower())
        expected = "exact_duplicate" if same_words else "near_duplicate"
        assert row["dedup_reason"] == expected
    best = dropped.group_by("dedup_cluster").agg(pl.col("dedup_similarity").max())
    joined = best.join(kept, on="dedup_cluster", suffix="_kept")
    assert joined.height == best.height and (joined["dedup_similarity"] == joined["dedup_similarity_kept"]).all()

    # The corpus separates banding choices: too few, long bands miss pairs.
    long_bands, _ = evaluate(docs, dedup(docs, bands=6), truth)
    assert long_bands < 0.95 < recall


def test_distinct_paragraphs_are_all_kept():
    rng = random.Random(11)
    docs = [paragraph(rng, 3, 12) for _ in range(400)]
    assert not true_pairs(docs)
    out = dedup(docs)
    assert out["dedup_keep"].all() and out["dedup_reason"].is_null().all() and out["dedup_similarity"].is_null().all()
    assert out["dedup_cluster"].to_list() == out["candidate_id"].to_list()


def test_exact_duplicates_differ_only_in_case_whitespace_punctuation():
    rng = random.Random(5)
    base = paragraph(rng, 4, 6)
    texts = [
        base,
        base.upper(),
        "  " + base.replace(" ", " \n\t ") + "\n",
        base.replace(".", "").replace(",", ""),
        base.replace(". ", "! ... "),
        edit(random.Random(1), base, 3),  # different words: not an exact duplicate
        "Yes.",
        "yes",
        "No!",
    ]
    out = dedup(texts)
    assert out["dedup_reason"].to_list()[:5] == [None] + ["exact_duplicate"] * 4
    assert out["dedup_cluster"].to_list()[:5] == ["c0"] * 5
    assert out["dedup_similarity"].to_list()[1:5] == [1.0] * 4
    assert out["dedup_reason"][5] != "exact_duplicate"
    assert out["dedup_reason"].to_list()[6:] == [None, "exact_duplicate", None], "texts shorter than a shingle compare too"


def test_keep_best_keeps_the_highest_score():
    rng = random.Random(8)
    base = paragraph(rng, 15, 15)
    words = base.split(" ")
    variants = []
    for position in (10, 35, 60, 85):
        copy = list(words)
        copy[position] = "lighthouse"
        variants.append(" ".join(copy))
    texts = [base, *variants, paragraph(rng, 8, 8)]
    assert all(exact_jaccard(a, b) >= THRESHOLD for a, b in combinations(texts[:5], 2)), "one cluster by construction"
    scores = [0.2, None, 0.9, 0.9, 0.5, 0.1]
    out = dedup(texts, keep="best", score_column="judge_score", extra={"judge_score": scores})
    assert out["dedup_keep"].to_list() == [False, False, True, False, False, True], "highest score, earliest among ties"
    assert out["dedup_cluster"].to_list()[:5] == ["c2"] * 5
    first = dedup(texts)
    assert first["dedup_keep"].to_list() == [True, False, False, False, False, True]


def test_config_errors():
    with pytest.raises(ValidationError, match="score_column"):
        DedupConfig(keep="best")
    with pytest.raises(ValidationError, match="only used with keep: best"):
        DedupConfig(score_column="judge_score")
    with pytest.raises(ValidationError, match="larger than num_perm"):
        DedupConfig(num_perm=32, bands=40)
    with pytest.raises(ValidationError, match="threshold"):
        DedupConfig(threshold=1.5)
    with pytest.raises(ValidationError, match="Extra inputs"):
        DedupConfig(treshold=0.7)
    stage = DedupConfig(keep="best", score_column="judge_score").build()
    with pytest.raises(DatagenError, match="dedup.score_column: score column 'judge_score'"):
        stage(pl.DataFrame({"candidate_id": ["a"], "completion": ["text"]}))


def messages(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def test_reference_decontamination(tmp_path):
    rng = random.Random(21)
    evals = [paragraph(rng, 6, 8) for _ in range(30)]
    reference = tmp_path / "evals.parquet"
    pl.DataFrame({"question": evals, "answer": ["x"] * 30}).write_parquet(reference)
    prompts = [evals[3], edit(random.Random(2), evals[7], 1).lower(), paragraph(rng, 3, 5), paragraph(rng, 3, 5), paragraph(rng, 3, 5)]
    completions = [paragraph(rng, 4, 6), paragraph(rng, 4, 6), paragraph(rng, 4, 6), evals[12] + " ", paragraph(rng, 4, 6)]
    assert exact_jaccard(prompts[1], evals[7]) >= THRESHOLD
    frame = pl.DataFrame({
        "candidate_id": [f"c{i}" for i in range(5)],
        "messages": [messages(f"You are assistant {i}.", p) for i, p in enumerate(prompts)],
        "completion": completions,
    })

    on_prompt = DedupConfig(column="prompt", reference=str(reference), reference_column="question").build()(frame)
    assert on_prompt["dedup_reason"].to_list() == ["reference_match", "reference_match", None, None, None]
    assert on_prompt["dedup_reference_row"].to_list()[:2] == [3, 7]
    assert on_prompt["dedup_similarity"][0] == 1.0 and THRESHOLD <= on_prompt["dedup_similarity"][1] < 1.0
    assert on_prompt["dedup_cluster"][:2].is_null().all()

    both = DedupConfig(column="both", reference=str(reference), reference_column="question").build()(frame)
    assert both["dedup_reason"].to_list() == ["reference_match", "reference_match", None, "reference_match", None]
    assert both["dedup_reference_row"][3] == 12, "with both, prompt and completion are each checked"

    with pytest.raises(DatagenError, match="dedup.reference_column: no column 'prompt'"):
        DedupConfig(reference=str(reference)).build()
    with pytest.raises(DatagenError, match="reference file not found"):
        DedupConfig(reference=str(tmp_path / "missing.parquet")).build()


def test_column_prompt_compares_the_last_user_message():
    rng = random.Random(4)
    shared, other = paragraph(rng, 3, 4), paragraph(rng, 3, 4)
    frame = pl.DataFrame({
        "candidate_id": ["a", "b", "c"],
        "messages": [messages("You are a poet.", shared), messages("You are a pirate.", shared), messages("You are a poet.", other)],
        "completion": [paragraph(rng) for _ in range(3)],
    })
    out = DedupConfig(column="prompt").build()(frame)
    assert out["dedup_reason"].to_list() == [None, "exact_duplicate", None]
    assert DedupConfig(column="completion").build()(frame)["dedup_keep"].all()


def test_shingles_and_signatures_estimate_exact_jaccard():
    docs = corpus(seed=9, originals=20, variants=30)
    shingles = shingle(pl.Series(docs), SIZE)
    for i, text in enumerate(docs):
        assert len(shingles.of(i)) == len(word_shingles(text)), "one distinct hash per distinct 5-gram"
    signatures = MinHasher(128, 1).signatures(shingles)
    assert not (signatures == np.iinfo(np.uint32).max).any(), "densification fills every bin"

    # Agreement of one-permutation signatures estimates Jaccard about as well as datasketch's
    # classic MinHash (128 SHA-1-hashed permutations) on the same documents, without bias.
    sketches = []
    for text in docs:
        m = MinHash(num_perm=128, seed=1)
        for s in word_shingles(text):
            m.update(" ".join(s).encode())
        sketches.append(m)
    ours_err, theirs_err = [], []
    for a, b in combinations(range(len(docs)), 2):
        exact = exact_jaccard(docs[a], docs[b])
        assert jaccard(shingles.of(a), shingles.of(b)) == pytest.approx(exact)
        if exact < 0.3:
            continue
        ours_err.append(float((signatures[a] == signatures[b]).mean()) - exact)
        theirs_err.append(sketches[a].jaccard(sketches[b]) - exact)
    assert len(ours_err) >= 20
    assert np.mean(np.abs(ours_err)) < 0.05 and max(np.abs(ours_err)) < 0.2 and abs(np.mean(ours_err)) < 0.03
    assert abs(np.mean(np.abs(ours_err)) - np.mean(np.abs(theirs_err))) < 0.03

    pairs = np.array(list(combinations(range(len(docs)), 2)))
    vectorized = pair_jaccard(shingles, pairs[:, 0], pairs[:, 1])
    assert vectorized == pytest.approx([jaccard(shingles.of(a), shingles.of(b)) for a, b in pairs])


def test_short_and_empty_texts_shingle():
    shingles = shingle(pl.Series(["One two", "", None, "one, TWO!", "a b c d e f"]), SIZE, text_keys=True)
    assert shingles.counts().tolist() == [1, 0, 0, 1, 2]
    assert shingles.of(0).tolist() == shingles.of(3).tolist(), "a short text is one shingle of all its words"
    assert (shingles.text_keys[0] == shingles.text_keys[3]).all() and (shingles.text_keys[0] != shingles.text_keys[4]).any()


RESPONSES = [
    "Rivers carve their valleys over thousands of years, carrying sand and stones from the mountains down to the sea, "
    "and every bend in the channel tells a story about the floods that shaped it.",
    "RIVERS carve their valleys over thousands of years; carrying sand and stones from the mountains down to the sea. "
    "And every bend in the channel tells a story about the floods that shaped it!",
    "Answer {index}: a bridge must carry its own weight and the weight of the traffic above it, so engineers test every "
    "beam and cable before the first car crosses, and they inspect the whole structure again each year.",
    "Stars are enormous balls of hot gas that shine because nuclear fusion in their cores turns hydrogen into helium "
    "and releases a steady flood of light and heat.",
    "Volcanoes form where molten rock rises through cracks in the crust, and the shape of each mountain depends on "
    "how thick the lava is and how much gas it holds.",
]


def stage_rows(out, index: int, label: str) -> pl.DataFrame:
    files = sorted((out / "run" / "stages").glob(f"{index:02d}_{label}/*.parquet"))
    return pl.concat([pl.read_parquet(f).with_columns(pl.lit(j).alias("shard")) for j, f in enumerate(files)])


def test_pipeline_dedups_across_shards_and_resume_keeps_verdicts(project):
    path = project(
        templates=[{"name": "tiny", "count": 12}],
        backend={"kind": "scripted", "responses": RESPONSES, "sampling": {"n": 2, "max_tokens": 100}},
        stages=[{"stage": "finished"}, {"stage": "dedup"}],
    )
    out = project.root / "out"
    result = run_pipeline(load_recipe(path), out, progress=False)
    rows = stage_rows(out, 2, "dedup")
    assert rows["shard"].n_unique() == 3 and rows.height == 24

    texts = dict(zip(rows["candidate_id"], rows["completion"]))
    shard = dict(zip(rows["candidate_id"], rows["shard"]))
    kept = rows.filter(pl.col("dedup_keep"))
    for a, b in combinations(kept["completion"], 2):
        assert exact_jaccard(a, b) < THRESHOLD
    dropped = rows.filter(~pl.col("dedup_keep"))
    assert set(dropped["dedup_reason"]) == {"exact_duplicate", "near_duplicate"}
    for row in dropped.iter_rows(named=True):
        assert row["dedup_cluster"] in set(kept["candidate_id"])
        assert exact_jaccard(row["completion"], texts[row["dedup_cluster"]]) >= THRESHOLD
    assert any(shard[c] != s for c, s in zip(dropped["dedup_cluster"], dropped["shard"])), "duplicates across shards"
    assert kept.height == result.rows_written

    manifest = json.loads((out / "run" / "manifest.json").read_text())
    summary = manifest["stages"]["dedup"]["summary"]
    stats = {s["stage"]: s for s in result.stage_stats}["dedup"]
    assert stats["dropped"] == {r: c for r, c in dropped["dedup_reason"].value_counts().rows()}
    assert summary["exact_duplicates"] + summary["near_duplicates"] == dropped.height and summary["reference_matches"] == 0
    assert summary["duplicate_clusters"] == dropped["dedup_cluster"].n_unique()
    assert summary["largest_cluster"] == rows["dedup_cluster"].value_counts()["count"].max()

    # A crash after the first dedup shard: the resumed run refits on every shard, same verdicts.
    del manifest["stages"]["dedup"]["shards"]["1"], manifest["stages"]["dedup"]["shards"]["2"]
    manifest["complete"] = False
    (out / "run" / "manifest.json").write_text(json.dumps(manifest))
    for j in (1, 2):
        next((out / "run" / "stages" / "02_dedup").glob(f"*{j}.parquet")).unlink()
    run_pipeline(load_recipe(path), out, progress=False)
    assert stage_rows(out, 2, "dedup").equals(rows)


def test_cli_parquet_end_to_end(tmp_path):
    docs = corpus(seed=13, originals=150, variants=100)
    truth = true_pairs(docs)
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": list(range(len(docs))), "text": docs, "tags": [["a", str(i)] for i in range(len(docs))]}).write_parquet(src)
    dst = tmp_path / "sub" / "out.parquet"
    run = datagen_cli("dedup", src, "--column", "text", "--threshold", "0.8", "--out", dst)
    assert run.returncode == 0, run.stderr
    out = pl.read_parquet(dst)
    assert out.columns == ["id", "text", "tags", "dedup_cluster", "dedup_similarity"]
    assert out["tags"].to_list() == [["a", str(i)] for i in out["id"]]
    ids = set(out["id"])
    assert all(not (a in ids and b in ids) for a, b in truth), "no pair at the threshold survives"
    assert all(int(c) in ids for c in out["dedup_cluster"])
    assert f"{len(docs)} rows in -> {out.height} kept" in run.stdout and f"wrote {out.height} rows" in run.stdout


def test_cli_jsonl_keep_dropped_and_reference(tmp_path):
    rng = random.Random(17)
    evals = [paragraph(rng, 2, 3) for _ in range(5)]
    reference = tmp_path / "evals.jsonl"
    pl.DataFrame({"prompt": evals}).write_ndjson(reference)
    base = paragraph(rng, 3, 4)
    texts = [base, base.upper(), evals[2].lower(), paragraph(rng, 3, 4), None]
    src = tmp_path / "in.jsonl"
    pl.DataFrame({"text": texts, "score": [1, 5, 2, 3, 4]}).write_ndjson(src)
    dst = tmp_path / "out.jsonl"
    run = datagen_cli("dedup", src, "--column", "text", "--keep", "best", "--score-column", "score",
                      "--reference", reference, "--reference-column", "prompt", "--keep-dropped", "--out", dst)
    assert run.returncode == 0, run.stderr
    out = pl.read_ndjson(dst)
    assert out["dedup_keep"].to_list() == [False, True, False, True, True]
    assert out["dedup_reason"].to_list() == ["exact_duplicate", None, "reference_match", None, None]
    assert out["dedup_cluster"].to_list() == [1, 1, None, 3, 4]
    assert out["dedup_reference_row"].to_list() == [None, None, 2, None, None]
    assert "exact_duplicate=1" in run.stdout and "reference_match=1" in run.stdout


CLI_ERRORS = [
    ("missing_file", lambda d: ["nope.parquet", "--column", "text"], "nope.parquet: input file not found"),
    ("unknown_extension", lambda d: [d / "in.csv", "--column", "text"], "unknown input file extension '.csv'"),
    ("missing_column", lambda d: [d / "in.parquet", "--column", "body"], "--column: no column 'body' (columns: text, n)"),
    ("not_text", lambda d: [d / "in.parquet", "--column", "n"], "--column: column 'n' holds Int64, not text"),
    ("empty_file", lambda d: [d / "empty.jsonl", "--column", "text"], "empty.jsonl: input file is empty"),
    ("threshold", lambda d: [d / "in.parquet", "--column", "text", "--threshold", "1.5"], "--threshold: Input should be less than or equal to 1"),
    ("out_extension", lambda d: [d / "in.parquet", "--column", "text", "--out", d / "out.txt"], "out.txt: --out: unknown output file extension"),
]


@pytest.mark.parametrize("case, argv, message", CLI_ERRORS, ids=[c[0] for c in CLI_ERRORS])
def test_cli_errors_one_line_exit_2(tmp_path, case, argv, message):
    pl.DataFrame({"text": ["a b c"], "n": [1]}).write_parquet(tmp_path / "in.parquet")
    (tmp_path / "in.csv").write_text("text\na b c\n")
    (tmp_path / "empty.jsonl").write_text("")
    args = [str(a) for a in argv(tmp_path)]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.parquet")]
    run = datagen_in_process("dedup", *args, cwd=tmp_path)  # the console script: test_cli_parquet_end_to_end
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_chunked_sketch_and_pairs_give_the_same_verdicts(monkeypatch):
    import datagen.steps.dedup as dedup_module

    docs = corpus(seed=12, originals=150, variants=150)
    whole = dedup(docs)
    monkeypatch.setattr(dedup_module, "SKETCH_CHUNK", 7)  # texts sketched 7 at a time
    monkeypatch.setattr(dedup_module, "PAIR_CHUNK", 5)  # candidate pairs compared 5 at a time
    chunked = dedup(docs)
    assert (~whole["dedup_keep"]).sum() > 50
    assert chunked.equals(whole)
