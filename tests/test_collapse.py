from __future__ import annotations

import json
import re
from itertools import combinations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from scipy.sparse.csgraph import connected_components

from datagen.text.embeddings import connected_labels, encode, load_encoder, similar_pairs
from datagen.errors import DatagenError
from datagen.run.executor import apply_stage, run_pipeline
from datagen.recipe import load_recipe
from datagen.steps.collapse import CollapseConfig

from helpers import ScriptedModel, candidate_frame, datagen_cli

NILE = "The Nile is the longest river in Africa and flows north into the Mediterranean Sea."
NILE_PARAPHRASE = "Flowing north into the Mediterranean, the Nile is Africa's longest river."

# Outputs of a healthy generator: different subjects, different openings.
DIVERSE = [
    NILE,
    "Volcanoes form where magma from the mantle reaches the surface through cracks in the crust.",
    "Suspension bridges hang their deck from cables draped over tall towers.",
    "Stars shine because nuclear fusion in their cores turns hydrogen into helium.",
    "A haiku has three lines of five, seven and five syllables.",
    "To bake bread, mix flour, water, salt and yeast, then let the dough rise before baking.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "The French Revolution began in 1789 and ended the absolute monarchy of Louis XVI.",
    "Binary search halves a sorted list at every step, so it needs only logarithmic time.",
    "Honeybees tell their hive where flowers are by dancing in a figure-eight pattern.",
    "Chess openings such as the Sicilian Defence aim to control the centre of the board.",
    "Glaciers carve U-shaped valleys as their heavy ice grinds slowly over bedrock.",
    "Vaccines train the immune system by showing it a harmless piece of a pathogen.",
    "Jazz grew out of blues and ragtime in New Orleans early in the twentieth century.",
    "A balanced diet includes vegetables, whole grains, proteins and healthy fats.",
    "Tides rise and fall twice a day because of the pull of the Moon on the oceans.",
    "Octopuses have three hearts and can change the colour of their skin in an instant.",
    "Compound interest means earning interest on the interest already added to your savings.",
    "The Great Wall of China was built over centuries to guard northern borders from raids.",
    "Rainbows appear when sunlight is refracted and reflected inside falling raindrops.",
    "Marathon runners train by slowly increasing their weekly distance over many months.",
    "Recycling aluminium cans saves most of the energy needed to make new metal from ore.",
    "Penguins cannot fly, but their stiff wings make them superb swimmers under water.",
    "Mount Everest grows a few millimetres taller each year as tectonic plates collide.",
]

# A collapsed generator: one refusal, with trivial variations, whatever the prompt.
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I'm sorry, but I cannot help with that request.",
    "I'm sorry, but I can't help with that request, number {index}.",
]


@pytest.fixture(scope="module")
def encoder():
    """The real packaged MiniLM, loaded once; stages built in this process share it."""
    return load_encoder("default")


def candidates(outputs: list[tuple[str, str, str | None, list[str]]]) -> pl.DataFrame:
    """Rows like generate writes them, from (prompt_id, template_id, persona, [completions])."""
    return candidate_frame(
        {"prompt_id": pid, "template_id": tid, "persona": persona, "sample_index": k, "completion": text}
        for pid, tid, persona, texts in outputs
        for k, text in enumerate(texts)
    )


def fit_stage(frame: pl.DataFrame, **config):
    stage = CollapseConfig(**config).build()
    stage.fit(lambda: iter([frame]))
    return stage


def test_paraphrased_siblings_are_dropped_and_distinct_siblings_kept(encoder):
    batch = candidates([
        ("p1", "facts", "a guide", [NILE, NILE_PARAPHRASE, DIVERSE[1]]),
        ("p2", "facts", "a guide", [DIVERSE[2], DIVERSE[3]]),
        ("p3", "facts", "a poet", [DIVERSE[4], NILE_PARAPHRASE]),
    ])
    stage = fit_stage(batch, max_collapse_rate=None)
    out = apply_stage(stage, batch)

    by_id = {row["candidate_id"]: row for row in out.iter_rows(named=True)}
    assert by_id["p1-1"]["collapse_reason"] == "sibling_duplicate" and by_id["p1-1"]["dropped_by"] == "collapse"
    kept = {cid for cid, row in by_id.items() if row["keep"]}
    assert kept == {"p1-0", "p1-2", "p2-0", "p2-1", "p3-0", "p3-1"}, "distinct siblings, and the paraphrase under another prompt, stay"
    vectors = encode(encoder, [NILE, NILE_PARAPHRASE], 8)
    assert by_id["p1-0"]["collapse_max_sibling_sim"] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-5)
    assert by_id["p2-0"]["collapse_max_sibling_sim"] < 0.5
    # The same opinion given to two prompts is a cross-set cluster, reported but kept by default.
    nile = {cid for cid, row in by_id.items() if row["collapse_cluster"] is not None}
    assert nile == {"p1-0", "p1-1", "p3-1"} and {by_id[c]["collapse_cluster"] for c in nile} == {"p1-0"}

    dropping = fit_stage(batch, max_collapse_rate=None, drop_cross_set=True)
    reasons = dict(apply_stage(dropping, batch).select("candidate_id", "collapse_reason").rows())
    assert reasons["p3-1"] == "cross_duplicate" and reasons["p1-1"] == "sibling_duplicate" and reasons["p1-0"] is None


def test_healthy_diverse_run_passes_and_reports(project):
    pool = iter(DIVERSE)  # every completion of the run is a different real sentence

    out = project.root / "out"
    path = project(stages=[{"stage": "collapse", "min_group_size": 4, "max_collapse_rate": 0.1}])
    result = run_pipeline(load_recipe(path), out, progress=False, backend_factory=lambda: ScriptedModel(reply=lambda request, index: next(pool)))

    assert result.rows_written == 12
    summary = {s["stage"]: s for s in result.stage_stats}["collapse"]["summary"]
    assert summary["rows"] == 12 and summary["cross_set_clusters"] == 0 and summary["sibling_duplicates"] == 0
    tiny = summary["by_template"]["tiny"]
    assert tiny["collapse_rate"] == 0 and tiny["distinct_1"] > 0.6 and tiny["mean_pairwise_cosine"] < 0.3
    assert set(summary["by_persona"]) <= {"a pirate", "a poet", "a teacher"} and summary["by_persona"]
    assert "### collapse" in (out / "README.md").read_text()


def collapsed_recipe(project):
    return project(
        backend={"kind": "scripted", "responses": REFUSALS, "sampling": {"n": 2, "max_tokens": 50}},
        stages=[{"stage": "finished"}, {"stage": "collapse", "min_group_size": 5}],
    )


def test_collapsed_generator_stops_the_run_naming_the_template(project, encoder):
    out = project.root / "out"
    with pytest.raises(DatagenError) as caught:
        run_pipeline(load_recipe(collapsed_recipe(project)), out, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "stage 'collapse'" in message and "template 'tiny' (100% of 12 rows)" in message and "max_collapse_rate 0.5" in message
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert not manifest.get("complete")
    assert len(manifest["stages"]["finished"]["shards"]) == manifest["shards"], "finished shards stay on disk"
    assert not list((out / "run" / "stages").glob("*collapse*/*.parquet")), "no collapse shard is written"


@pytest.mark.slow  # the installed CLI loads the encoder in a subprocess
def test_cli_exits_2_with_one_line_on_collapse(project):
    result = datagen_cli("run", collapsed_recipe(project), "--out", project.root / "out", "--no-progress")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datagen: error: stage 'collapse'") and "template 'tiny'" in lines[0], result.stderr


def test_only_the_collapsed_template_is_named(encoder):
    healthy = [(f"f{i}", "facts", "a guide", DIVERSE[2 * i : 2 * i + 2]) for i in range(6)]
    collapsed = [(f"r{i}", "refusals", "a guide", [REFUSALS[i % 3].replace("{index}", str(i))]) for i in range(6)]
    with pytest.raises(DatagenError) as caught:
        fit_stage(candidates(healthy + collapsed), min_group_size=5)
    message = str(caught.value)
    assert "template 'refusals' (100% of 6 rows)" in message and "'facts'" not in message
    # the persona mixes both templates: 6 of 18 rows collapsed is under the limit
    assert "persona" not in message

    stage = fit_stage(candidates(healthy), min_group_size=5, max_collapse_rate=0.0)
    assert stage.summarize(pl.LazyFrame())["by_template"]["facts"]["collapse_rate"] == 0


def test_repeated_openings_count_as_collapse(encoder):
    opening = "Great question! Here is what you need to know:"
    outputs = [(f"p{i}", "t", None, [f"{opening} {DIVERSE[i]}"]) for i in range(4)] + [(f"q{i}", "t", None, [DIVERSE[10 + i]]) for i in range(4)]
    stage = fit_stage(candidates(outputs), cluster_threshold=0.99, max_collapse_rate=None)
    stats = stage.summarize(pl.LazyFrame())["by_template"]["t"]
    assert stats["repeated_prefix_rate"] == 0.5 and stats["near_duplicate_rate"] == 0 and stats["collapse_rate"] == 0.5
    off = fit_stage(candidates(outputs), cluster_threshold=0.99, max_collapse_rate=None, prefix_tokens=None)
    assert off.summarize(pl.LazyFrame())["by_template"]["t"]["collapse_rate"] == 0


def test_distinct_n_and_mean_pairwise_cosine_match_direct_computation(encoder):
    texts = {"a": DIVERSE[:5] + ["The Nile, the Nile, the Nile is long."], "b": DIVERSE[5:8]}
    outputs = [(f"{t}{i}", t, None, [text]) for t, group in texts.items() for i, text in enumerate(group)]
    summary = fit_stage(candidates(outputs), max_collapse_rate=None).summarize(pl.LazyFrame())
    for template, group in texts.items():
        words = [re.findall(r"\w+", text.lower()) for text in group]
        unigrams = [w for ws in words for w in ws]
        bigrams = [pair for ws in words for pair in zip(ws, ws[1:])]
        vectors = encode(load_encoder("default"), group, 4)
        pairwise = np.mean([float(u @ v) for u, v in combinations(vectors, 2)])
        stats = summary["by_template"][template]
        assert stats["distinct_1"] == pytest.approx(len(set(unigrams)) / len(unigrams), abs=1e-4)
        assert stats["distinct_2"] == pytest.approx(len(set(bigrams)) / len(bigrams), abs=1e-4)
        assert stats["mean_pairwise_cosine"] == pytest.approx(pairwise, abs=1e-4)
    assert summary["by_template"]["a"]["distinct_1"] < 0.9, "the repetitive output lowers distinct-1"


def test_blocked_search_finds_the_brute_force_pairs(encoder):
    texts = DIVERSE + [NILE_PARAPHRASE] + [r.replace("{index}", "3") for r in REFUSALS] + ["Sorry, I can't help with that request!"]
    vectors = encode(encoder, texts, 16)
    dense = vectors @ vectors.T
    for threshold in (0.3, 0.8):
        expected = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(dense > threshold, k=1)))}
        assert 0 < len(expected) < len(texts) * (len(texts) - 1) // 2
        for block in (1, 4, 7, 64):
            found = [(int(i), int(j)) for tile_i, tile_j in similar_pairs(vectors, threshold, block) for i, j in zip(tile_i, tile_j)]
            assert len(found) == len(set(found)) and set(found) == expected, (threshold, block)
            labels = connected_labels(len(texts), similar_pairs(vectors, threshold, block))
            _, components = connected_components(np.triu(dense > threshold, k=1), directed=False)
            same_label = labels[:, None] == labels[None, :]
            assert (same_label == (components[:, None] == components[None, :])).all()
            assert all(labels[k] == np.flatnonzero(labels == labels[k]).min() for k in range(len(texts)))


def test_bad_config_and_missing_model_are_user_errors(tmp_path):
    with pytest.raises(ValidationError):
        CollapseConfig(sibling_threshold=1.0)
    with pytest.raises(ValidationError):
        CollapseConfig(max_rate=0.5)
    stage = CollapseConfig(name="mode", model=str(tmp_path / "no-such-model")).build()
    with pytest.raises(DatagenError, match=r"^mode\.model: cannot load the embedding model"):
        stage(candidates([("p", "t", None, [NILE])]))
