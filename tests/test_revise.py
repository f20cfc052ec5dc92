"""The revise stage (Constitutional AI critique and revision) with a scripted model that answers
each turn the way a model reading it would; the shipped constitution; recipe wiring."""

from __future__ import annotations

import datasets
import polars as pl
import pytest
from pydantic import ValidationError

from datagen.sources.constitutions import load_constitution, shipped_constitutions
from datagen.errors import DatagenError
from datagen.run.executor import apply_stage, build_steps, run_pipeline
from datagen.recipe import load_recipe
from datagen.rows import BackendConfig
from datagen.steps.revise import ReviseConfig, ReviseStage, clean_revision
from helpers import QUESTION, RIGHT, Call, ScriptedModel, candidate_frame

# Refusing a plain arithmetic question is the over-refusal the constitution is for.
REFUSAL = "I'm sorry, but I can't help with homework questions. Please ask your teacher instead."
VAGUE = "Hours are made of minutes. There are quite a lot of them. Look at a clock."
FIXED = RIGHT


def turn_reader(revisions: dict[str, str], fail_revisions: bool = False) -> ScriptedModel:
    """Critiques and revises the way a model reading the conversation would: per answer, per turn;
    with `fail_revisions` the revision call raises, as a dying engine does."""

    def reply(request, index):
        asked = request.messages[-1]["content"]
        original = request.messages[len(QUESTION)]["content"]
        if asked.startswith("Critique request:"):
            return "" if original == "" else f"The answer '{original[:20]}' does not do what was asked."
        assert asked.startswith("Revision request:") and request.messages[-2]["role"] == "assistant"
        return revisions[original]

    class Reader(ScriptedModel):
        def generate(self, requests, sampling):
            if fail_revisions and requests[0].messages[-1]["content"].startswith("Revision request:"):
                self.calls.append(Call(list(requests), sampling))
                raise RuntimeError("engine died\nsecond line")
            return super().generate(requests, sampling)

    return Reader(reply=reply)


def candidates(*answers: str) -> pl.DataFrame:
    return candidate_frame({"completion": a} for a in answers)


def run(batch, revisions, **config):
    backend = turn_reader(revisions, config.pop("fail_revisions", False))
    stage = ReviseStage(ReviseConfig(**config), backend_factory=lambda: backend)
    return stage(batch), backend, stage


def test_shipped_constitution_has_helpful_harmless_honest_and_over_refusal():
    assert "hhh" in shipped_constitutions()
    ids = [p.id for p in load_constitution("hhh").principles]
    assert ids == ["helpful", "harmless", "honest", "over_refusal"]
    over_refusal = load_constitution("hhh").principles[3]
    assert "legitimate" in over_refusal.critique and "refus" in over_refusal.critique.lower()


def test_critique_then_revision_per_candidate_in_two_calls():
    out, backend, _ = run(candidates(REFUSAL, VAGUE), {REFUSAL: "Revised response: " + FIXED, VAGUE: FIXED}, principles=["over_refusal"])
    assert out["revise_revision"].to_list() == [FIXED, FIXED], "the 'Revised response:' label is removed"
    assert out["revise_critique"].to_list()[0] == f"The answer '{REFUSAL[:20]}' does not do what was asked."
    assert out["revise_principle"].to_list() == ["over_refusal", "over_refusal"]
    assert out["revise_error"].to_list() == [None, None] and out["revise_keep"].all()
    (critiques, critique_sampling), (revisions, revision_sampling) = backend.calls
    assert len(critiques) == len(revisions) == 2, "one call per turn for the whole batch"
    assert critique_sampling.max_tokens == 128 and revision_sampling.max_tokens == 256
    first = revisions[0].messages
    turn = len(QUESTION)
    assert first[: turn + 1] == QUESTION + [{"role": "assistant", "content": REFUSAL}]
    assert "refuses, deflects" in first[turn + 1]["content"]
    assert first[turn + 2] == {"role": "assistant", "content": out["revise_critique"][0]}
    assert len({critiques[0].seed, critiques[1].seed, revisions[0].seed}) == 3, "every request has its own seed"


def test_failures_are_recorded_never_fatal():
    parrot = f"The answer '{VAGUE[:20]}' does not do what was asked."  # the critique, repeated
    out, _, stage = run(candidates(REFUSAL, VAGUE, "", FIXED), {REFUSAL: "   ", VAGUE: parrot, FIXED: FIXED + " Check: 210 / 60 = 3.5 hours."})
    assert out["revise_revision"].to_list() == [None, None, None, FIXED + " Check: 210 / 60 = 3.5 hours."]
    assert out["revise_error"].to_list() == ["revision: empty", "revision: repeats the critique", "critique: empty", None]
    assert out["revise_keep"].all(), "on_error: keep by default"

    dropped, _, _ = run(candidates(REFUSAL, VAGUE), {REFUSAL: FIXED, VAGUE: FIXED}, on_error="drop", fail_revisions=True)
    assert dropped["revise_error"].str.starts_with("revision: backend error: RuntimeError: engine died").all()
    assert dropped["revise_keep"].to_list() == [False, False] and dropped["revise_reason"].to_list() == ["revise_error"] * 2


def test_a_revision_cut_off_at_max_tokens_is_an_error():
    long_fix = " ".join(["Multiply 3.5 by 60 to get 210."] * 20)
    out, _, _ = run(candidates(VAGUE), {VAGUE: long_fix}, sampling={"max_tokens": 30})
    assert out["revise_revision"].to_list() == [None] and out["revise_error"].to_list() == ["revision: cut off at max_tokens"]


def test_principles_are_drawn_per_candidate_seeded_and_restricted():
    batch = candidates(*[f"answer {i}: {VAGUE}" for i in range(24)])
    revisions = {text: FIXED for text in batch["completion"]}
    a, _, _ = run(batch, revisions, seed=3)
    b, _, _ = run(batch.reverse(), revisions, seed=3)
    assert a["revise_principle"].to_list() == b["revise_principle"].reverse().to_list(), "a candidate's principle does not depend on its batch"
    assert a["revise_principle"].n_unique() == 4
    c, _, _ = run(batch, revisions, seed=4)
    assert c["revise_principle"].to_list() != a["revise_principle"].to_list()
    only, _, _ = run(batch, revisions, principles=["honest", "helpful"])
    assert set(only["revise_principle"]) == {"honest", "helpful"}


def test_summary_counts_revisions_errors_and_principles():
    batch = candidates(REFUSAL, VAGUE, "")
    out, _, stage = run(batch, {REFUSAL: REFUSAL, VAGUE: FIXED}, principles=["helpful"])
    merged = apply_stage(stage, batch)
    summary = stage.summarize(merged.lazy())
    assert summary["revised"] == 2 and summary["errors"] == 1 and summary["unchanged"] == 1
    assert summary["error_kinds"] == {"critique: empty": 1} and summary["principles"] == {"helpful": 3}


def test_clean_revision_removes_only_a_leading_label():
    assert clean_revision("Here is the revised response:\n\n" + FIXED) == FIXED
    assert clean_revision("**Revision:** " + FIXED) == FIXED
    assert clean_revision(FIXED) == FIXED
    assert clean_revision("Revision of plans is normal: " + FIXED).startswith("Revision of plans")


def test_config_errors():
    with pytest.raises(ValidationError, match="n must be 1"):
        ReviseConfig(sampling={"n": 2})
    with pytest.raises(ValidationError, match="not in the constitution"):
        ReviseConfig(principles=["polite"])
    with pytest.raises(ValidationError, match="own 'sampling:'"):
        ReviseConfig(backend={"kind": "vllm", "sampling": {"max_tokens": 10}})
    with pytest.raises(DatagenError, match="no shipped constitution 'nope'"):
        ReviseConfig(constitution="nope")


def test_recipe_revise_stage_uses_the_generator_backend_unless_given_one(project):
    path = project(backend={"kind": "scripted", "responses": ["Use the reset button."], "sampling": {"n": 1}},
                   stages=[{"stage": "revise"}])
    loaded = load_recipe(path)
    stage = loaded.recipe.stages[0]
    assert stage.backend is None, "the recipe leaves the stage as written; the step resolves its model"
    [built] = build_steps(loaded)
    assert built.backend.kind == "scripted" and built.backend.responses == ["Use the reset button."]
    assert built.backend_config() == BackendConfig(kind="scripted", responses=["Use the reset button."])
    own_recipe = load_recipe(path, ["stages.0.backend={kind: vllm, model: embedded}"])
    own = own_recipe.recipe.stages[0]
    assert own.backend.kind == "vllm"
    assert own.build().backend_config() == BackendConfig(kind="vllm", model="embedded")
    assert build_steps(own_recipe)[0].backend_config() == BackendConfig(kind="vllm", model="embedded")
    assert ReviseConfig().build().backend_config() == BackendConfig(), "outside a recipe: the embedded vLLM model"


def test_constitutional_run_with_scripted_model_writes_revision_vs_original_pairs(project):
    responses = ["Press the reset button until it clicks.", "Outlets have buttons.", "I cannot help with that, sorry."]
    path = project(
        backend={"kind": "scripted", "responses": responses, "sampling": {"n": 2, "max_tokens": 30}},
        stages=[{"stage": "revise"}],
        output={"format": "dpo", "pairs": {"strategy": "critique_revision", "pairs_per_prompt": 2}},
    )
    out = project.root / "out"
    run_pipeline(load_recipe(path), out, progress=False)
    candidates_after = pl.read_parquet(out / "run" / "stages" / "01_revise" / "*.parquet")
    assert candidates_after["revise_principle"].is_not_null().all()
    failed = candidates_after.filter(pl.col("revise_revision").is_null())
    assert (failed["revise_error"] == "revision: repeats the critique").all(), "the scripted model can only fail this way"
    ds = datasets.load_dataset(str(out), split="train")
    changed = candidates_after.filter(pl.col("revise_revision") != pl.col("completion"))
    assert ds.num_rows == changed.height > 0, "every changed revision is a pair; unchanged ones are skipped as identical"
    for row in ds:
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        assert row["chosen_id"] == row["rejected_id"] and row["principle"] in {"helpful", "harmless", "honest", "over_refusal"}
        assert row["critique"] and row["strategy"] == "critique_revision"
