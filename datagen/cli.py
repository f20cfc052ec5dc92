"""The `datagen` command: run, validate, preview, dedup, inspect, counterexamples."""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from datagen.errors import DatagenError, first_line
from datagen.sources.shipped import RESOURCES

if TYPE_CHECKING:
    from datagen.run.engines import EnginePool

EXIT_USER_ERROR = 2
MAX_ROWS_SHOWN = 2**31 - 1  # --rows / -n past any table's length mean "all"
COUNTEREXAMPLE_RECIPE = RESOURCES / "pipelines" / "counterexamples.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datagen", description="Manufacture post-training data from recipes.")
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("recipe", type=Path, help="pipeline recipe (YAML), or a shipped recipe's name (datagen recipes)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override any recipe field (repeatable), e.g. --set backend.sampling.n=4")
        return p

    run = recipe_command("run", "Run a recipe and write a Hugging Face dataset.")
    run.add_argument("--out", type=Path, help="output directory (default: the recipe's output.dir)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true", help="replace a run of a different recipe in --out")
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out, skipping finished shards (the default: rerunning the same command resumes)")
    run.add_argument("--no-progress", action="store_true", help="no progress output (same as --progress none)")
    run.add_argument("--progress", choices=["auto", "bar", "log", "none"], default="auto",
                     help="bar: live bars; log: plain lines every few seconds; auto (default): bars on a terminal, else lines")
    run.add_argument("--verbose", action="store_true",
                     help="show what the model engines print (vLLM, torch, transformers); by default it goes to OUT/run/engine.log")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local (default): this process; ray: stages as Ray Data map_batches, generation in actors (needs the ray extra)")
    run.add_argument("--address", help="with --executor ray: the Ray cluster to join ('auto' or HEAD:6379); default: start a local Ray")
    run.add_argument("--prices", type=Path, metavar="FILE",
                     help="YAML: MODEL: {input: USD, output: USD} per million tokens, for the cost lines (over output.prices)")
    run.add_argument("--dry-run", action="store_true", help="print what the first shard would send to the model; load no model, write nothing")
    validate = recipe_command("validate", "Check a recipe and every template it names, without loading a model.")
    validate.add_argument("--estimate", action="store_true",
                          help="also print the expected prompts, requests and token upper bounds (and cost, with prices)")
    validate.add_argument("--prices", type=Path, metavar="FILE", help="with --estimate: a price file as for run")
    preview = recipe_command("preview", "Print rendered prompts and their slot values, without loading a model.")
    preview.add_argument("-n", type=int, default=5, help="how many prompts to show (default 5)")

    help_text = "List the shipped recipes: run or validate one by name (datagen run quickstart --out DIR)."
    sub.add_parser("recipes", help=help_text, description=help_text)

    help_text = "Show a run's key figures (rows per stage, drop reasons, scores) and, with --rows/--where, its rows."
    inspect = sub.add_parser("inspect", help=help_text, description=help_text)
    inspect.add_argument("dir", type=Path, help="a run's output directory (or a dataset written by datagen)")
    inspect.add_argument("--rows", type=int, metavar="N", help="show N rows (default 5 with --where)")
    inspect.add_argument("--where", action="append", default=[], metavar="stage=NAME|COLUMN=VALUE",
                         help="stage=NAME: the rows that stage dropped, with why; COLUMN=VALUE: rows where COLUMN equals VALUE (repeatable)")
    inspect.add_argument("--pairs", action="store_true", help="the written preference pairs: chosen beside rejected, with their scores")
    inspect.add_argument("--errors", action="store_true", help="rows a stage recorded an error on without dropping them (a judge or revise error kept by on_error: keep)")
    inspect.add_argument("--id", dest="row_id", metavar="ID", help="one row's full record: every column, by candidate_id (or prompt_id)")

    help_text = "Drop exact and near-duplicate rows of any Parquet/JSONL table (MinHash LSH on token shingles: words, or characters in scripts written without spaces)."
    dedup = sub.add_parser("dedup", help=help_text, description=help_text)
    dedup.add_argument("input", type=Path, help="input table (.parquet or .jsonl)")
    dedup.add_argument("--column", required=True, help="text column to compare")
    dedup.add_argument("--out", type=Path, required=True, help="output table (.parquet or .jsonl); every input column is kept")
    dedup.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity of token shingles (default 0.8)")
    dedup.add_argument("--num-perm", type=int, default=128, help="MinHash signature size: one-permutation bins (default 128)")
    dedup.add_argument("--shingle-size", type=int, default=5, help="tokens per shingle: words, or characters in scripts without spaces (default 5)")
    dedup.add_argument("--bands", type=int, help="LSH bands (default: chosen for recall at the threshold)")
    dedup.add_argument("--keep", choices=["first", "best"], default="first", help="which row of a cluster to keep (default first)")
    dedup.add_argument("--score-column", help="with --keep best: the row with the highest score is kept")
    dedup.add_argument("--reference", type=Path, help="drop rows that near-duplicate a text of this table (decontamination)")
    dedup.add_argument("--reference-column", help="text column of --reference (default: --column)")
    dedup.add_argument("--keep-dropped", action="store_true", help="write dropped rows too, with <prefix>_keep and <prefix>_reason")
    dedup.add_argument("--prefix", default="dedup", help="prefix of the added columns (default dedup)")

    help_text = ("Targeted training data from a model's failures: cluster them, split --budget prompts across the clusters by "
                 "size x severity, generate new problems of each kind and re-solve the failures (runs pipelines/counterexamples.yaml).")
    cx = sub.add_parser("counterexamples", help=help_text, description=help_text)
    cx.add_argument("failures", type=Path,
                    help="failed eval cases (.parquet or .jsonl): prompt, output; optional expected, tag, severity, id, kind, tests")
    cx.add_argument("--budget", type=int, required=True, help="prompts to generate, spread across the clusters")
    cx.add_argument("--train", type=Path,
                    help="the training set (.parquet or .jsonl with prompt, or TRL messages): neighbours and decontamination (default: none)")
    cx.add_argument("--k", type=int, help="number of clusters (default: the smallest k whose mean silhouette over seeds is near the best)")
    cx.add_argument("--out", type=Path, help="output directory: the targeted set, and the DPO pairs in OUT/pairs (not with --plan)")
    cx.add_argument("--plan", action="store_true",
                    help="print the clusters (id, label, size, severity, members, central and nearest training examples) and the "
                         "budget per cluster, without generating anything")
    cx.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    cx.add_argument("--recipe", type=Path, default=COUNTEREXAMPLE_RECIPE, help="the recipe to run (default: pipelines/counterexamples.yaml)")
    cx.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override any other recipe field")
    cx.add_argument("--force", action="store_true", help="replace a run of a different recipe in --out")
    cx.add_argument("--no-progress", action="store_true", help="no progress output (same as --progress none)")
    cx.add_argument("--progress", choices=["auto", "bar", "log", "none"], default="auto",
                    help="bar: live bars; log: plain lines every few seconds; auto (default): bars on a terminal, else lines")
    cx.add_argument("--verbose", action="store_true",
                    help="show what the model engines print (vLLM, torch, transformers); by default it goes to OUT/run/engine.log")
    return parser


def openmp_preload(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to `environ` so that a Python process started with them has Intel
    OpenMP preloaded, as vLLM's CPU build needs before Python starts (15x throughput swing without
    it), and is marked as re-executed (DATAGEN_NO_REEXEC); {} when this environment has no
    libiomp5 or `environ` preloads it already."""
    lib = Path(sys.prefix) / "lib" / "libiomp5.so"
    if not lib.exists() or str(lib) in environ.get("LD_PRELOAD", ""):
        return {}
    return {"LD_PRELOAD": ":".join(filter(None, [str(lib), environ.get("LD_PRELOAD")])), "DATAGEN_NO_REEXEC": "1"}


def _ensure_openmp_preload() -> None:
    """Re-execute once with Intel OpenMP preloaded (openmp_preload) when vLLM's CPU build runs here."""
    preload = {} if os.environ.get("DATAGEN_NO_REEXEC") else openmp_preload(os.environ)
    if not preload:
        return
    from datagen.llm.vllm_backend import is_cpu_build

    if not is_cpu_build():
        return
    env = dict(os.environ) | preload
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "datagen", *sys.argv[1:]], env)


def _check_models(loaded) -> None:
    """Every model the recipe names (the generator's, a judge's, an embedding model, ...), checked
    before any engine starts or the output directory is touched: a vllm model path exists, an
    openai key is set, a local embedding model folder exists."""
    from datagen.llm import check_backend
    from datagen.paths import is_local_model_path

    recipe = loaded.recipe
    for field, backend in recipe.backends():
        try:
            check_backend(backend, field)
        except DatagenError as err:
            raise loaded.blame(err) from None
    for field, model in recipe.embedding_models():
        if is_local_model_path(model) and not Path(model).is_dir():
            raise loaded.blame(DatagenError(f"embedding model folder not found: {model}", loaded.path, field))


def _with_prices(loaded, path: Path | None):
    """The recipe's output.prices with those of a --prices file over them."""
    if path is not None:
        from datagen.run.tokens import read_prices

        loaded.recipe.output.prices = loaded.recipe.output.prices | read_prices(path)
    return loaded


def cmd_run(args: argparse.Namespace) -> int:
    from datagen.recipe import load_recipe

    loaded = _with_prices(load_recipe(args.recipe, args.overrides), getattr(args, "prices", None))
    if getattr(args, "dry_run", False):
        return dry_run(loaded)
    out = args.out or (Path(loaded.recipe.output.dir) if loaded.recipe.output.dir else None)
    if out is None:
        raise DatagenError("no output directory: pass --out DIR or set output.dir", args.recipe, "output.dir")
    _check_models(loaded)
    if any(backend.kind == "vllm" for _, backend in loaded.recipe.backends()):  # a judge's engine too
        _ensure_openmp_preload()
    progress = "none" if args.no_progress else args.progress
    if args.executor == "ray":
        from datagen.run.ray_executor import run_pipeline_ray

        result = run_pipeline_ray(loaded, out, address=args.address, force=args.force, progress=progress)
    else:
        if args.address is not None:
            raise DatagenError("only used with --executor ray", field="--address")
        from datagen.run.executor import run_pipeline

        result = run_pipeline(loaded, out, force=args.force, progress=progress, verbose=args.verbose, engines=args.engines)
    from datagen.report.trust import kept_errors

    for s in result.stage_stats:
        reasons = ", ".join(f"{r}={c}" for r, c in sorted(s["dropped"].items()))
        errors = kept_errors(s)  # alive, but an error is no pass
        print(f"{s['stage']:>12}: {s['rows_in']:>6} in -> {s['kept']:>6} kept" + (f", {errors} of them with an error" if errors else "")
              + (f"  ({reasons})" if reasons else ""))
    _print_tokens(out)
    if result.target is not None and result.target.reached:
        print(result.target.line())
    if result.rows_written:
        print(f"wrote {result.rows_written} rows to {out} (load with datasets.load_dataset({str(out)!r}))")
    else:
        from datagen.report.view import why_empty

        why = why_empty(result.stage_stats)
        if why is None:  # rows survived, but the output builder made nothing of them (no pair)
            output = _output_figures(out)
            reasons = sorted((output.get("prompts_without_pairs") or {}).items(), key=lambda kv: -kv[1])[:3]
            why = "no prompt gave a pair: " + "; ".join(f"{r}: {c} ({explain_no_pair(r)})" for r, c in reasons) if reasons else "the output builder wrote no row"
        print(f"wrote 0 rows to {out}: {why}; datasets.load_dataset reads it with streaming=True (datasets cannot load a split with no rows otherwise); inspect with datagen inspect {out}")
    if result.pairs_written:
        from datagen.counterexamples.output import PAIRS_DIR

        pairs_dir = out / PAIRS_DIR
        print(f"wrote {result.pairs_written} fix/failure DPO pairs to {pairs_dir} (load with datasets.load_dataset({str(pairs_dir)!r}))")
    elif result.pairs_written == 0:
        print("no fix/failure DPO pairs: no correction verified against its expected answer")
    report = out / "run" / "report.html"
    if report.exists():
        print(f"report: {report} (or: datagen inspect {out})")
    if result.target is not None and not result.target.reached:
        from datagen.run.target import EXIT_SHORT

        print(f"datagen: warning: {result.target.line()}", file=sys.stderr)
        return EXIT_SHORT
    return 0


def _print_tokens(out: Path) -> None:
    """One line of tokens per model step, and the cost line when prices were given."""
    from datagen.run.tokens import cost_line

    try:
        record = json.loads((out / "run" / "manifest.json").read_text()).get("tokens") or {}
    except (OSError, ValueError):
        return
    steps = record.get("steps") or []
    if steps:
        print("tokens: " + "; ".join(f"{s['step']} ({s['model']}) {s['prompt_tokens']:,} in / {s['completion_tokens']:,} out" for s in steps))
    line = cost_line(record) if steps else None
    if line:
        print(line)


def dry_run(loaded) -> int:
    """`datagen run --dry-run`: the requests of the first shard as the backend would get them
    (messages, per-request seed, sampling), and the steps after; no model, nothing written."""
    from datagen.llm.generate import request_seed
    from datagen.run.executor import build_steps, expand_prompts
    from datagen.run.target import Target

    recipe = loaded.recipe
    _check_models(loaded)
    prompts = expand_prompts(loaded)
    target = Target.of(loaded)
    available = prompts.height
    if target is not None:
        prompts = target.stream(prompts)
    for stage in build_steps(loaded):
        stage.close()
    shard = prompts.head(recipe.execution.shard_size)
    sampling = recipe.backend.sampling.model_dump(mode="json")
    print(f"first shard: {shard.height} of {prompts.height} prompts" + (f" (of {available}; a run to {target.rows} rows)" if target else "")
          + f", to {recipe.backend.kind} model {recipe.backend.model!r}; sampling {json.dumps(sampling)}")
    for row in shard.iter_rows(named=True):
        print(f"=== request {row['prompt_id']}  template={row['template_id']}  seed={request_seed(recipe.sampling_seed, row['prompt_id'])}")
        for message in row["messages"]:
            print(f"[{message['role']}]")
            print(textwrap.indent(message["content"], "  "))
    print("then: " + " -> ".join(["generate"] + [s.label for s in recipe.stages]) + " (dry run: no model loaded, nothing written)")
    return 0


def _output_figures(out: Path) -> dict:
    """The output builder's figures the manifest records ({} when unreadable)."""
    try:
        output = json.loads((out / "run" / "manifest.json").read_text()).get("output")
    except (OSError, ValueError):
        return {}
    return output if isinstance(output, dict) else {}


def explain_no_pair(reason: str) -> str:
    from datagen.report.view import explain_no_pair as explain

    return explain(reason)


def cmd_validate(args: argparse.Namespace) -> int:
    from datagen.run.executor import build_steps, expand_prompts
    from datagen.recipe import load_recipe

    loaded = _with_prices(load_recipe(args.recipe, args.overrides), getattr(args, "prices", None))
    recipe = loaded.recipe
    _check_models(loaded)  # the same checks as `run`, for every model the recipe names
    prompts = expand_prompts(loaded)
    for stage in build_steps(loaded):  # building reads the files a stage needs (dedup's reference, ...); no model loads
        stage.close()
    from datagen.run.target import Target

    target = Target.of(loaded)
    stages = " -> ".join(["generate"] + [s.label for s in recipe.stages])
    print(f"ok: {args.recipe}: {len(recipe.templates)} template(s), {prompts.height} prompts x n={recipe.backend.sampling.n}; {stages}")
    if getattr(args, "estimate", False):
        from datagen.run.tokens import estimate_lines

        print("\n".join(estimate_lines(loaded, target.stream(prompts) if target else prompts, prompts.height)))
    elif getattr(args, "prices", None) is not None:
        raise DatagenError("only used with --estimate", field="--prices")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from datagen.run.executor import expand_prompts
    from datagen.recipe import load_recipe

    if args.n < 1:
        raise DatagenError("must be at least 1", field="-n")
    loaded = load_recipe(args.recipe, args.overrides)
    prompts = expand_prompts(loaded)
    for row in prompts.head(min(args.n, MAX_ROWS_SHOWN)).iter_rows(named=True):
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


def cmd_dedup(args: argparse.Namespace) -> int:
    import polars as pl
    from pydantic import ValidationError

    from datagen.errors import from_validation_error
    from datagen.run.run_dir import atomic_write_bytes, atomic_write_parquet
    from datagen.steps.dedup import DedupConfig, Deduplicator, read_table, text_column

    writers = {
        ".parquet": atomic_write_parquet,
        ".jsonl": lambda path, frame: atomic_write_bytes(path, frame.write_ndjson().encode()),
    }
    writers[".ndjson"] = writers[".jsonl"]
    if args.out.is_dir():
        raise DatagenError("is a directory; name the output file (.parquet or .jsonl)", args.out, "--out")
    if args.out.exists() and args.input.exists() and os.path.samefile(args.out, args.input):
        raise DatagenError(f"is the input file ({args.input}); write the deduplicated table to another file", args.out, "--out")
    if args.reference is not None and args.out.exists() and args.reference.exists() and os.path.samefile(args.out, args.reference):
        raise DatagenError(f"is the reference file ({args.reference}); write the deduplicated table to another file", args.out, "--out")
    write = writers.get(args.out.suffix.lower())
    if write is None:
        raise DatagenError(f"unknown output file extension {args.out.suffix or '(none)'!r}: use .parquet or .jsonl", args.out, "--out")
    try:
        config = DedupConfig(
            name=args.prefix, threshold=args.threshold, num_perm=args.num_perm, shingle_size=args.shingle_size,
            bands=args.bands, keep=args.keep, score_column=args.score_column,
        )
    except ValidationError as err:
        error = from_validation_error(err, None)
        if error.field in DedupConfig.model_fields:
            error.field = "--" + {"name": "prefix"}.get(error.field, error.field).replace("_", "-")
        raise error from None
    frame = read_table(args.input, "input")
    texts = text_column(frame, args.column, args.input, "--column")
    scores = None
    if args.score_column is not None:
        if args.score_column not in frame.columns:
            raise DatagenError(f"no column {args.score_column!r} (columns: {', '.join(frame.columns)})", args.input, "--score-column")
        scores = frame[args.score_column]
        if not (scores.dtype.is_numeric() or scores.dtype in (pl.Boolean, pl.Null)):
            raise DatagenError(f"column {args.score_column!r} holds {scores.dtype}, not numbers", args.input, "--score-column")
    reference = None
    if args.reference is not None:
        reference = text_column(read_table(args.reference, "reference"), args.reference_column or args.column, args.reference, "--reference-column")
    names = {"keep": "keep", "reason": "reason", "kept_row": "cluster", "similarity": "similarity"}
    if reference is not None:
        names["reference_row"] = "reference_row"
    names = {column: f"{args.prefix}_{suffix}" for column, suffix in names.items()}
    clash = sorted(set(names.values()) & set(frame.columns))
    if clash:
        raise DatagenError(f"the input already has a column {clash[0]!r}; choose another --prefix", args.input, "--prefix")

    verdicts = Deduplicator(config, reference).verdicts(texts, scores)
    annotated = frame.hstack(verdicts.select(list(names)).rename(names))
    keep, reason = names["keep"], names["reason"]
    written = annotated if args.keep_dropped else annotated.filter(pl.col(keep)).drop(keep, reason)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, written)

    dropped = verdicts["reason"].drop_nulls().value_counts(sort=True).rows()
    sizes = verdicts["kept_row"].drop_nulls().value_counts()["count"]
    print(f"{frame.height} rows in -> {int(verdicts['keep'].sum())} kept" + (f"  ({', '.join(f'{r}={c}' for r, c in dropped)})" if dropped else ""))
    print(f"{int((sizes > 1).sum())} duplicate clusters, largest {int(sizes.max() or 0)} rows; cluster ids are 0-based row numbers of the kept rows")
    print(f"wrote {written.height} rows to {args.out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from datagen.report.inspect import inspect

    if args.rows is not None and args.rows < 0:
        raise DatagenError("must be at least 0", field="--rows")
    try:
        inspect(args.dir, None if args.rows is None else min(args.rows, MAX_ROWS_SHOWN), args.where,  # more than there are: all
                pairs=args.pairs, errors=args.errors, row_id=args.row_id)
    except BrokenPipeError:  # `datagen inspect DIR | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_counterexamples(args: argparse.Namespace) -> int:
    """Sugar for `datagen run RECIPE --set input.failures=F --set budget=B ...`, checking the files first."""
    from datagen.counterexamples.config import MAX_CLUSTERS
    from datagen.sources.failures import read_failures, read_train
    from datagen.recipe import load_recipe
    from datagen.recipe import MAX_COUNT

    if not 1 <= args.budget <= MAX_COUNT:
        raise DatagenError(f"must be between 1 and {MAX_COUNT} (got {args.budget})", field="--budget")
    if args.k is not None and not 1 <= args.k <= MAX_CLUSTERS:
        raise DatagenError(f"must be between 1 and {MAX_CLUSTERS} (got {args.k})", field="--k")
    # JSON strings are YAML strings: a path with ': ' or '#' stays a path.
    overrides = [f"input.failures={json.dumps(str(args.failures.resolve()))}", f"budget={args.budget}",
                 f"input.train={json.dumps(str(args.train.resolve())) if args.train else 'null'}"]
    if args.k is not None:
        overrides.append(f"input.k={args.k}")
    overrides += args.overrides
    if args.json and not args.plan:
        raise DatagenError("only used with --plan", field="--json")
    if args.plan == (args.out is not None):
        raise DatagenError("pass --out DIR to generate, or --plan to print the plan only", field="--out")
    recipe = load_recipe(args.recipe, overrides).recipe
    source = recipe.input
    assert source is not None  # the overrides above give it one
    # A bad failures or training file fails here, in one line, before any model loads.
    read_failures(args.failures, source.text_column, source.severity_column, source.severity_required, source.kind)
    if args.train is not None:
        read_train(args.train, source.text_column)
    if args.plan:
        from datagen.counterexamples.plan import make_plan
        from datagen.counterexamples.plan_text import plan_text

        report = make_plan(source, recipe.budget, recipe.seed).report(details=True)
        print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else plan_text(report))
        return 0
    run = argparse.Namespace(recipe=args.recipe, overrides=overrides, out=args.out, force=args.force, resume=False,
                             no_progress=args.no_progress, progress=args.progress, verbose=args.verbose, executor="local", address=None,
                             engines=args.engines)
    return cmd_run(run)


def cmd_recipes(args: argparse.Namespace) -> int:
    from datagen.sources.shipped import PIPELINES, shipped_recipes

    recipes = shipped_recipes()
    width = max(map(len, recipes), default=0)
    for name, description in recipes.items():
        short = description if len(description) <= 100 else description[:99] + "\u2026"
        print(f"{name:<{width}}  {short}".rstrip())
    print(f"({len(recipes)} recipes in {PIPELINES}; copy one to edit it)")
    return 0


COMMANDS = {"recipes": cmd_recipes, "run": cmd_run, "validate": cmd_validate, "preview": cmd_preview, "dedup": cmd_dedup, "inspect": cmd_inspect,
            "counterexamples": cmd_counterexamples}


def _reader_gone(stream) -> bool:
    """Whether `stream` is a pipe whose reading end was closed (poll reports POLLERR for it)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), 0)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None, *, engines: EnginePool | None = None) -> int:
    """`datagen ARGV` (default: sys.argv[1:]); returns the exit status (2: bad input, one line on
    stderr). `engines`: a datagen.run.engines.EnginePool the caller keeps open across calls in one
    process (tests, notebooks): `run` and `counterexamples` take their engines from it and leave
    them open, so the next run of the same model starts none. Not used by `--executor ray`."""
    args = _parser().parse_args(argv)
    args.engines = engines
    try:
        return COMMANDS[args.command](args)
    except DatagenError as err:
        print(f"datagen: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("datagen: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, BrokenPipeError) and _reader_gone(sys.stdout):  # `datagen ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
            return 128 + signal.SIGPIPE
        if os.environ.get("DATAGEN_DEBUG"):
            raise
        print(f"datagen: internal error: {type(err).__name__}: {first_line(err, '')} (set DATAGEN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
