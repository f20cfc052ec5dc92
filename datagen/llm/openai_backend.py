"""Any OpenAI-compatible server (`vllm serve`, SGLang, TGI, hosted APIs) over HTTP.

Requests go out concurrently (at most `max_concurrency` in flight, a whole shard at once and,
through `stream`, the next shard's while the current one's last answers are awaited) through the `openai` client,
which retries 408/409/429/5xx answers, timeouts and dropped connections with exponential backoff
and jitter (and honours Retry-After). A request that still fails becomes an error on its own
Generation, so one bad prompt never crashes a run. The error is transient (connection, timeout,
408/429/5xx: the shard stays unfinished and a rerun sends the request again) or permanent (any
other 4xx, a body that is not a chat completion: recorded on its row). Two cases stop the run
with one line: a batch in which every request failed for transient reasons (the server is gone;
rerunning resumes), and a server that refuses every request before it has answered any (HTTP
400 "system role not supported", 401, 404 ...: every further shard would fail the same way).

Each request carries the row's `seed` and asks for its `n` samples at once (the prompt is billed
once). A server that honours seeds repeats a single sample token for token; vLLM's server fans n > 1
samples out into child requests that its scheduler may batch differently from call to call, so on
CPU their texts can differ by a near-tie token between two identical calls.

The client runs on an event loop in a thread of its own, so `generate` can be called from any
thread, also one that already runs an event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any, Iterable, Iterator

from datagen.llm.base import Batch, ChatRequest, Completion, Generation, Outage
from datagen.errors import DatagenError
from datagen.rows import BackendConfig, SamplingConfig

# Sent when the config names no key variable: local servers ignore it, the client insists on one.
NO_KEY = "EMPTY"
# HTTP statuses below 500 that a later try may not meet (timeout, rate limit); every other 4xx is
# permanent: the same request gets the same answer.
TRANSIENT_STATUS = (408, 429)
# How long close() waits for the loop to wind down its connections.
CLOSE_TIMEOUT_S = 5.0
# `stream` adds the next batch while fewer than LOOKAHEAD x max_concurrency requests are unanswered,
# so requests of the next shard are queued before the last ones of the current shard go out.
LOOKAHEAD = 2


def api_key(config: BackendConfig) -> str:
    if config.api_key_env is None:
        return NO_KEY
    value = os.environ.get(config.api_key_env, "").strip()
    if not value:
        raise DatagenError(f"environment variable {config.api_key_env} is not set or empty", field="backend.api_key_env")
    return value


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system messages folded into the first user turn ("SYSTEM\n\nUSER"), for servers whose chat
    template has no system role; messages without a system message are returned as they are."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return list(messages)
    first_user = next((m for m in rest if m["role"] == "user"), None)
    if first_user is None:
        return [{"role": "user", "content": "\n\n".join(system)}] + rest
    first_user["content"] = "\n\n".join(system + [first_user["content"]])
    return rest


def request_params(config: BackendConfig, sampling: SamplingConfig, request: ChatRequest) -> dict[str, Any]:
    sampling = request.sampling or sampling  # a prompt's own parameters (drawn per prompt) win
    messages = fold_system(request.messages) if config.system_prompt == "fold" else request.messages
    params: dict[str, Any] = {
        "model": config.model,
        "messages": messages,
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": request.seed,
    }
    if sampling.stop:
        params["stop"] = sampling.stop
    if request.json_schema is not None:
        params["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": request.json_schema}}
    extra = dict(config.extra_body)
    if sampling.min_tokens:
        extra.setdefault("min_tokens", sampling.min_tokens)  # a vLLM/SGLang extension; OpenAI itself has none
    if extra:
        params["extra_body"] = extra
    return params


def split_tokens(total: int, texts: list[str], finished: list[str], max_tokens: int) -> list[int]:
    """Per-choice counts when the server reports only the total (n > 1): a choice cut off by the
    limit has exactly max_tokens; the rest of the total is shared by text length (largest
    remainder), so that the counts still add up to what the server reported."""
    counts = [max_tokens if reason == "length" else 0 for reason in finished]
    rest = [i for i, reason in enumerate(finished) if reason != "length"]
    left = total - sum(counts)
    if left < 0 or (left and not rest):  # a server that counts differently: share everything
        counts, rest, left = [0] * len(texts), list(range(len(texts))), total
    if not rest:
        return counts
    weights = {i: max(len(texts[i]), 1) for i in rest}
    shares = {i: left * w / sum(weights.values()) for i, w in weights.items()}
    for i in rest:
        counts[i] = int(shares[i])
    for i in sorted(rest, key=lambda i: counts[i] - shares[i])[: left - sum(counts[i] for i in rest)]:
        counts[i] += 1
    return counts


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class OpenAIBackend:
    def __init__(self, config: BackendConfig):
        try:
            import openai
        except ImportError:
            raise DatagenError("kind openai needs the 'openai' package (pip install openai)", field="backend.kind") from None
        self.openai = openai
        self.config = config
        self.model_name = config.model
        key = api_key(config)
        self._key = key if key != NO_KEY else None  # never written into a row: servers echo keys in errors
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="datagen-openai", daemon=True)
        self._thread.start()
        self._semaphore: asyncio.Semaphore | None = None
        self._answered = False  # whether any request has succeeded yet
        self.client = self._call(self._make_client(key))
        try:
            self._call(self._check_server())
        except BaseException:
            self.close()
            raise

    async def _make_client(self, key: str):
        # Created on the backend's own loop, which then owns its connection pool.
        self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        return self.openai.AsyncOpenAI(
            base_url=self.config.base_url, api_key=key, max_retries=self.config.max_retries, timeout=self.config.timeout_s
        )

    def _call(self, coroutine):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:  # e.g. Ctrl-C: the requests still in flight are cancelled
            future.cancel()
            raise

    async def _check_server(self) -> None:
        """Fail before any shard on a server that is down, refuses the key, or lacks the model."""
        config, openai = self.config, self.openai
        try:
            served = [m.id async for m in self.client.with_options(max_retries=min(config.max_retries, 2)).models.list()]
        except openai.AuthenticationError:
            raise DatagenError(f"the server refused the API key from ${config.api_key_env or '(none)'}", field="backend.api_key_env") from None
        except openai.NotFoundError:
            return  # a server without /models: the first request will tell
        except openai.APIStatusError as err:
            raise DatagenError(f"the server answered /models with HTTP {err.status_code}", config.base_url, "backend.base_url") from None
        except openai.APIError as err:
            raise DatagenError(f"cannot reach the server: {_short(err.message)}", config.base_url, "backend.base_url") from None
        if served and config.model not in served:
            raise DatagenError(f"the server does not serve {config.model!r} (it serves: {', '.join(served[:10])})", field="backend.model")

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
        if not requests:
            return []
        generations = self._call(self._generate_all(requests, sampling))
        if all(g.transient for g in generations):
            raise Outage(
                f"every one of {len(requests)} requests failed ({generations[0].error}); rerun the same command to resume",
                list(generations),
                self.config.base_url,
                "backend.base_url",
            )
        self._check_refused(generations)
        return list(generations)

    def stream(self, batches: Iterable[Batch]) -> Iterator[tuple[Any, list[Generation]]]:
        """datagen.llm.base.stream over HTTP: every batch's requests are sent concurrently (at most
        max_concurrency in flight, first come first served), the next batch is taken while fewer
        than LOOKAHEAD x max_concurrency requests are unanswered, and a batch is yielded once all
        its requests are answered. A batch whose requests all failed for a transient reason is
        yielded like any other (the caller records it as unfinished and stops); closing the
        iterator cancels the requests still in flight."""
        window = LOOKAHEAD * self.config.max_concurrency
        source, exhausted = iter(batches), False
        running: dict[concurrent.futures.Future, Any] = {}  # in submission order
        answered = threading.Event()  # set as each request and each batch ends
        lock, unanswered = threading.Lock(), [0]

        async def one(request: ChatRequest, sampling: SamplingConfig) -> Generation:
            try:
                return await self._generate_one(request, sampling)
            finally:
                with lock:
                    unanswered[0] -= 1
                answered.set()

        async def batch_of(requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
            return list(await asyncio.gather(*(one(r, sampling) for r in requests)))

        try:
            while True:
                # Before the server has answered anything, one batch at a time: a server that refuses
                # every request is then told by the first batch alone.
                while not exhausted and unanswered[0] < window and (self._answered or not running):  # a stale read only delays
                    batch = next(source, None)
                    if batch is None:
                        exhausted = True
                        break
                    key, requests, sampling = batch
                    if not requests:
                        yield key, []
                        continue
                    with lock:
                        unanswered[0] += len(requests)
                    future = asyncio.run_coroutine_threadsafe(batch_of(requests, sampling), self._loop)
                    future.add_done_callback(lambda _: answered.set())
                    running[future] = key
                if not running:
                    return
                answered.wait()
                answered.clear()
                for future in [f for f in running if f.done()]:
                    key = running.pop(future)
                    generations = future.result()
                    if not all(g.transient for g in generations):
                        self._check_refused(generations)
                    yield key, generations
        finally:
            for future in running:
                future.cancel()

    def _check_refused(self, generations: list[Generation]) -> None:
        """A server that refuses every request before it has answered any stops the run: every
        further batch would fail the same way."""
        if any(g.error is None for g in generations):
            self._answered = True
        elif not self._answered and not any(g.transient for g in generations):
            hint = "; if the server takes no system message, set backend.system_prompt: fold" if "system" in generations[0].error.lower() else ""
            raise DatagenError(
                f"the server refused every request of the first batch ({len(generations)}): {generations[0].error}{hint}",
                self.config.base_url,
                "backend",
            )

    async def _generate_all(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
        return await asyncio.gather(*(self._generate_one(r, sampling) for r in requests))

    async def _generate_one(self, request: ChatRequest, sampling: SamplingConfig) -> Generation:
        """One request's Generation; `transient` when it failed for a reason that a later try may not
        meet (after all retries): connection, timeout, HTTP 408/429/5xx."""
        openai, config = self.openai, self.config
        assert self._semaphore is not None
        async with self._semaphore:
            try:
                response = await self.client.chat.completions.create(**request_params(config, sampling, request))
            except openai.APITimeoutError:
                return Generation([], 0, error=f"timeout: no answer within {config.timeout_s:g} s, {config.max_retries} retries", transient=True)
            except openai.APIConnectionError as err:
                return Generation([], 0, error=f"connection: {_short(err.message)}", transient=True)
            except openai.APIStatusError as err:
                transient = err.status_code in TRANSIENT_STATUS or err.status_code >= 500
                return Generation([], 0, error=f"http_{err.status_code}: {_short(self._scrub(_server_message(err)))}", transient=transient)
            except Exception as err:  # noqa: BLE001 - e.g. a body that is not a chat completion
                return Generation([], 0, error=f"bad_response: {type(err).__name__}: {_short(self._scrub(str(err)))}")
        generation = self._read(response, sampling)
        if generation.error is None:
            self._answered = True
        return generation

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[API key]") if self._key else text

    def _read(self, response, sampling: SamplingConfig) -> Generation:
        choices = sorted(response.choices or [], key=lambda c: c.index)
        if len(choices) != sampling.n:
            return Generation([], 0, error=f"bad_response: {len(choices)} choices for n={sampling.n}")
        texts = [c.message.content or "" for c in choices]
        usage = response.usage
        token_ids = [(c.model_extra or {}).get("token_ids") for c in choices]  # vLLM, with extra_body return_token_ids
        if all(ids is not None for ids in token_ids):
            counts = [len(ids) for ids in token_ids]
        elif usage is not None and len(choices) == 1:
            counts = [usage.completion_tokens]
        elif usage is not None:
            counts = split_tokens(usage.completion_tokens, texts, [c.finish_reason for c in choices], sampling.max_tokens)
        else:
            counts = [0] * len(texts)
        completions = [Completion(text, c.finish_reason or "stop", n) for text, c, n in zip(texts, choices, counts)]
        return Generation(completions, usage.prompt_tokens if usage is not None else 0)

    def close(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed():
            return
        client = getattr(self, "client", None)
        if client is not None and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(client.close(), loop).result(CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            loop.close()


def _server_message(err) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return err.message
