"""Keys travel only through api_key_env: a recipe (or --set) that carries one is refused in one line
naming the field, never echoing the value, and nothing a run writes holds the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from helpers import BASE_RECIPE, PIPELINES, write_yaml
from datagen.errors import DatagenError
from datagen.recipe import load_recipe
from test_openai_backend import FakeServer, free_port, run_cli

# Made-up values in the documented shapes (none is a real credential).
SHAPES = {
    "openai": "sk-proj-Zx81kQ2mVb7Lp0Rt5YwE3nHc",
    "anthropic": "sk-ant-api03-Qw8rTz2XkLm5Np7Vb1Cd",
    "huggingface": "hf_QwErTyUiOpAsDfGhJkLzXcVbNm1234",
    "github": "ghp_Zq9Wx8Ec7Rv6Tb5Yn4Um3Ik2Ol1Pa0Sd9Fg",
    "github_fine_grained": "github_pat_11ABCDEFG0123456789_abcdefghijKLMNOP",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "google": "AIzaSyD-1234567890abcdefghijklmnopqrstu",
    "slack": "xoxb-123456789012-abcdefghijkl",
    "stripe": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "bearer": "Bearer 0123456789abcdefXYZ",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...",
}
OPENAI = {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}


def recipe_with(project, **fields) -> Path:
    data = copy.deepcopy(BASE_RECIPE)
    data.update(fields)
    return write_yaml(project.root / "pipelines" / "recipe.yaml", data)


def refused(path: Path, overrides: list[str] | None = None) -> DatagenError:
    with pytest.raises(DatagenError) as info:
        load_recipe(path, overrides)
    return info.value


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_every_token_shape_is_refused_anywhere_in_the_backend(project, kind):
    value = SHAPES[kind]
    err = refused(recipe_with(project, backend=OPENAI | {"extra_body": {"metadata": {"note": value}}}))
    assert err.field == "backend.extra_body.metadata.note" and err.source == str(project.root / "pipelines" / "recipe.yaml")
    assert "a recipe carries no credentials" in str(err) and value not in str(err) and value.split()[-1] not in str(err)


@pytest.mark.parametrize(
    "fields,field,why",
    [
        ({"backend": OPENAI | {"extra_body": {"api_key": "abc123"}}}, "backend.extra_body.api_key", "a 'api_key' field carries a credential"),
        ({"backend": OPENAI | {"extra_body": {"headers": {"X-Api-Key": "plainvalue"}}}}, "backend.extra_body.headers.X-Api-Key", "carries a credential"),
        ({"backend": OPENAI | {"extra_body": {"authToken": "plainvalue"}}}, "backend.extra_body.authToken", "carries a credential"),
        ({"backend": OPENAI | {"base_url": "http://user:hunter2@127.0.0.1:1/v1"}}, "backend.base_url", "user information (user:password@) in the URL"),
        ({"backend": OPENAI | {"base_url": "http://127.0.0.1:1/v1?api_key=hunter2"}}, "backend.base_url", "a 'api_key' query parameter in the URL"),
        ({"backend": OPENAI | {"api_key_env": "ghp_Zq9Wx8Ec7Rv6Tb5Yn4Um3Ik2Ol1Pa0Sd9Fg"}}, "backend.api_key_env", "holds what looks like a key"),
        ({"backend": OPENAI | {"extra_body": {"user": "${OPENAI_API_KEY}"}}}, "backend.extra_body.user", "a recipe expands no environment variables"),
        ({"backend": OPENAI | {"engine": {"hf_token": "plainvalue"}}}, "backend.engine.hf_token", "carries a credential"),
        ({"stages": [{"stage": "judge", "rubric": "helpfulness", "backend": OPENAI | {"extra_body": {"token": "t0k3n"}}}]},
         "stages[0].backend.extra_body.token", "carries a credential"),
        ({"stages": [{"stage": "revise", "backend": OPENAI | {"base_url": "https://me:pw@example.org/v1"}}]},
         "stages[0].backend.base_url", "user information"),
        ({"description": "made with sk-proj-Zx81kQ2mVb7Lp0Rt5YwE3nHc by me"}, "description", "looks like an OpenAI/Anthropic-style key"),
    ],
)
def test_a_recipe_carrying_a_credential_is_refused_naming_the_field(project, fields, field, why):
    err = refused(recipe_with(project, **fields))
    assert err.field == field and why in err.message, str(err)
    for secret in ("abc123", "plainvalue", "hunter2", "t0k3n", "pw@", "Zx81kQ2m", "Zq9Wx8Ec"):
        assert secret not in str(err)


def test_the_value_of_a_secret_environment_variable_is_refused_wherever_it_is_pasted(project, monkeypatch):
    monkeypatch.setenv("MY_SERVER_TOKEN", "q7-not-shaped-like-anything")
    err = refused(recipe_with(project, backend=OPENAI | {"extra_body": {"user": "q7-not-shaped-like-anything"}}))
    assert err.field == "backend.extra_body.user" and "holds the value of the environment variable MY_SERVER_TOKEN" in err.message
    assert "q7-not" not in str(err)


@pytest.mark.parametrize(
    "override,field",
    [
        ("backend.extra_body.auth=sk-proj-Zx81kQ2mVb7Lp0Rt5YwE3nHc", "backend.extra_body.auth"),
        ("backend.base_url=http://u:secretpw@127.0.0.1:1/v1", "backend.base_url"),
        ("backend.extra_body={headers: {Authorization: secretpw}}", "backend.extra_body.headers.Authorization"),
    ],
)
def test_set_values_are_checked_and_never_echoed(project, override, field):
    path = recipe_with(project, backend=OPENAI)
    err = refused(path, [override])
    key = override.partition("=")[0]
    assert err.source == f"--set {key}" and err.field == field
    assert override.partition("=")[2] not in str(err) and "secretpw" not in str(err) and "Zx81kQ2m" not in str(err)


def test_ordinary_recipes_are_not_mistaken_for_secrets(project):
    """Token-ish field names and values (tokens, keys, ids) that hold no secret load as written."""
    extra = {"top_k": 20, "return_token_ids": True, "skip_special_tokens": False, "stop_token_ids": [2, 3],
             "guided_decoding_backend": "xgrammar", "chat_template_kwargs": {"enable_thinking": False}}
    remote = load_recipe(recipe_with(project, backend=OPENAI | {
        "model": "meta-llama/Llama-3.1-8B-Instruct", "api_key_env": "OPENAI_API_KEY", "extra_body": extra,
    }, description="risk-free sketches; keys go in api_key_env")).recipe
    assert remote.backend.extra_body == extra and remote.backend.api_key_env == "OPENAI_API_KEY"
    assert remote.description == "risk-free sketches; keys go in api_key_env"
    engine = {"tokenizer_mode": "auto", "max_num_batched_tokens": 4096}
    local = load_recipe(recipe_with(project, backend={"kind": "vllm", "model": "embedded", "engine": engine})).recipe
    assert local.backend.engine == engine
    shipped = sorted(PIPELINES.glob("*.yaml"))
    assert len(shipped) >= 10 and all(load_recipe(path).recipe.name for path in shipped)


def test_no_output_of_a_run_holds_the_key(project, tmp_path, monkeypatch):
    """A real run against the fake server with the key in api_key_env: every file written (card,
    report, manifest, shards, dataset) is scanned for it."""
    key = "sk-proj-PLANTED0key0that0must0never0appear"
    monkeypatch.setenv("DATAGEN_TEST_PLANTED_KEY", key)
    server = FakeServer(free_port(), tmp_path / "server.jsonl").start()
    try:
        backend = OPENAI | {"base_url": f"http://127.0.0.1:{server.port}/v1", "api_key_env": "DATAGEN_TEST_PLANTED_KEY", "max_retries": 0}
        out = project.root / "out"
        code, err = run_cli("run", recipe_with(project, backend=backend), "--out", out, "--no-progress")
        assert code == 0, err
    finally:
        server.stop()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"README.md", "run/manifest.json", "run/report.html"} <= {p.relative_to(out).as_posix() for p in files}
    assert len(server.events("answered")) == 6
    for path in files:
        assert key.encode() not in path.read_bytes(), path
    assert "DATAGEN_TEST_PLANTED_KEY" in (out / "README.md").read_text(), "the variable's name is what the card records"


def test_a_server_message_that_echoes_the_key_is_scrubbed(project, tmp_path, monkeypatch):
    key = "sk-proj-ECHOED0key0from0the0server00"
    monkeypatch.setenv("DATAGEN_TEST_PLANTED_KEY", key)
    server = FakeServer(free_port(), tmp_path / "server.jsonl").start("--status", "401", "--message", f"Incorrect API key provided: {key}")
    try:
        backend = OPENAI | {"base_url": f"http://127.0.0.1:{server.port}/v1", "api_key_env": "DATAGEN_TEST_PLANTED_KEY", "max_retries": 0}
        code, err = run_cli("run", recipe_with(project, backend=backend), "--out", project.root / "out", "--no-progress")
    finally:
        server.stop()
    assert code == 2 and key not in err and "Incorrect API key provided: [API key]" in err
    assert all(key.encode() not in p.read_bytes() for p in (project.root / "out").rglob("*") if p.is_file())
