"""Counterexample inputs: the diagnosis model is one of the recipe's models (validate checks it),
code is found however an answer fences it, and the failures file follows the shared text-column
rules (dictionary-encoded text is text; other types and mixed JSONL columns are refused)."""

from __future__ import annotations

import json

import pandas as pd
import polars as pl
import pytest

from helpers import PIPELINES
from datagen.cli import main
from datagen.errors import DatagenError
from datagen.recipe import load_recipe
from datagen.sources.failures import read_failures
from datagen.steps.verify import extract_code, fenced_blocks

RECIPE = PIPELINES / "counterexamples.yaml"


# ---- the diagnosis model is checked like every other model -------------------------------------


def test_the_diagnosis_backend_is_one_of_the_recipes_models(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    loaded = load_recipe(RECIPE, [f"input.diagnose.backend.model={missing}"])
    assert loaded.recipe.backends()[-1][0] == "input.diagnose.backend" and loaded.recipe.backends()[-1][1].model == missing
    assert "input.diagnose.backend" not in [f for f, _ in load_recipe(RECIPE).recipe.backends()]
    code = main(["validate", str(RECIPE), "--set", f"input.diagnose.backend.model={missing}"])
    err = capsys.readouterr().err
    assert code == 2 and "input.diagnose.backend" in err and "no-such-model" in err and len(err.strip().splitlines()) == 1, err


# ---- code in answers, however it is fenced -------------------------------------------------------

TESTS = "assert area(2, 3) == 6"
PROGRAM = "def area(w, h):\n    return w * h\n"


@pytest.mark.parametrize("answer", [
    "Sure! ```python\n" + PROGRAM + "```",                      # opened after text on the same line
    "Here it is: ```\n" + PROGRAM + "```\nThat's all.",        # untagged, mid-line
    "~~~python\n" + PROGRAM + "~~~\n",                         # tildes
    "~~~~py\n" + PROGRAM + "~~~~",                             # longer tilde run, py tag
    "```Python3\n" + PROGRAM + "```",                          # tag case and variant
    "```python\n" + PROGRAM.rstrip("\n") + "```",              # closed at the end of the last code line
    "```python\n" + PROGRAM,                                   # cut off: no closing fence
    "Use ```area``` like this:\n```python\n" + PROGRAM + "```",  # an inline pair before the block
])
def test_extract_code_finds_the_program_however_it_is_fenced(answer):
    assert extract_code(answer, TESTS) == PROGRAM


def test_extract_code_with_several_fences_takes_the_last_that_defines_what_the_tests_call():
    first = "def area(w, h):\n    return w + h\n"
    answer = ("First try: ```python\n" + first + "```\nFixed:\n```python\n" + PROGRAM + "```\nUsage:\n```python\nprint(area(2, 3))\n```\n"
              "Run it:\n```bash\npython area.py\n```\nOutput:\n```text\n6\n```")
    assert [tag for tag, _ in fenced_blocks(answer)] == ["python", "python", "python", "bash", "text"]
    assert extract_code(answer, TESTS) == PROGRAM, "the revised definition, not the usage example or another language"
    assert extract_code("```bash\necho hi\n```", TESTS) is None, "no Python block and the text is not Python"
    assert extract_code(PROGRAM, TESTS) == PROGRAM, "bare code"
    inner = "````python\ndef area(w, h):\n    s = '```'\n    return w * h\n````"
    assert extract_code(inner, TESTS) == "def area(w, h):\n    s = '```'\n    return w * h\n", "a shorter run inside does not close"


# ---- the failures file: shared text-column rules --------------------------------------------------

ROWS = {"prompt": ["Write `f(x)` returning x + 1.", "Write `g(x)` returning 2x."], "output": ["def f(x):\n    return x", "def g(x):\n    return x"]}


def test_dictionary_encoded_text_columns_are_text(tmp_path):
    frame = pd.DataFrame(ROWS | {"tag": ["a", "b"]}).astype({"prompt": "category", "output": "category", "tag": "category"})
    frame.to_parquet(tmp_path / "pandas.parquet")
    read = read_failures(tmp_path / "pandas.parquet")
    assert read["prompt"].to_list() == ROWS["prompt"] and read["tag"].to_list() == ["a", "b"]
    pl.DataFrame(ROWS).with_columns(pl.col("prompt").cast(pl.Categorical), pl.col("output").cast(pl.Enum(ROWS["output"]))).write_parquet(
        tmp_path / "polars.parquet")
    assert read_failures(tmp_path / "polars.parquet")["output"].to_list() == ROWS["output"]


def test_a_text_column_of_another_type_or_mixed_types_is_refused(tmp_path, capsys):
    pl.DataFrame({"prompt": [1, 2], "output": ROWS["output"]}).write_parquet(tmp_path / "ints.parquet")
    with pytest.raises(DatagenError, match="holds Int64, not text"):
        read_failures(tmp_path / "ints.parquet")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [{"prompt": "a task", "output": "x"}, {"prompt": "b task", "output": {"code": "y"}}]))
    assert main(["counterexamples", str(mixed), "--budget", "4", "--plan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output" in err[0] and "row 2" in err[0] and str(mixed) in err[0]
    numbers = tmp_path / "numbers.jsonl"  # numbers where numbers make sense (an expected answer, an id) are fine
    numbers.write_text("".join(json.dumps(r) + "\n" for r in [{"id": 7, "prompt": "a task", "output": "18", "expected": 19}]))
    read = read_failures(numbers)
    assert read["expected"].to_list() == ["19"] and read["failure_id"].to_list() == ["7"]
