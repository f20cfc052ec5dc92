"""Error clusters: failures embedded, grouped by k-means, named by their distinctive terms.

A failure is embedded as its prompt and its (wrong) output, each a unit vector, side by side: the
cosine of two failures is then the mean of their prompts' and their outputs' cosines, so that a
cluster is "this kind of question answered this kind of wrong way" rather than a topic alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from datagen.text.embeddings import encode

TERMS_PER_CLUSTER = 5
LABEL_TERMS = 3
# Words: letters only (numbers differ in every failure and name nothing), two or more.
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"


@dataclass
class Cluster:
    id: int
    members: np.ndarray  # failure row indices, most central first
    centrality: np.ndarray  # cosine of each member to the cluster's centroid, same order
    terms: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def label(self) -> str:
        return ", ".join(self.terms[:LABEL_TERMS]) or f"cluster {self.id}"


@dataclass
class Clustering:
    clusters: list[Cluster]
    assignment: np.ndarray  # cluster id of each failure row
    silhouettes: dict[int, float]  # k -> mean silhouette over the seeds, for each k tried; empty when k was given
    spread: dict[int, float] = field(default_factory=dict)  # k -> standard deviation of those silhouettes


def unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def embed_pairs(encoder, prompts: list[str], outputs: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(prompt vectors, joint vectors): the joint vector is [prompt, output] / sqrt(2), unit length."""
    prompt_vectors = encode(encoder, prompts, batch_size)
    output_vectors = encode(encoder, outputs, batch_size)
    return prompt_vectors, np.hstack([prompt_vectors, output_vectors]) / np.sqrt(2.0)


def kmeans_runs(vectors: np.ndarray, k: int, seeds: list[int]) -> list[tuple[float, np.ndarray]]:
    """(inertia, labels) of one k-means (10 initialisations, sklearn's best) per seed."""
    from sklearn.cluster import KMeans

    runs = []
    with warnings.catch_warnings():
        # Fewer distinct points than k: sklearn warns and still returns k labels; the caller copes.
        warnings.simplefilter("ignore")
        for s in seeds:
            model = KMeans(n_clusters=k, n_init=10, random_state=s).fit(vectors)
            runs.append((float(model.inertia_), model.labels_.astype(np.int64)))
    return runs


def kmeans(vectors: np.ndarray, k: int, seed: int, n_seeds: int = 1) -> np.ndarray:
    """Labels of the lowest-inertia k-means over seeds seed .. seed + n_seeds - 1."""
    return min(kmeans_runs(vectors, k, [seed + i for i in range(n_seeds)]), key=lambda run: run[0])[1]


def choose_k(
    vectors: np.ndarray, k_range: tuple[int, int], seed: int, n_seeds: int = 5, tolerance: float = 0.01
) -> tuple[np.ndarray, dict[int, float], dict[int, float]]:
    """(labels, mean silhouette per k, its standard deviation per k).

    The rule: for each k in k_range, k-means is run with `n_seeds` seeds (seed, seed + 1, ...; 10
    initialisations each) and the cosine silhouettes of the runs are averaged. The chosen k is the
    smallest one whose mean silhouette is within `tolerance` (absolute) of the best mean: on a flat
    curve the top is noise, and fewer clusters are easier to act on. Its labels are those of its
    lowest-inertia run. Averaging over seeds and taking the minimum inertia over all of them is
    what makes the choice, and the clusters, the same for other seeds (Rousseeuw 1987 for the
    silhouette; the tolerance rule is the "one standard error" idea of Hastie et al., ESL 7.10).
    Fewer than 3 distinct failures cannot be split meaningfully: one cluster.
    """
    from sklearn.metrics import silhouette_score

    distinct = len(np.unique(vectors.round(6), axis=0))
    lo, hi = k_range
    seeds = [seed + i for i in range(n_seeds)]
    means: dict[int, float] = {}
    spreads: dict[int, float] = {}
    best_runs: dict[int, np.ndarray] = {}
    for k in range(lo, min(hi, distinct - 1) + 1):
        runs = [(inertia, labels) for inertia, labels in kmeans_runs(vectors, k, seeds) if len(np.unique(labels)) >= 2]
        if not runs:
            continue
        scores = [float(silhouette_score(vectors, labels, metric="cosine")) for _, labels in runs]
        means[k] = round(float(np.mean(scores)), 4)
        spreads[k] = round(float(np.std(scores)), 4)
        best_runs[k] = min(runs, key=lambda run: run[0])[1]
    if not means:
        return np.zeros(len(vectors), dtype=np.int64), means, spreads
    top = max(means.values())
    chosen = min(k for k, score in means.items() if score >= top - tolerance)
    return best_runs[chosen], means, spreads


def distinctive_terms(documents: list[str], top: int = TERMS_PER_CLUSTER) -> list[list[str]]:
    """Class-based TF-IDF (as in BERTopic): each cluster's text is one document; a term scores
    its frequency in the cluster times log(1 + average words per cluster / its total frequency).
    With several clusters, a term found in every one of them distinguishes none and is left out
    (the "answer" that ends every output, say)."""
    from sklearn.feature_extraction.text import CountVectorizer

    try:
        counts = CountVectorizer(stop_words="english", token_pattern=TOKEN_PATTERN).fit(documents)
    except ValueError:  # nothing but stop words and numbers
        return [[] for _ in documents]
    matrix = counts.transform(documents).toarray().astype(np.float64)
    vocabulary = counts.get_feature_names_out()
    words = matrix.sum(axis=1, keepdims=True)
    tf = matrix / np.where(words == 0, 1, words)
    idf = np.log(1.0 + words.mean() / matrix.sum(axis=0))
    scores = tf * idf
    if len(documents) > 1:
        scores[:, (matrix > 0).all(axis=0)] = 0.0
    terms = []
    for row in scores:
        order = sorted(np.flatnonzero(row > 0), key=lambda j: (-row[j], vocabulary[j]))
        terms.append([str(vocabulary[j]) for j in order[:top]])
    return terms


def cluster_failures(
    vectors: np.ndarray, texts: list[str], *, k: int | None, k_range: tuple[int, int], seed: int,
    n_seeds: int = 5, tolerance: float = 0.01,
) -> Clustering:
    """Clusters numbered by size (largest first, then by first member), members most central first.
    k given: the lowest-inertia k-means over `n_seeds` seeds; else choose_k's rule."""
    n = len(vectors)
    spread: dict[int, float] = {}
    if k is not None:
        raw, silhouettes = kmeans(vectors, k, seed, n_seeds) if k > 1 else np.zeros(n, dtype=np.int64), {}
    else:
        raw, silhouettes, spread = choose_k(vectors, k_range, seed, n_seeds, tolerance)
    groups = [np.flatnonzero(raw == label) for label in np.unique(raw)]
    groups.sort(key=lambda rows: (-len(rows), rows[0]))
    clusters, assignment = [], np.empty(n, dtype=np.int64)
    for cid, rows in enumerate(groups):
        centroid = unit(vectors[rows].mean(axis=0))
        similarity = vectors[rows] @ centroid
        order = np.lexsort((rows, -similarity))
        clusters.append(Cluster(cid, rows[order], similarity[order].astype(np.float64)))
        assignment[rows] = cid
    for cluster, terms in zip(clusters, distinctive_terms([" ".join(texts[i] for i in c.members) for c in clusters])):
        cluster.terms = terms
    return Clustering(clusters, assignment, silhouettes, spread)


def nearest(candidates: np.ndarray, query: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` candidate vectors most cosine-similar to `query`, nearest first."""
    if count <= 0 or len(candidates) == 0:
        return np.empty(0, dtype=np.int64)
    similarity = candidates @ unit(query)
    return np.lexsort((np.arange(len(candidates)), -similarity))[:count]
