from __future__ import annotations

import io

import datasets
import polars as pl

from datagen.llm import Generation
from datagen.llm.scripted import ScriptedBackend
from datagen.run.executor import run_pipeline
from datagen.llm.generate import RESERVED_COLUMNS
from datagen.report.inspect import inspect
from datagen.recipe import load_recipe

FAILING_TOPIC = "volcanoes"
MESSAGES = {"rivers": "http_500: injected 500", "volcanoes": "timeout: no answer within 600 s, 5 retries"}


class FailingForSomeTopics(ScriptedBackend):
    """Answers like the scripted backend, except that the requests about some topics fail on their own,
    each with its own message, the way the openai backend reports a request that failed."""

    def generate(self, requests, sampling):
        out = super().generate(requests, sampling)
        for i, request in enumerate(requests):
            failed = [message for topic, message in MESSAGES.items() if topic in request.messages[-1]["content"]]
            if failed:
                out[i] = Generation([], out[i].prompt_tokens, error=failed[0])
        return out


def test_a_failed_request_gets_a_fixed_reason_and_its_message_in_generate_error(project):
    out = project.root / "out"
    result = run_pipeline(load_recipe(project()), out, progress=False, backend_factory=lambda: FailingForSomeTopics([]))
    rows = pl.read_parquet(out / "run" / "stages" / "00_generate" / "*.parquet")
    assert "generate_error" in RESERVED_COLUMNS and rows.schema["generate_error"] == pl.String

    failed = rows.filter(~pl.col("generate_keep"))
    expected = {topic: message for topic, message in MESSAGES.items() if (rows["topic"] == topic).any()}
    assert len(expected) == 2, "the seeded prompts cover both failing topics"
    assert failed["topic"].unique().sort().to_list() == sorted(expected)
    assert (failed["generate_reason"] == "generate_error").all() and failed["completion"].is_null().all()
    assert dict(zip(failed["topic"], failed["generate_error"])) == expected, "the backend's message, as it gave it"
    ok = rows.filter(pl.col("generate_keep"))
    assert ok.height and ok["generate_error"].is_null().all() and ok["generate_reason"].is_null().all()

    # One reason in the counts however many different messages there were.
    generate = next(s for s in result.stage_stats if s["stage"] == "generate")
    assert generate["dropped"] == {"generate_error": failed.height}
    assert f"generate_error: {failed.height}" in (out / "README.md").read_text()
    assert "generate_error" in (out / "run" / "report.html").read_text()
    written = datasets.load_dataset(str(out), split="train")
    assert written.num_rows == result.rows_written == ok.height and "generate_error" not in written.column_names

    shown = io.StringIO()
    inspect(out, rows=50, where=["stage=generate"], stream=shown)
    text = shown.getvalue()
    assert f"{failed.height} rows" in text and text.count("[dropped by generate: generate_error]") == failed.height
    assert all(f"generate_error: {message}" in text for message in expected.values())
