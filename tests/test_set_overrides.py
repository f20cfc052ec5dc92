"""`--set`: stages by name, appending a stage, did-you-mean for unknown fields, and errors that
blame the `--set` that caused them rather than the recipe file."""

from __future__ import annotations

import pytest

from datagen.cli import main
from datagen.errors import DatagenError
from datagen.recipe import load_recipe

STAGES = [{"stage": "finished"}, {"stage": "length", "min_chars": 5}, {"stage": "length", "name": "long_enough", "min_chars": 20}]


def recipe(project):
    return project(stages=STAGES)


def test_stages_by_name_and_by_position(project):
    path = recipe(project)
    stages = load_recipe(path, ["stages.length.min_chars=7", "stages.long_enough.max_chars=500", "stages.0.drop_empty=false"]).recipe.stages
    assert (stages[1].min_chars, stages[2].max_chars, stages[2].min_chars, stages[0].drop_empty) == (7, 500, 20, False)


def test_an_unknown_stage_name_suggests_the_closest(project):
    with pytest.raises(DatagenError) as err:
        load_recipe(recipe(project), ["stages.lenght.min_chars=7"])
    assert err.value.source == "--set stages.lenght.min_chars=7"
    assert "no item named 'lenght' in stages (finished, length, long_enough); did you mean 'length'?" in str(err.value)


def test_append_a_stage(project):
    path = recipe(project)
    stages = load_recipe(path, ["stages.+={stage: length, name: tail, min_chars: 10}", "stages.tail.max_chars=99"]).recipe.stages
    assert [s.label for s in stages] == ["finished", "length", "long_enough", "tail"]
    assert (stages[3].min_chars, stages[3].max_chars) == (10, 99)
    with pytest.raises(DatagenError) as err:  # validated like the file, blamed on the --set
        load_recipe(path, ["stages.+={stage: length, min_chars: -1}"])
    assert err.value.source == "--set stages.+={stage: length, min_chars: -1}"


@pytest.mark.parametrize(
    ("override", "field", "suggestion"),
    [
        ("stages.length.min_char=7", "stages[1].length.min_char", "min_chars"),
        ("backend.sampling.max_token=64", "backend.sampling.max_token", "max_tokens"),
        ("sed=3", "sed", "seed"),
        ("stages.+={stage: length, min_chrs: 3}", "stages[3].length.min_chrs", "min_chars"),
    ],
)
def test_unknown_field_suggests_the_closest_known_one_and_blames_the_set(project, override, field, suggestion):
    with pytest.raises(DatagenError) as err:
        load_recipe(recipe(project), [override])
    assert err.value.source == f"--set {override}", "the --set is blamed, not the file"
    assert err.value.field == field
    assert err.value.message.startswith("unknown field") and err.value.message.endswith(f"did you mean {suggestion!r}?")


def test_a_typo_in_the_file_is_blamed_on_the_file_with_a_suggestion(project):
    path = project(stages=[{"stage": "length", "max_char": 10}])
    with pytest.raises(DatagenError) as err:
        load_recipe(path, ["stages.length.min_chars=3"])
    assert err.value.source == str(path) and "did you mean 'max_chars'?" in err.value.message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a check across fields of one stage reports at the stage, not at the field the --set wrote
        ("stages.long_enough.max_chars=10", "stages[2].length: min_chars (20) is larger than max_chars (10)"),
        # a check over the whole recipe names its field in the message
        ("stages.+={stage: finished}", "stages: two stages are labelled 'finished'; give one a distinct 'name'"),
        ("stages.1.stage=lenght", "stages[1]: unknown stage 'lenght' (one of collapse, "),
    ],
)
def test_errors_of_checks_over_several_fields_blame_the_set_that_caused_them(project, override, message):
    with pytest.raises(DatagenError) as err:
        load_recipe(recipe(project), [override])
    assert err.value.source == f"--set {override}"
    assert str(err.value).startswith(f"--set {override}: {message}"), str(err.value)


def test_an_error_the_file_makes_on_its_own_is_blamed_on_the_file(project):
    path = project(stages=[{"stage": "length", "min_chars": 40, "max_chars": 10}])
    with pytest.raises(DatagenError) as err:
        load_recipe(path, ["seed=3", "backend.sampling.n=2"])
    assert err.value.source == str(path) and "min_chars (40) is larger than max_chars (10)" in err.value.message


def test_cli_validate_with_sets_by_name(project, capsys):
    path = recipe(project)
    assert main(["validate", str(path), "--set", "stages.long_enough.min_chars=30", "--set", "stages.+={stage: finished, name: again}"]) == 0
    assert "generate -> finished -> length -> long_enough -> again" in capsys.readouterr().out
    assert main(["validate", str(path), "--set", "stages.long_enough.min_chrs=30"]) == 2
    assert "--set stages.long_enough.min_chrs=30: stages[2].length.min_chrs: unknown field; did you mean 'min_chars'?" in capsys.readouterr().err


# --- a refused rerun names what changed ------------------------------------------------------------


def test_a_refused_rerun_names_the_fields_that_differ(project):
    from datagen.run.executor import run_pipeline

    path = recipe(project)
    out = project.root / "out"
    run_pipeline(load_recipe(path), out, progress=False)
    with pytest.raises(DatagenError) as err:
        run_pipeline(load_recipe(path, ["backend.sampling.max_tokens=64", "seed=8"]), out, progress=False)
    assert "backend.sampling.max_tokens: 50 -> 64; seed: 7 -> 8" in err.value.message and "--force" in err.value.message
    template = project.root / "templates" / "tiny.yaml"
    template.write_text(template.read_text().replace("Tell me about", "Explain"))
    with pytest.raises(DatagenError) as err:
        run_pipeline(load_recipe(path), out, progress=False)
    assert "template file 'tiny' changed" in err.value.message
    template.write_text(template.read_text().replace("Explain", "Tell me about"))
    # a changed filter is no refusal: the run resumes and re-runs that stage only
    resumed = run_pipeline(load_recipe(path, ["stages.length.min_chars=6"]), out, progress=False)
    assert [s["stage"] for s in resumed.stage_stats] == ["generate", "finished", "length", "long_enough"]
