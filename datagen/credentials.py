"""Refusing secrets in recipes: API keys travel only through `api_key_env` (the variable's name).

`find_secret(data)` walks a recipe as parsed (after `--set`), before anything is validated or
written, and returns the first field that carries something that looks like a credential, so
that the dataset card, the report and the manifest (which all copy the recipe) never hold one, and
so that the error line can name the field without echoing the value. What counts:

- a value shaped like a well-known token (OpenAI/Anthropic `sk-...`, Hugging Face `hf_...`,
  GitHub `ghp_...`/`github_pat_...`, AWS `AKIA...`, Google `AIza...`, Slack `xox?-...`, Stripe
  `sk_live_...`, JWTs, `Bearer ...`, PEM private keys), anywhere in the recipe, also inside
  longer text; shapes from the providers' documented prefixes (see also gitleaks' rule set);
- a string in a backend section (the generator's or a stage's: `extra_body`, `engine`, any
  nested header mapping) under a name that says key, token, secret, password, authorization or
  cookie, whatever its value looks like, or a `$VAR` / `${VAR}` reference there (a recipe expands
  no variables: the text would be sent as it is);
- user information (`user:password@`) or a key-like query parameter in any `base_url`;
- an `api_key_env` that holds a token instead of a variable's name;
- the value of an environment variable whose name says key/token/secret/password (at least 8
  characters), pasted anywhere (e.g. `--set backend.extra_body.auth=$OPENAI_API_KEY`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit

TOKEN_SHAPES = [
    ("an OpenAI/Anthropic-style key", r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{16,}"),
    ("a Hugging Face token", r"\bhf_[A-Za-z0-9]{20,}"),
    ("a GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    ("an AWS access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("a Google API key", r"\bAIza[0-9A-Za-z_-]{30,}"),
    ("a Slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    ("a Stripe-style key", r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{10,}"),
    ("a provider key", r"\b(?:gsk|r8|pplx|xai|nvapi|fw)[_-][A-Za-z0-9_-]{20,}"),
    ("a JSON web token", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    ("a bearer token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    ("a private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]
_SHAPES = [(what, re.compile(pattern)) for what, pattern in TOKEN_SHAPES]
# Words of a field name (split at _, -, . and camelCase) that say it holds a credential.
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "authorization", "auth", "bearer",
                "credential", "credentials", "cookie"}
SECRET_QUERY = re.compile(r"(?i)(key|token|secret|password|sig|signature|auth)")
ENV_REFERENCE = re.compile(r"^\s*\$(\{\w+\}|\w+)\s*$")
MIN_SECRET_ENV_CHARS = 8


def _words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return {w.lower() for w in re.split(r"[_\-.\s]+", spaced) if w}


def secret_name(name: str) -> bool:
    """Whether a field or variable name says it holds a credential (api_key, X-Api-Key, authToken, ...)."""
    return bool(_words(name) & SECRET_WORDS) and name != "api_key_env"


def token_shape(text: str) -> str | None:
    """What kind of well-known token `text` contains, or None."""
    for what, pattern in _SHAPES:
        if pattern.search(text):
            return what
    return None


def _secret_env_values() -> dict[str, str]:
    return {value: name for name, value in os.environ.items() if secret_name(name) and len(value.strip()) >= MIN_SECRET_ENV_CHARS}


def _walk(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(field path, last key, value) of every scalar, depth first, in order."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            yield from _walk(value, child) if isinstance(value, (dict, list)) else [(child, str(key), value)]
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]") if isinstance(value, (dict, list)) else [(f"{path}[{i}]", "", value)]
    else:  # a scalar at the top, e.g. the value of one --set
        yield path, path.rsplit(".", 1)[-1], node


def _in_backend(path: str) -> bool:
    return path.startswith("backend.") or ".backend." in path


def find_secret(data: Any, path: str = "") -> tuple[str, str] | None:
    """The first (field, why) in a parsed recipe that carries a credential; None when there is none.
    `why` never contains the value itself."""
    env_values = _secret_env_values()
    for field, key, value in _walk(data, path):
        if isinstance(value, str):
            text = value.strip()
            if not text:
                continue
            if text in env_values:
                return field, f"holds the value of the environment variable {env_values[text]}"
            if key == "base_url":
                problem = _url_secret(text)
                if problem:
                    return field, problem
            if key == "api_key_env" and (token_shape(text) or len(text) > 64):
                return field, "holds what looks like a key, not the name of an environment variable"
            shape = token_shape(text)
            if shape:
                return field, f"looks like {shape}"
            if _in_backend(field) and key and secret_name(key):
                return field, f"a {key!r} field carries a credential"
            if _in_backend(field) and ENV_REFERENCE.match(text):
                return field, "a recipe expands no environment variables (the text would be sent as it is)"
    return None


def _url_secret(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if "@" in parts.netloc:
        return "user information (user:password@) in the URL"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if SECRET_QUERY.search(name) and value:
            return f"a {name!r} query parameter in the URL"
    return None


def secret_message(why: str) -> str:
    return f"{why}: a recipe carries no credentials; export the key and name the variable in backend.api_key_env"
