"""From the recipe's input section to a plan: the failures in clusters, each with its share of the
budget, the failures it re-solves, the pool its counterexample prompts draw seeds from, and the
training examples nearest to it."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from datagen.counterexamples.allocate import allocate
from datagen.counterexamples.clusters import Cluster, Clustering, cluster_failures, embed_pairs, nearest, unit
from datagen.counterexamples.config import InputConfig
from datagen.counterexamples.failures import read_failures, read_train
from datagen.embeddings import encode, load_encoder
from datagen.errors import DatagenError

PLAN_CACHE_SIZE = 4


@dataclass
class ClusterPlan:
    cluster: Cluster
    severity: float  # mean severity of the members
    weight: float  # size x mean severity: what the budget is split by
    budget: int  # prompts: corrections + new problems
    corrections: list[int]  # failure rows re-solved (each has an `expected`), most central first
    pool: list[int]  # failure rows the counterexample prompts draw their seeds from
    neighbours: list[int]  # training rows nearest the cluster, nearest first

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

    def report(self) -> dict[str, Any]:
        ids = self.failures["failure_id"].to_list()
        tags = self.failures["tag"].to_list()
        clusters = []
        for p in self.clusters:
            c = p.cluster
            entry: dict[str, Any] = {
                "id": c.id,
                "label": c.label,
                "terms": c.terms,
                "size": c.size,
                "severity": round(p.severity, 4),
                "weight": round(p.weight, 4),
                "budget": p.budget,
                "corrections": len(p.corrections),
                "new_problems": p.new_problems,
                "central": [ids[i] for i in c.members[: self.config.seeds_per_cluster]],
            }
            counted = Counter(tags[i] for i in c.members if tags[i] is not None)
            if counted:
                entry["tags"] = dict(counted.most_common())
            clusters.append(entry)
        return {
            "failures": self.failures.height,
            "budget": self.budget,
            "k": len(self.clusters),
            "k_chosen_by": "given" if self.config.k is not None else "silhouette",
            "silhouette": self.clustering.silhouettes,
            "clusters": clusters,
        }


def _correction_rows(cluster: Cluster, expected: list[str | None], budget: int, share: float, enabled: bool) -> list[int]:
    if not enabled:
        return []
    verifiable = [int(i) for i in cluster.members if expected[i] is not None]
    wanted = math.floor(budget * share + 0.5)
    return verifiable[: min(wanted, len(verifiable))]


def make_plan(config: InputConfig, budget: int, seed: int) -> Plan:
    failures = read_failures(config.failures, config.text_column, config.severity_column, config.severity_required)
    if config.k is not None and config.k > failures.height:
        raise DatagenError(f"k ({config.k}) is larger than the number of failures ({failures.height})", config.failures, "input.k")
    encoder = load_encoder(config.embedding_model)
    prompts, outputs = failures["prompt"].to_list(), failures["output"].to_list()
    prompt_vectors, joint = embed_pairs(encoder, prompts, outputs)
    texts = [f"{p}\n{o}" for p, o in zip(prompts, outputs)]
    clustering = cluster_failures(joint, texts, k=config.k, k_range=config.k_range, seed=seed)

    severity = failures["severity"].to_numpy()
    weights = [float(severity[c.members].sum()) for c in clustering.clusters]
    try:
        budgets = allocate(weights, budget)
    except ValueError as err:
        raise DatagenError(str(err), config.failures, config.severity_column) from None

    train, train_vectors = None, None
    if config.train is not None:
        train = read_train(config.train, config.text_column)
        train_vectors = encode(encoder, train["prompt"].to_list(), 64)

    expected = failures["expected"].to_list()
    plans = []
    for cluster, weight, share in zip(clustering.clusters, weights, budgets):
        neighbours: list[int] = []
        if train_vectors is not None:
            centroid = unit(prompt_vectors[cluster.members].mean(axis=0))
            neighbours = [int(i) for i in nearest(train_vectors, centroid, config.neighbours)]
        pool_size = max(config.seeds_per_cluster, math.ceil(cluster.size / 2))
        plans.append(
            ClusterPlan(
                cluster=cluster,
                severity=weight / cluster.size,
                weight=weight,
                budget=share,
                corrections=_correction_rows(cluster, expected, share, config.correction_share, config.correction_template is not None),
                pool=[int(i) for i in cluster.members[:pool_size]],
                neighbours=neighbours,
            )
        )
    return Plan(config, budget, failures, train, clustering, plans)


def _digest(path: Path) -> str:
    if not path.is_file():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()


_plans: dict[tuple, Plan] = {}


def plan_for(config: InputConfig, budget: int, seed: int) -> Plan:
    """make_plan, remembered for the same config, budget, seed and file contents: the expansion
    and the counterexample stage's report of one run share one clustering."""
    key = (config.model_dump_json(), budget, seed, tuple(_digest(p) for p in config.files()))
    if key not in _plans:
        plan = make_plan(config, budget, seed)
        while len(_plans) >= PLAN_CACHE_SIZE:
            _plans.pop(next(iter(_plans)))
        _plans[key] = plan
    return _plans[key]


__all__ = ["ClusterPlan", "Plan", "make_plan", "plan_for"]
