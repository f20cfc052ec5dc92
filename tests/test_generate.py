from __future__ import annotations

import io

import datasets
import pytest
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


# --- generation streamed across shards (datagen.llm.base.stream) ---------------------------------

STREAMING_CHILD = r'''
import os, signal, sys
from datagen.llm.scripted import ScriptedBackend

kill_at, sent_log = int(sys.argv[1]), sys.argv[2]
finished = [0]


def stream(self, batches):
    """Two shards in the engine at once, the later one finishing first (as natural lengths make an
    engine do); SIGKILL as the kill_at-th shard is done, before the caller has it."""
    held = []
    for batch in batches:
        held.append(batch)
        with open(sent_log, "a") as log:
            log.write(f"{batch[0]}\n")
        if len(held) < 2:
            continue
        for key, requests, sampling in reversed(held):
            finished[0] += 1
            if finished[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            yield key, self.generate(requests, sampling)
        held = []
    for key, requests, sampling in held:
        yield key, self.generate(requests, sampling)


ScriptedBackend.stream = stream
from datagen.cli import main
sys.exit(main(sys.argv[3:]))
'''


def streamed_run(project, tmp_path, out, kill_at: int):
    import os
    import subprocess
    import sys

    child = tmp_path / "streaming_child.py"
    child.write_text(STREAMING_CHILD)
    recipe = project(templates=[{"name": "tiny", "count": 12}], execution={"shard_size": 2})
    sent = tmp_path / f"sent-{out.name}-{kill_at}.log"
    env = dict(os.environ, DATAGEN_NO_REEXEC="1")
    done = subprocess.run([sys.executable, str(child), str(kill_at), str(sent), "run", str(recipe), "--out", str(out), "--progress", "log"],
                          capture_output=True, text=True, timeout=300, env=env)
    return done, [int(line) for line in sent.read_text().split()] if sent.exists() else []


@pytest.mark.slow  # > 4 s on 2 cores (sandbox runs / k-means / a killed child process)
def test_shards_finished_out_of_order_are_each_checkpointed_and_a_killed_run_resumes_to_the_same_rows(project, tmp_path):
    import json
    import signal

    out = project.root / "out"
    killed, sent = streamed_run(project, tmp_path, out, kill_at=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sent == [0, 1, 2, 3], "the next shard joined while the one before was still running"
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert sorted(manifest["stages"]["generate"]["shards"], key=int) == ["0", "1", "3"], \
        "each shard was written and recorded as soon as it was done, the later one of a pair first"
    generated = out / "run" / "stages" / "00_generate"
    before = {path.name: path.read_bytes() for path in generated.glob("*.parquet")}

    resumed, sent = streamed_run(project, tmp_path, out, kill_at=0)
    assert resumed.returncode == 0, resumed.stderr
    assert sent == [2, 4, 5], "the rerun sent exactly the shards that were not recorded"
    assert all((generated / name).read_bytes() == data for name, data in before.items()), "recorded shards are kept as they were"
    whole, _ = streamed_run(project, tmp_path, project.root / "whole", kill_at=0)
    assert whole.returncode == 0, whole.stderr

    def rows(root):
        return pl.read_parquet(root / "run" / "stages" / "00_generate" / "*.parquet").drop("prompt_tokens", "completion_tokens", strict=False)

    got, expected = rows(out), rows(project.root / "whole")
    assert got.height == 12 * 2 and got["candidate_id"].is_unique().all()
    assert got.sort("candidate_id").equals(expected.sort("candidate_id")), "the same rows as an uninterrupted run"
    final = lambda root: pl.read_parquet(root / "data" / "*.parquet")  # noqa: E731
    assert final(out).equals(final(project.root / "whole"))
    for shard in range(6):  # prompt order within each shard, whatever order the shards finished in
        prompts = pl.read_parquet(out / "run" / "prompts.parquet").slice(2 * shard, 2)["prompt_id"].to_list()
        written = pl.read_parquet(generated / f"shard-{shard:05d}.parquet")
        assert written["prompt_id"].unique(maintain_order=True).to_list() == prompts and written["sample_index"].to_list() == [0, 1, 0, 1]
