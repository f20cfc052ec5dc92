"""The `datagen` command: run, validate, preview."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from datagen.errors import DatagenError

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datagen", description="Manufacture post-training data from recipes.")
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("recipe", type=Path, help="pipeline recipe (YAML)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override any recipe field (repeatable), e.g. --set backend.sampling.n=4")
        return p

    run = recipe_command("run", "Run a recipe and write a Hugging Face dataset.")
    run.add_argument("--out", type=Path, help="output directory (default: the recipe's output.dir)")
    run.add_argument("--force", action="store_true", help="replace a run of a different recipe in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    recipe_command("validate", "Check a recipe and every template it names, without loading a model.")
    preview = recipe_command("preview", "Print rendered prompts and their slot values, without loading a model.")
    preview.add_argument("-n", type=int, default=5, help="how many prompts to show (default 5)")
    return parser


def _ensure_openmp_preload() -> None:
    """vLLM's CPU build needs Intel OpenMP preloaded before Python starts (15x throughput swing
    without it), so re-execute once with LD_PRELOAD set when the library is in this environment."""
    lib = Path(sys.prefix) / "lib" / "libiomp5.so"
    if not lib.exists() or str(lib) in os.environ.get("LD_PRELOAD", "") or os.environ.get("DATAGEN_NO_REEXEC"):
        return
    from datagen.backends.vllm_backend import is_cpu_build

    if not is_cpu_build():
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(filter(None, [str(lib), env.get("LD_PRELOAD")]))
    env["DATAGEN_NO_REEXEC"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "datagen", *sys.argv[1:]], env)


def cmd_run(args: argparse.Namespace) -> int:
    from datagen.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides)
    out = args.out or (Path(loaded.recipe.output.dir) if loaded.recipe.output.dir else None)
    if out is None:
        raise DatagenError("no output directory: pass --out DIR or set output.dir", args.recipe, "output.dir")
    if loaded.recipe.backend.kind == "vllm":
        _ensure_openmp_preload()
    from datagen.executor import run_pipeline

    result = run_pipeline(loaded, out, force=args.force, progress=not args.no_progress)
    for s in result.stage_stats:
        reasons = ", ".join(f"{r}={c}" for r, c in sorted(s["dropped"].items()))
        print(f"{s['stage']:>12}: {s['rows_in']:>6} in -> {s['kept']:>6} kept" + (f"  ({reasons})" if reasons else ""))
    print(f"wrote {result.rows_written} rows to {out} (load with datasets.load_dataset({str(out)!r}))")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from datagen.executor import expand_prompts
    from datagen.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides)
    prompts = expand_prompts(loaded)
    recipe = loaded.recipe
    if recipe.backend.kind == "vllm":
        from datagen.backends.vllm_backend import check_model

        try:
            check_model(recipe.backend.model)
        except DatagenError as err:
            err.source = err.source or str(args.recipe)
            raise
    stages = " -> ".join(["generate"] + [s.label for s in recipe.stages])
    print(f"ok: {args.recipe}: {len(loaded.templates)} template(s), {prompts.height} prompts x n={recipe.backend.sampling.n}; {stages}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from datagen.executor import expand_prompts
    from datagen.recipe import load_recipe

    if args.n < 1:
        raise DatagenError("must be at least 1", field="-n")
    loaded = load_recipe(args.recipe, args.overrides)
    prompts = expand_prompts(loaded)
    for row in prompts.head(args.n).iter_rows(named=True):
        print(f"=== {row['template_id']}  prompt_id={row['prompt_id']}")
        print(f"slots: {json.dumps(json.loads(row['slots']))}")
        for message in row["messages"]:
            print(f"[{message['role']}]")
            print(textwrap.indent(message["content"], "  "))
        if row["reference"]:
            print(f"[reference] {row['reference']}")
        print()
    print(f"({min(args.n, prompts.height)} of {prompts.height} prompts)")
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "preview": cmd_preview}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DatagenError as err:
        print(f"datagen: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("datagen: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("DATAGEN_DEBUG"):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"datagen: internal error: {type(err).__name__}: {first} (set DATAGEN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
