"""From the recipe's input section to a plan: the failures in clusters, each with its share of the
budget, the failures it re-solves, the pool its counterexample prompts draw seeds from, and the
training examples nearest to it."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from datagen.counterexamples.allocate import allocate
from datagen.counterexamples.clusters import Cluster, Clustering, cluster_failures, nearest, unit
from datagen.counterexamples.config import InputConfig
from datagen.sources.failures import read_failures, read_train
from datagen.counterexamples.signals import code_of, component_texts, component_vectors, embed_failures
from datagen.text.embeddings import encode, load_encoder
from datagen.errors import DatagenError

EXCERPT_CHARS = 300
K_RULE = "smallest k whose silhouette (mean over k_seeds k-means seeds) is within k_tolerance of the best"


def load_failures(config: InputConfig) -> pl.DataFrame:
    """The input section's failures file, read and checked (see failures.read_failures)."""
    return read_failures(config.failures, config.text_column, config.severity_column, config.severity_required, config.kind)


def _excerpt(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def _unmarked(diff: str | None) -> str:
    """A difference's tokens without its wrong:/right: marks (which would name every cluster)."""
    return " ".join(line.split(": ", 1)[-1] for line in (diff or "").splitlines())


def tag_agreement(assignment: list[int], tags: list[str | None]) -> dict[str, Any] | None:
    """Purity of the clusters against a `tag` column (share of tagged failures whose cluster's most
    common tag is theirs) and the confusion table (cluster -> tag -> count); None without tags."""
    pairs = [(c, t) for c, t in zip(assignment, tags) if t is not None]
    if not pairs:
        return None
    confusion: dict[int, Counter] = {}
    for c, t in pairs:
        confusion.setdefault(c, Counter())[t] += 1
    majority = sum(counts.most_common(1)[0][1] for counts in confusion.values())
    return {
        "tagged": len(pairs),
        "purity": round(majority / len(pairs), 4),
        "confusion": {int(c): dict(sorted(counts.items())) for c, counts in sorted(confusion.items())},
    }


@dataclass
class ClusterPlan:
    cluster: Cluster
    severity: float  # mean severity of the members
    weight: float  # size x mean severity: what the budget is split by
    budget: int  # prompts: corrections + new problems
    corrections: list[int]  # failure rows re-solved (each has an `expected`), most central first
    pool: list[int]  # failure rows the counterexample prompts draw their seeds from
    neighbours: list[int]  # training rows nearest the cluster, nearest first
    kind: str = "math"  # the most common kind of its members: code clusters get the code templates
    not_corrected: dict[str, int] = field(default_factory=dict)  # why members were not asked again -> count

    @property
    def new_problems(self) -> int:
        return self.budget - len(self.corrections)


@dataclass
class Plan:
    config: InputConfig
    budget: int
    failures: pl.DataFrame
    train: pl.DataFrame | None
    clustering: Clustering
    clusters: list[ClusterPlan]
    weights: dict[str, float] = field(default_factory=dict)  # what the failures were embedded as

    def report(self, details: bool = False) -> dict[str, Any]:
        """The plan as plain data (what `--plan --json` prints and the stage summary holds). With
        `details`, each cluster also lists its member ids, its central failures' text and its
        nearest training examples' text."""
        f = self.failures
        ids, tags = f["failure_id"].to_list(), f["tag"].to_list()
        clusters = []
        for p in self.clusters:
            c = p.cluster
            entry: dict[str, Any] = {
                "id": c.id,
                "label": c.label,
                "kind": p.kind,
                "terms": c.terms,
                "size": c.size,
                "severity": round(p.severity, 4),
                "weight": round(p.weight, 4),
                "budget": p.budget,
                "corrections": len(p.corrections),
                "new_problems": p.new_problems,
                "central": [ids[i] for i in c.members[: self.config.seeds_per_cluster]],
                "corrected_failure_ids": [ids[i] for i in p.corrections],
            }
            if p.not_corrected:
                entry["not_corrected"] = dict(sorted(p.not_corrected.items()))
            counted = Counter(tags[i] for i in c.members if tags[i] is not None)
            if counted:
                entry["tags"] = dict(counted.most_common())
            if details:
                entry["member_ids"] = [ids[i] for i in c.members]
                entry["central_examples"] = [
                    {"id": ids[i], "prompt": _excerpt(f["prompt"][int(i)]), "output": _excerpt(f["output"][int(i)]), "expected": _excerpt(f["expected"][int(i)])}
                    | ({"diagnosis": f["diagnosis"][int(i)]} if "diagnosis" in f.columns else {})
                    for i in c.members[: self.config.seeds_per_cluster]
                ]
                train = self.train
                entry["nearest_training_examples"] = (
                    [{"id": train["train_id"][i], "prompt": _excerpt(train["prompt"][i])} for i in p.neighbours] if train is not None else []
                )
            clusters.append(entry)
        report: dict[str, Any] = {
            "failures": f.height,
            "kinds": dict(sorted(Counter(f["kind"].to_list()).items())),
            "budget": self.budget,
            "k": len(self.clusters),
            "k_chosen_by": "given" if self.config.k is not None else K_RULE,
            "k_seeds": self.config.k_seeds,
            "k_tolerance": self.config.k_tolerance,
            "silhouette": self.clustering.silhouettes,
            "silhouette_spread": self.clustering.spread,
            "embedding_weights": self.weights,
            "train": str(self.config.train) if self.config.train is not None else None,
            "clusters": clusters,
            # Eval prompts asked again for corrections: remove them from the held-out eval.
            "corrected_failure_ids": [ids[i] for p in self.clusters for i in p.corrections],
        }
        agreement = tag_agreement(self.clustering.assignment.tolist(), tags)
        if agreement is not None:
            report["tag_agreement"] = agreement
        return report


def _correction_rows(cluster: Cluster, expected: list[str | None], budget: int, share: float, enabled: bool) -> list[int]:
    if not enabled:
        return []
    verifiable = [int(i) for i in cluster.members if expected[i] is not None]
    wanted = math.floor(budget * share + 0.5)
    return verifiable[: min(wanted, len(verifiable))]


def _code_correction_rows(cluster: Cluster, failures: pl.DataFrame, budget: int, share: float, checker) -> tuple[list[int], dict[str, int]]:
    """Code failures asked again: only those with `tests` that their failing output fails and their
    expected code (where given) passes, checked in the sandbox now, most central first. A failing
    output that passes its tests would make a "fix" that is no fix; an expected that fails them,
    tests that cannot tell right from wrong. Returns (rows, why others were skipped -> count)."""
    wanted = math.floor(budget * share + 0.5)
    rows: list[int] = []
    skipped: Counter = Counter()
    tests, outputs, expected = failures["tests"].to_list(), failures["output"].to_list(), failures["expected"].to_list()
    for i in (int(i) for i in cluster.members):
        if len(rows) >= wanted:
            break
        if checker is None:
            skipped["no_code_correction_template"] += 1
            continue
        if tests[i] is None:
            skipped["no_tests"] += 1
            continue
        # code_of: the program even where a fence opens mid-line ("Sure! ```python"), which the
        # verifier's own extraction would miss (a "failing" output must fail on its code).
        if expected[i] is not None and not checker.check({"completion": code_of(expected[i]), "tests": tests[i]}).keep:
            skipped["expected_fails_tests"] += 1
            continue
        if checker.check({"completion": code_of(outputs[i]), "tests": tests[i]}).keep:
            skipped["output_passes_tests"] += 1
            continue
        rows.append(i)
    return rows, dict(skipped)


@dataclass
class Embedded:
    """The failures read and embedded: what a plan needs before k-means (the same for every seed)."""

    failures: pl.DataFrame
    joint: np.ndarray  # (n, d): what is clustered, unit rows (signals.embed_failures)
    prompt_vectors: np.ndarray  # (n, d_model): the prompts alone, for the nearest training examples
    labels: list[str]  # per failure, the text its cluster's terms are drawn from
    weights: dict[str, float]
    encoder: Any


def embed_plan_failures(config: InputConfig, diagnose_backend=None) -> Embedded:
    """Read the failures and embed them as the config says (diagnosing them first if asked).

    Raises DatagenError (naming the file and column) for a bad failures file, a k larger than the
    failures, or all-zero severities: before the encoder loads (seconds)."""
    failures = load_failures(config)
    if config.k is not None and config.k > failures.height:
        raise DatagenError(f"k ({config.k}) is larger than the number of failures ({failures.height})", config.failures, "input.k")
    if failures.height and not failures["severity"].sum() > 0:  # severities are >= 0 (read_failures)
        raise DatagenError("every weight is zero: there is nothing to allocate the budget to", config.failures, config.severity_column)
    encoder = load_encoder(config.embedding_model)
    prompts, outputs, expected = failures["prompt"].to_list(), failures["output"].to_list(), failures["expected"].to_list()
    kinds = failures["kind"].to_list()
    code = kinds.count("code") * 2 > len(kinds)
    weights = config.weights(code)
    texts = component_texts(prompts, outputs, expected)
    texts["diagnosis"] = [None] * failures.height
    if config.diagnose is not None:
        from datagen.counterexamples.diagnose import diagnose

        texts["diagnosis"] = diagnose(failures, config.diagnose, diagnose_backend)
        failures = failures.with_columns(pl.Series("diagnosis", texts["diagnosis"], dtype=pl.String))
    computed = component_vectors(outputs, expected) if weights.get("change_kinds", 0) > 0 else None
    try:
        joint = embed_failures(encoder, texts, weights, computed=computed)
    except ValueError as err:
        raise DatagenError(str(err), config.failures, "input.embed") from None
    prompt_vectors = embed_failures(encoder, texts, {"prompt": 1.0})
    labels = [
        f"{_unmarked(texts['changed_tokens'][i])}\n{p}\n{o}" if code else f"{p}\n{o}"
        for i, (p, o) in enumerate(zip(prompts, texts["output"]))
    ] if config.diagnose is None else [d or "" for d in texts["diagnosis"]]
    return Embedded(failures, joint, prompt_vectors, labels, weights, encoder)


def make_plan(config: InputConfig, budget: int, seed: int, diagnose_backend=None, embedded: Embedded | None = None) -> Plan:
    """Read, embed, cluster, allocate: the whole plan, without generating anything. `embedded`
    (embed_plan_failures of the same config) skips reading and embedding: plans for several seeds
    or budgets share one embedding.

    Raises DatagenError (naming the file and column) for a bad failures or training file, a k
    larger than the failures, or all-zero severities."""
    if embedded is None:
        embedded = embed_plan_failures(config, diagnose_backend)
    failures, encoder, weights, prompt_vectors = embedded.failures, embedded.encoder, embedded.weights, embedded.prompt_vectors
    expected, kinds = failures["expected"].to_list(), failures["kind"].to_list()
    clustering = cluster_failures(
        embedded.joint, embedded.labels, k=config.k, k_range=config.k_range, seed=seed, n_seeds=config.k_seeds, tolerance=config.k_tolerance
    )

    severity = failures["severity"].to_numpy()
    severity_weights = [float(severity[c.members].sum()) for c in clustering.clusters]
    try:
        budgets = allocate(severity_weights, budget)
    except ValueError as err:
        raise DatagenError(str(err), config.failures, config.severity_column) from None

    train, train_vectors = None, None
    if config.train is not None:
        train = read_train(config.train, config.text_column)
        train_vectors = encode(encoder, train["prompt"].to_list(), 64)

    checker = None
    if config.code_correction_template is not None and "code" in kinds and config.correction_share > 0:
        from datagen.steps.verify import PythonTestsVerifier

        try:
            checker = PythonTestsVerifier()
        except ValueError as err:  # no bubblewrap: code cannot be run safely
            raise DatagenError(str(err), config.failures, "tests") from None
    plans = []
    for cluster, weight, share in zip(clustering.clusters, severity_weights, budgets):
        neighbours: list[int] = []
        if train_vectors is not None:
            centroid = unit(prompt_vectors[cluster.members].mean(axis=0))
            neighbours = [int(i) for i in nearest(train_vectors, centroid, config.neighbours)]
        pool_size = max(config.seeds_per_cluster, math.ceil(cluster.size / 2))
        kind = Counter(kinds[i] for i in cluster.members).most_common(1)[0][0]
        skipped: dict[str, int] = {}
        if kind == "code":
            corrections, skipped = _code_correction_rows(cluster, failures, share, config.correction_share, checker)
        else:
            corrections = _correction_rows(cluster, expected, share, config.correction_share, config.correction_template is not None)
        plans.append(
            ClusterPlan(
                cluster=cluster,
                severity=weight / cluster.size,
                weight=weight,
                budget=share,
                corrections=corrections,
                pool=[int(i) for i in cluster.members[:pool_size]],
                neighbours=neighbours,
                kind=kind,
                not_corrected=skipped,
            )
        )
    return Plan(config, budget, failures, train, clustering, plans, weights)


__all__ = ["ClusterPlan", "Embedded", "Plan", "embed_plan_failures", "load_failures", "make_plan", "tag_agreement"]
