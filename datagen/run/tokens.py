"""Tokens and cost: what each model step spent (from its rows' token columns, see
datagen.run.stats.token_columns), per step and per model, priced with `output.prices` (USD per
million tokens in/out, per model as the recipe names it); and the upper bound of a recipe's
requests and tokens before anything runs (`datagen validate --estimate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from datagen.errors import DatagenError, from_validation_error
from datagen.steps import StepContext

MILLION = 1_000_000
# Chat-template tokens a request may add around its messages (role markers, a default system
# prompt such as SmolLM2's): an allowance, not a measured figure.
TEMPLATE_TOKENS_PER_REQUEST, TEMPLATE_TOKENS_PER_MESSAGE = 32, 8


def step_models(loaded: Any) -> dict[str, str]:
    """Step label -> the model it calls, as the recipe names it (`backend.model`); steps that call
    no model are left out."""
    recipe = loaded.recipe
    context = StepContext(recipe.backend, recipe.sampling_seed, str(loaded.path))
    models = {"generate": recipe.backend.model}
    for config in recipe.stages:
        backend = config.model_backend(context)
        if backend is not None:
            models[config.label] = backend.model
    return models


def usage(stage_stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model step: {step, model, prompt_tokens, completion_tokens}, in pipeline order."""
    return [
        {"step": s["stage"], "model": s.get("model"), "prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"]}
        for s in stage_stats
        if "prompt_tokens" in s
    ]


def cost(prompt_tokens: int, completion_tokens: int, price: Any) -> float:
    """USD for these tokens at `price` (input/output USD per million tokens)."""
    return (prompt_tokens * price.input + completion_tokens * price.output) / MILLION


def usage_record(stage_stats: list[dict[str, Any]], prices: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `tokens`: per step, per model, totals, and the cost where every model has a price."""
    steps = usage(stage_stats)
    by_model: dict[str, dict[str, Any]] = {}
    for step in steps:
        total = by_model.setdefault(str(step["model"]), {"prompt_tokens": 0, "completion_tokens": 0})
        total["prompt_tokens"] += step["prompt_tokens"]
        total["completion_tokens"] += step["completion_tokens"]
    for model, total in by_model.items():
        if model in prices:
            total["cost_usd"] = round(cost(total["prompt_tokens"], total["completion_tokens"], prices[model]), 6)
    for step in steps:
        if str(step["model"]) in prices:
            step["cost_usd"] = round(cost(step["prompt_tokens"], step["completion_tokens"], prices[str(step["model"])]), 6)
    record: dict[str, Any] = {
        "steps": steps,
        "models": by_model,
        "prompt_tokens": sum(s["prompt_tokens"] for s in steps),
        "completion_tokens": sum(s["completion_tokens"] for s in steps),
    }
    unpriced = sorted(m for m in by_model if m not in prices)
    if prices:
        record["unpriced"] = unpriced
        record["cost_usd"] = round(sum(t.get("cost_usd", 0.0) for t in by_model.values()), 6)
    return record


def cost_line(record: dict[str, Any]) -> str | None:
    """'Cost: $0.0123 (...)' when prices were given, else None."""
    if "cost_usd" not in record:
        return None
    priced = [f"{model} ${t['cost_usd']:.4f}" for model, t in record["models"].items() if "cost_usd" in t]
    line = f"Cost: ${record['cost_usd']:.4f}" + (f" ({', '.join(priced)})" if priced else "")
    if record.get("unpriced"):
        line += f"; no price for {', '.join(record['unpriced'])} (not counted)"
    return line


def token_lines(record: dict[str, Any] | None) -> list[str]:
    """The card's 'Tokens and cost' section (Markdown), from `usage_record`'s figures."""
    if not record or not record.get("steps"):
        return []
    priced = "cost_usd" in record
    lines = ["", "## Tokens and cost", "", "| step | model | prompt tokens | completion tokens |" + (" cost (USD) |" if priced else ""),
             "|---|---|---:|---:|" + ("---:|" if priced else "")]
    for s in record["steps"]:
        cell = (f" {s['cost_usd']:.4f} |" if "cost_usd" in s else " - |") if priced else ""
        lines.append(f"| {s['step']} | {s['model']} | {s['prompt_tokens']} | {s['completion_tokens']} |{cell}")
    total = f" {record['cost_usd']:.4f} |" if priced else ""
    lines.append(f"| total | | {record['prompt_tokens']} | {record['completion_tokens']} |{total}")
    line = cost_line(record)
    lines += ["", line if line else "No prices given (`output.prices` or `datagen run --prices FILE`): no cost."]
    lines.append("Each step's figures are the sums of its rows' `<step>_prompt_tokens` / `<step>_completion_tokens` "
                 "in `run/stages/` (a request's prompt counted once); requests answered from a cache count 0.")
    return lines


def read_prices(path: Path) -> dict[str, Any]:
    """A price file (YAML): {MODEL: {input: USD per million, output: USD per million}}.

    Raises DatagenError naming the file and the model on an unreadable file or a bad entry."""
    from datagen.recipe import Price
    from datagen.yaml_io import read_yaml

    data = read_yaml(path, "prices file")
    if not isinstance(data, dict):
        raise DatagenError("expected a mapping MODEL: {input: USD per million tokens, output: USD per million tokens}", path)
    prices = {}
    for model, entry in data.items():
        try:
            prices[str(model)] = Price.model_validate(entry)
        except ValidationError as err:
            error = from_validation_error(err, str(path))
            error.field = f"{model}" + (f".{error.field}" if error.field else "")
            raise error from None
    return prices


def _message_bytes(messages: list[dict[str, str]]) -> int:
    return sum(len((m.get("content") or "").encode()) for m in messages) + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)


def estimate(loaded: Any, prompts: pl.DataFrame) -> list[dict[str, Any]]:
    """Per step, before anything runs, as if every row survived every filter: requests, rows out,
    completion tokens at most (requests x samples x max_tokens) and, for generation, prompt
    tokens at most (UTF-8 bytes of the messages plus a chat-template allowance: a byte-level BPE
    token holds at least one byte). Later steps' prompts hold earlier steps' texts: not bounded."""
    recipe = loaded.recipe
    sampling = recipe.backend.sampling
    rows = prompts.height * sampling.n
    prompt_bound = sum(_message_bytes(list(m)) + TEMPLATE_TOKENS_PER_REQUEST for m in prompts["messages"].to_list())
    steps = [{"step": "generate", "model": recipe.backend.model, "requests": prompts.height, "rows": rows,
              "completion_tokens": prompts.height * sampling.n * sampling.max_tokens, "prompt_tokens": prompt_bound}]
    group = sampling.n  # rows per prompt so far (the judge's pairs are within one prompt)
    models = step_models(loaded)
    for config in recipe.stages:
        kind, label = config.stage, config.label
        if label not in models:
            continue
        if kind == "llm":
            variants, n = len(config.variants()), config.sampling.n
            requests, out, tokens = rows * variants, rows * variants * n, rows * variants * n * config.sampling.max_tokens
            group = variants * n
        elif kind == "converse":
            requests = rows * 2 * (config.turns - 1)
            out, tokens = rows, requests * config.sampling.max_tokens
        elif kind == "revise":
            requests, out = rows * 2, rows
            tokens = rows * (config.critique_max_tokens + config.sampling.max_tokens)
        elif kind == "judge":
            # pairwise: every pair of a group of k in both orders is k(k-1) requests, k-1 per row (adjacent pairs: fewer)
            per_row = 1 if config.mode == "pointwise" else max(group - 1, 0)
            requests, out = rows * per_row, rows
            tokens = requests * config.backend.sampling.max_tokens
        else:  # a model step of another kind: one request per row at its max_tokens when known
            max_tokens = getattr(getattr(config, "sampling", None), "max_tokens", None) or getattr(getattr(getattr(config, "backend", None), "sampling", None), "max_tokens", 0)
            requests, out, tokens = rows, rows, rows * max_tokens
        steps.append({"step": label, "model": models[label], "requests": requests, "rows": out, "completion_tokens": tokens, "prompt_tokens": None})
        rows = out
    return steps


def estimate_lines(loaded: Any, prompts: pl.DataFrame, available: int) -> list[str]:
    """`datagen validate --estimate`: the expected prompts, requests and token bounds, and a cost
    bound where every model has a price."""
    recipe = loaded.recipe
    steps = estimate(loaded, prompts)
    target = recipe.output.target_rows
    head = f"prompts: {prompts.height}" + (f" of {available} (the budget of a run to {target} rows; it stops once they are kept)" if target else "")
    lines = [head, "upper bounds, as if every row passed every filter:"]
    prices = recipe.output.prices
    total_cost, unpriced = 0.0, set()
    for s in steps:
        prompt = f", prompt tokens <= {s['prompt_tokens']:,}" if s["prompt_tokens"] is not None else ", prompt tokens: not bounded (hold earlier texts)"
        lines.append(f"  {s['step']} ({s['model']}): {s['requests']:,} requests -> {s['rows']:,} rows, completion tokens <= {s['completion_tokens']:,}{prompt}")
        price = prices.get(str(s["model"]))
        if price is None:
            unpriced.add(str(s["model"]))
        elif s["prompt_tokens"] is not None:
            total_cost += cost(s["prompt_tokens"], s["completion_tokens"], price)
        else:
            total_cost += cost(0, s["completion_tokens"], price)
    if prices:
        lines.append(f"cost <= ${total_cost:.4f} for generation's prompts and every step's completions"
                     + (f"; no price for {', '.join(sorted(unpriced))}" if unpriced else ""))
    return lines
