"""The OpenAI-compatible backend against a real server: vLLM's OpenAI API server (CPU build, the
embedded model) on loopback, with a fault-injecting HTTP relay in front of it for the retry tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Callable

import jsonschema
import polars as pl
import pytest

from helpers import datagen_cli, start_local_ray, write_yaml
from datagen.llm import ChatRequest, make_backend
from datagen.llm.openai_backend import request_params, split_tokens
from datagen.errors import DatagenError
from datagen.rows import BackendConfig, SamplingConfig

SERVED_NAME = "smollm2"
KEY_ENV = "DATAGEN_TEST_OPENAI_KEY"
KEY = "test-key-7f3a9c"  # the server's --api-key; it travels only through the environment
SERVER_START_S = 240
POISON = "POISONED"  # a request whose body contains this always gets HTTP 500 from the relay


# ---------------------------------------------------------------------------------------------
# Without a server


def test_request_params_pass_sampling_seed_schema_and_extras():
    config = BackendConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m", extra_body={"top_k": 5})
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    sampling = SamplingConfig(n=3, temperature=0.5, top_p=0.9, max_tokens=20, min_tokens=2, stop=["END"])
    params = request_params(config, sampling, ChatRequest([{"role": "user", "content": "hi"}], seed=42, json_schema=schema))
    assert (params["n"], params["seed"], params["temperature"], params["top_p"], params["max_tokens"], params["stop"]) == (3, 42, 0.5, 0.9, 20, ["END"])
    assert params["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
    assert params["extra_body"] == {"top_k": 5, "min_tokens": 2}
    plain = request_params(config.model_copy(update={"extra_body": {}}), SamplingConfig(), ChatRequest([], seed=1))
    assert "extra_body" not in plain and "response_format" not in plain and "stop" not in plain


def test_split_tokens_keeps_the_total_and_gives_cut_off_choices_the_limit():
    assert split_tokens(48, ["a", "bb", "ccc"], ["length"] * 3, 16) == [16, 16, 16]
    counts = split_tokens(30, ["abc", "abcdef", "x"], ["stop", "length", "stop"], 16)
    assert sum(counts) == 30 and counts[1] == 16 and counts[0] > counts[2]
    assert sum(split_tokens(7, ["aaa", "a", "aa"], ["stop"] * 3, 16)) == 7


def test_unreachable_server_is_one_line_naming_base_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        config = BackendConfig(kind="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=0)
        with pytest.raises(DatagenError) as info:
            make_backend(config, 0)
    assert str(info.value).startswith(f"http://127.0.0.1:{port}/v1: backend.base_url: cannot reach the server")


def test_missing_key_variable_is_refused_before_any_request(monkeypatch):
    monkeypatch.delenv("DATAGEN_TEST_UNSET_KEY", raising=False)
    config = BackendConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m", api_key_env="DATAGEN_TEST_UNSET_KEY")
    with pytest.raises(DatagenError, match="backend.api_key_env: environment variable DATAGEN_TEST_UNSET_KEY is not set"):
        make_backend(config, 0)


# ---------------------------------------------------------------------------------------------
# The real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """vLLM's OpenAI API server with the embedded model, on a free loopback port; killed at the end."""
    from datagen.llm.embedded import embedded_model_dir

    model_dir = embedded_model_dir()
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING", HF_HUB_OFFLINE="1")
    preload = Path(sys.prefix) / "lib" / "libiomp5.so"
    if preload.exists():
        env["LD_PRELOAD"] = str(preload)
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY,
        "--enforce-eager", "--dtype", "bfloat16", "--max-model-len", "2048",
        # Chunked prefill rewinds seeded generators, which the CPU build cannot do.
        "--no-enable-chunked-prefill",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    os.environ[KEY_ENV] = KEY  # the CLI subprocesses inherit it
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not http_ok(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"the vLLM server did not come up (exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.environ.pop(KEY_ENV, None)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


def backend_config(base_url: str, **fields) -> BackendConfig:
    data = {"kind": "openai", "base_url": base_url, "model": SERVED_NAME, "api_key_env": KEY_ENV} | fields
    return BackendConfig.model_validate(data)


def ask(n: int) -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": f"Name a river, please ({i})."}], seed=1000 + i) for i in range(n)]


@pytest.mark.model
def test_n_samples_and_seeds_reach_the_server(server):
    backend = make_backend(backend_config(server, max_concurrency=1), 0)
    try:
        sampling = SamplingConfig(n=3, temperature=1.0, max_tokens=12)
        first = backend.generate(ask(2), sampling)
        # Token-for-token reproducibility is checked with n=1 and one request in flight: the server
        # batches concurrent requests as they arrive, and fans a request's n samples out into child
        # requests that reach its scheduler one by one, so either may be batched in other shapes
        # from call to call, and on CPU that can flip a near-tie token (seen in CI). A single
        # sample alone batches the same way every time.
        single = SamplingConfig(n=1, temperature=1.0, max_tokens=12)
        once = backend.generate(ask(2), single)
        again = backend.generate(ask(2), single)
        reseeded = backend.generate([ChatRequest(r.messages, seed=r.seed + 1) for r in ask(2)], single)
    finally:
        backend.close()
    texts = [[c.text for c in g.completions] for g in first]
    assert all(g.error is None and len(g.completions) == 3 for g in first)
    assert len(set(texts[0])) > 1, "the n samples of one request differ"
    once_texts = [g.completions[0].text for g in once]
    assert once_texts == [g.completions[0].text for g in again], "the same seed gives the same sample"
    assert once_texts != [g.completions[0].text for g in reseeded], "another seed gives another sample"
    for g in first:
        assert g.prompt_tokens > 5
        for c in g.completions:
            assert c.finish_reason in ("stop", "length") and 0 < c.completion_tokens <= 12
            assert c.finish_reason != "length" or c.completion_tokens == 12


@pytest.mark.model
def test_structured_output_follows_the_schema(server):
    schema = {
        "type": "object",
        "properties": {"river": {"type": "string", "maxLength": 24}, "length_km": {"type": "integer"}},
        "required": ["river", "length_km"],
        "additionalProperties": False,
    }
    requests = [ChatRequest(r.messages, r.seed, json_schema=schema) for r in ask(3)]
    backend = make_backend(backend_config(server), 0)
    try:
        generations = backend.generate(requests, SamplingConfig(n=1, temperature=0.7, max_tokens=120))
    finally:
        backend.close()
    for g in generations:
        assert g.error is None and g.completions[0].finish_reason == "stop", g
        jsonschema.validate(json.loads(g.completions[0].text), schema)


@pytest.mark.model
def test_a_failing_request_is_recorded_on_its_own_row(server):
    too_long = ChatRequest([{"role": "user", "content": "word " * 3000}], seed=1)
    backend = make_backend(backend_config(server), 0)
    try:
        generations = backend.generate([ask(1)[0], too_long, ask(2)[1]], SamplingConfig(n=2, max_tokens=8))
    finally:
        backend.close()
    assert [g.error is None for g in generations] == [True, False, True]
    assert generations[1].error.startswith("http_400: ") and "maximum context length" in generations[1].error
    assert generations[1].completions == [] and all(len(g.completions) == 2 for g in (generations[0], generations[2]))


@pytest.mark.model
def test_wrong_key_and_unknown_model_are_refused_up_front(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(DatagenError, match=f"backend.api_key_env: the server refused the API key from \\${KEY_ENV}"):
        make_backend(backend_config(server), 0)
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(DatagenError, match="backend.model: the server does not serve 'gpt-9' \\(it serves: smollm2\\)"):
        make_backend(backend_config(server, model="gpt-9"), 0)


# ---------------------------------------------------------------------------------------------
# The fault-injecting relay


# The client's timeout in the relay test: each stalled attempt costs this long; a real answer to
# these small requests takes well under a second, also on a busy two-core machine.
STALL_TIMEOUT_S = 8
FAULTS = ("ok", "drop", "http_429", "http_500", "slow", "stall", "truncate")
Plan = Callable[[bytes, int, int], str]


def flaky_plan(body: bytes, attempt: int, arrival: int) -> str:
    """Up to two faults per request (by the order in which requests first arrived, so that ten
    requests meet every kind), then the answer; the poisoned request fails every time."""
    if POISON.encode() in body:
        return "http_500"
    return FAULTS[(arrival + 3 * attempt) % len(FAULTS)] if attempt < 2 else "ok"


class FaultProxy:
    """An HTTP/1.1 relay on 127.0.0.1 in front of the server, one request per connection.

    For each POST it asks `plan(body, attempt, arrival)` what to do: ok (relay), drop (close without an
    answer), http_429 / http_500 (answer that without asking the server), slow (relay after a
    delay shorter than the client's timeout), stall (say nothing until the client gives up) or
    truncate (relay half of the server's answer, then close).
    """

    def __init__(self, upstream: str, plan: Plan, slow_s: float = 1.5, stall_s: float = 60.0):
        self.upstream_port = int(upstream.rsplit(":", 1)[1].split("/")[0])
        self.plan = plan
        self.slow_s, self.stall_s = slow_s, stall_s
        self.attempts: Counter[bytes] = Counter()
        self.arrival: dict[bytes, int] = {}
        self.answers: dict[bytes, list[dict]] = {}  # the complete answers relayed, per request body
        self.faults: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.base_url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        async def shutdown():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(length)
            if not head.startswith(b"POST "):
                writer.write(await self._forward(head, body))
                return
            attempt = self.attempts[body]
            self.attempts[body] += 1
            fault = self.plan(body, attempt, self.arrival.setdefault(body, len(self.arrival)))
            self.faults[fault] += 1
            if fault == "drop":
                return
            if fault.startswith("http_"):
                status = int(fault[5:])
                payload = json.dumps({"error": {"message": f"injected {status}", "code": status}}).encode()
                extra = b"retry-after-ms: 100\r\n" if status == 429 else b""
                writer.write(b"HTTP/1.1 %d Injected\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s" % (status, len(payload), extra, payload))
                return
            if fault == "stall":
                try:  # until the client hangs up (its timeout), or stall_s
                    await asyncio.wait_for(reader.read(1), self.stall_s)
                except asyncio.TimeoutError:
                    pass
                return
            if fault == "slow":
                await asyncio.sleep(self.slow_s)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                answer = await self._forward(head, body)
            finally:
                self.in_flight -= 1
            if fault == "truncate":
                writer.write(answer[: len(answer) - len(answer) // 3])
                return
            writer.write(answer)
            await writer.drain()
            self.answers.setdefault(body, []).append(json.loads(answer.partition(b"\r\n\r\n")[2]))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            writer.write(_connection_close(head) + body)
            await writer.drain()
            answer = await reader.read()  # the server closes after one answer (Connection: close)
        finally:
            writer.close()
        head, _, rest = answer.partition(b"\r\n\r\n")
        return _connection_close(head + b"\r\n\r\n") + rest


def _connection_close(head: bytes) -> bytes:
    lines = [line for line in head.split(b"\r\n") if line and not line.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join(lines + [b"Connection: close", b"", b""])


@pytest.mark.model
def test_concurrency_is_bounded(server):
    with FaultProxy(server, lambda body, attempt, arrival: "ok") as proxy:
        backend = make_backend(backend_config(proxy.base_url, max_concurrency=3), 0)
        try:
            generations = backend.generate(ask(10), SamplingConfig(n=1, max_tokens=24))
        finally:
            backend.close()
    assert all(g.error is None for g in generations)
    assert proxy.max_in_flight == 3, "requests overlap, but never more than max_concurrency"


@pytest.mark.model
def test_a_server_that_fails_every_request_stops_the_run(server):
    with FaultProxy(server, lambda body, attempt, arrival: "http_503") as proxy:
        backend = make_backend(backend_config(proxy.base_url, max_retries=1), 0)
        try:
            with pytest.raises(DatagenError, match="every one of 2 requests failed \\(http_503: injected 503\\); rerun"):
                backend.generate(ask(2), SamplingConfig(n=1, max_tokens=8))
        finally:
            backend.close()
    assert sorted(proxy.attempts.values()) == [2, 2], "one try and one retry each"


FLAKY_TEMPLATE = {
    "id": "rivers",
    "user": "Name one famous {{ thing }}. Answer in one short sentence.",
    "slots": {"thing": ["river", "mountain", "desert", "lake", "island", "forest", "city", "bridge", "castle", "volcano", f"{POISON} canyon"]},
    "expansion": {"mode": "product"},
}


def flaky_recipe(root: Path, base_url: str) -> Path:
    write_yaml(root / "templates" / "rivers.yaml", FLAKY_TEMPLATE)
    backend = {
        "kind": "openai", "base_url": base_url, "model": SERVED_NAME, "api_key_env": KEY_ENV,
        "max_concurrency": 4, "max_retries": 3, "timeout_s": STALL_TIMEOUT_S,
        "sampling": {"n": 2, "temperature": 0.9, "max_tokens": 16},
    }  # fmt: skip
    recipe = {"name": "flaky", "seed": 3, "templates": [{"name": "rivers"}], "backend": backend, "execution": {"shard_size": 4}}
    return write_yaml(root / "pipelines" / "flaky.yaml", recipe)


def all_rows(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "run" / "stages" / "00_generate" / "*.parquet").sort("candidate_id")


@pytest.mark.model
def test_every_row_arrives_exactly_once_through_drops_429s_500s_and_stalls(server, tmp_path):
    """A run through the faulty relay: one row per sample, each the answer the relay delivered. The
    request that gets HTTP 500 after every retry is transient: its shard stays unfinished (the run
    stops with one line), its prompt is pending for the rerun and has no row yet."""
    with FaultProxy(server, flaky_plan, slow_s=1.5) as proxy:
        result = datagen_cli("run", flaky_recipe(tmp_path, proxy.base_url), "--out", tmp_path / "out", "--no-progress")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"datagen: error: {proxy.base_url}: backend: 1 prompt(s) in 1 shard(s) failed for a transient reason "
        "(http_500: injected 500); rerun the same command to send exactly those again"
    ], result.stderr
    assert all(proxy.faults[f] for f in FAULTS), f"every kind of fault was injected: {proxy.faults}"

    rows = all_rows(tmp_path / "out")
    prompt = pl.col("messages").list.last().struct.field("content")
    assert rows.height == 10 * 2 and rows["candidate_id"].is_unique().all()
    poisoned_body = next(body for body in proxy.attempts if POISON.encode() in body)
    assert proxy.attempts[poisoned_body] == 4, "one try and max_retries=3 retries"
    manifest = json.loads((tmp_path / "out" / "run" / "manifest.json").read_text())
    pending = [pid for shard in manifest["stages"]["generate"]["shards"].values() for pid in shard.get("pending", [])]
    prompts = pl.read_parquet(tmp_path / "out" / "run" / "prompts.parquet")
    assert pending == prompts.filter(pl.col("slots").str.contains(POISON))["prompt_id"].to_list()
    for (text,), group in rows.sort("sample_index").group_by(prompt, maintain_order=True):
        body = next(b for b in proxy.attempts if json.loads(b)["messages"][-1]["content"] == text)
        assert body != poisoned_body
        # Normally one complete answer per request; a second only if the client gave up on a slow one.
        choices = [sorted(answer["choices"], key=lambda c: c["index"]) for answer in proxy.answers.get(body, [])]
        rows = list(zip(group["completion"], group["finish_reason"]))
        assert rows in [[(c["message"]["content"], c["finish_reason"]) for c in answer] for answer in choices], (
            "the rows are the server's complete answer to that request, not a cut or mixed one"
        )
        assert group["generate_keep"].all() and group["sample_index"].to_list() == [0, 1]


# ---------------------------------------------------------------------------------------------
# A fake server (tests/fake_openai_server.py, stdlib only): crashes and refusals


FAKE_SERVER = Path(__file__).with_name("fake_openai_server.py")


class FakeServer:
    """The fake chat server in a subprocess on a fixed loopback port, so that it can die and come back."""

    def __init__(self, port: int, log: Path):
        self.port, self.log, self.proc = port, log, None

    def start(self, *options: str) -> "FakeServer":
        self.proc = subprocess.Popen([sys.executable, str(FAKE_SERVER), str(self.port), str(self.log), *options], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
            self.proc.stdout.close()

    def events(self, event: str) -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line)["prompt"] for line in lines if json.loads(line)["event"] == event]


@pytest.fixture
def fake(tmp_path):
    servers: list[FakeServer] = []

    def make(log_name: str = "server.jsonl") -> FakeServer:
        server = FakeServer(free_port(), tmp_path / log_name)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def run_cli(*args) -> tuple[int, str]:
    import contextlib
    import io

    from datagen.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def fake_recipe(project, port: int, **backend) -> Path:
    return project(
        templates=[{"name": "tiny", "count": 12}],
        backend={"kind": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 0,
                 "max_concurrency": 1, "timeout_s": 10, "sampling": {"n": 2, "max_tokens": 20}} | backend,
        execution={"shard_size": 5},  # 12 prompts: shards of 5, 5, 2
    )


def as_sent(messages: list[dict]) -> str:
    return " | ".join(f"{m['role']}: {m['content']}" for m in messages)


def user_turns(out: Path) -> list[str]:
    prompts = pl.read_parquet(out / "run" / "prompts.parquet")
    return [as_sent(m) for m in prompts["messages"].to_list()]


@pytest.mark.parametrize("die_after", [7, 2])
def test_a_server_killed_mid_shard_leaves_it_unfinished_and_the_rerun_sends_exactly_the_rest(project, fake, die_after):
    """7: the server dies in the middle of the second shard (the third then fails whole); 2: in the
    middle of the first. The rerun against a fresh server sends exactly the prompts that got no
    answer, once each, and the dataset has every prompt's samples exactly once."""
    server = fake().start("--die-after", str(die_after))
    recipe, out = fake_recipe(project, server.port), project.root / "out"
    code, err = run_cli("run", recipe, "--out", out, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "rerun the same command" in err
    first = server.events("answered")
    assert len(first) == die_after and len(set(first)) == die_after
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert not manifest["complete"] and not (out / "data").exists()

    server.stop()
    again = fake("again.jsonl").start()
    code, err = run_cli("run", fake_recipe(project, again.port), "--out", out, "--no-progress")  # same recipe but the port
    assert code == 0, err
    every = user_turns(out)
    second = again.events("request")
    assert sorted(second) == sorted(set(every) - set(first)), "exactly the prompts without an answer, once each"
    rows = pl.read_parquet(out / "data" / "*.parquet")
    contents = [as_sent(m[:-1]) for m in rows["messages"].to_list()]  # the SFT row ends with the answer
    assert Counter(contents) == {p: 2 for p in every}, "every prompt's two samples, exactly once"
    assert sorted(m[-1]["content"] for m in rows["messages"].to_list()) == sorted(f"echo: {p} #{i}" for p in every for i in range(2))


@pytest.mark.parametrize("status,message", [(400, "system role not supported"), (401, "invalid api key"), (403, "forbidden model"),
                                            (404, "no such route"), (422, "messages: field required")])
def test_a_server_that_refuses_every_request_stops_after_the_first_shard(project, fake, status, message):
    server = fake().start("--status", str(status), "--message", message)
    recipe, out = fake_recipe(project, server.port), project.root / "out"
    code, err = run_cli("run", recipe, "--out", out, "--no-progress")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"http_{status}: {message}" in lines[0] and f"http://127.0.0.1:{server.port}/v1" in lines[0]
    assert len(server.events("request")) == 5, "the first shard's five requests, no more"
    if status == 400:
        assert "backend.system_prompt: fold" in lines[0]


def test_a_transient_status_is_retried_by_the_rerun_and_a_permanent_one_is_recorded(project, fake):
    """429 and 503 leave the shard unfinished (the run stops); a 4xx after successes is the row's."""
    for status in (429, 503):
        server = fake(f"{status}.jsonl").start("--status", str(status), "--message", "slow down")
        code, err = run_cli("run", fake_recipe(project, server.port), "--out", project.root / f"out{status}", "--no-progress")
        assert code == 2 and "every one of 5 requests failed (http_" in err, err
        server.stop()


def test_fold_puts_the_system_message_into_the_first_user_turn(project, fake):
    from datagen.llm.openai_backend import fold_system

    messages = [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                {"role": "user", "content": "Again"}]
    assert fold_system(messages) == [{"role": "user", "content": "You are a poet.\n\nHi"}, {"role": "assistant", "content": "Yo"},
                                     {"role": "user", "content": "Again"}]
    assert messages[1]["content"] == "Hi", "the caller's messages are not changed"
    assert fold_system(messages[1:]) == messages[1:]
    config = BackendConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m", system_prompt="fold")
    params = request_params(config, SamplingConfig(), ChatRequest(messages[:2], seed=1))
    assert params["messages"] == [{"role": "user", "content": "You are a poet.\n\nHi"}]
    with pytest.raises(ValueError, match="system_prompt: only used with kind openai"):
        BackendConfig(kind="scripted", system_prompt="fold")
    server = fake().start()
    code, err = run_cli("run", fake_recipe(project, server.port, system_prompt="fold"), "--out", project.root / "out", "--no-progress")
    assert code == 0, err
    assert all(p.startswith("user: You are ") and "\n\nTell me about" in p for p in server.events("request"))


@pytest.mark.slow  # a local Ray
def test_the_ray_executor_keeps_a_crashed_shard_unfinished_too(project, fake):
    """The same crash under `--executor ray`: shards are generated in Ray workers, and the driver
    records the one with transient failures as unfinished; the rerun sends exactly the rest."""
    import ray

    from datagen.run.ray_executor import run_pipeline_ray
    from datagen.recipe import load_recipe

    server = fake().start("--die-after", "7")
    out = project.root / "out"
    start_local_ray()
    try:
        with pytest.raises(DatagenError, match="rerun the same command"):
            run_pipeline_ray(load_recipe(fake_recipe(project, server.port)), out, workers=1, progress=False)
        first = server.events("answered")
        server.stop()
        again = fake("again.jsonl").start()
        run_pipeline_ray(load_recipe(fake_recipe(project, again.port)), out, workers=1, progress=False)
    finally:
        ray.shutdown()
    every = user_turns(out)
    assert len(first) == 7 and sorted(again.events("request")) == sorted(set(every) - set(first))
    rows = pl.read_parquet(out / "data" / "*.parquet")
    assert Counter(as_sent(m[:-1]) for m in rows["messages"].to_list()) == {p: 2 for p in every}


def test_the_next_shard_is_sent_while_the_current_one_waits_for_its_last_answer(project, fake):
    """The first request takes 1.5 s; the other requests of its shard are answered at once, and the
    next shard's requests go out before that one answer comes back: the shard boundary does not
    leave the server idle. Every prompt's samples still arrive exactly once, in their shards."""
    server = fake().start("--slow-first", "1.5")
    recipe, out = fake_recipe(project, server.port, max_concurrency=2), project.root / "out"
    code, err = run_cli("run", recipe, "--out", out, "--no-progress")
    assert code == 0, err
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    slow = lines[0]["prompt"]
    answered_slow = next(i for i, line in enumerate(lines) if line == {"event": "answered", "prompt": slow})
    every = user_turns(out)
    second_shard = set(every[5:10])
    assert any(line["event"] == "request" and line["prompt"] in second_shard for line in lines[:answered_slow]), \
        "a request of the second shard was sent before the first shard's slow answer came back"
    assert sorted(server.events("request")) == sorted(every), "each prompt sent once"
    rows = pl.read_parquet(out / "data" / "*.parquet")
    assert Counter(as_sent(m[:-1]) for m in rows["messages"].to_list()) == {p: 2 for p in every}
    for shard, prompts in enumerate((every[:5], every[5:10], every[10:])):
        written = pl.read_parquet(out / "run" / "stages" / "00_generate" / f"shard-{shard:05d}.parquet")
        assert [as_sent(m) for m in written["messages"].to_list()[::2]] == prompts, "prompt order within the shard"
