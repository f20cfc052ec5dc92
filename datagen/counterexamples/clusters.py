"""Error clusters: failures embedded, grouped by k-means, named by their distinctive terms.

A failure is embedded as its prompt and its (wrong) output, each a unit vector, side by side: the
cosine of two failures is then the mean of their prompts' and their outputs' cosines, so that a
cluster is "this kind of question answered this kind of wrong way" rather than a topic alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from datagen.embeddings import encode

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
    silhouettes: dict[int, float]  # k -> silhouette, for each k tried; empty when k was given


def unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def embed_pairs(encoder, prompts: list[str], outputs: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(prompt vectors, joint vectors): the joint vector is [prompt, output] / sqrt(2), unit length."""
    prompt_vectors = encode(encoder, prompts, batch_size)
    output_vectors = encode(encoder, outputs, batch_size)
    return prompt_vectors, np.hstack([prompt_vectors, output_vectors]) / np.sqrt(2.0)


def kmeans(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        # Fewer distinct points than k: sklearn warns and still returns k labels; the caller copes.
        warnings.simplefilter("ignore")
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors)


def choose_k(vectors: np.ndarray, k_range: tuple[int, int], seed: int) -> tuple[np.ndarray, dict[int, float]]:
    """Labels of the k in k_range with the highest cosine silhouette (the smaller k on ties).
    Fewer than 3 distinct failures cannot be split meaningfully: one cluster."""
    from sklearn.metrics import silhouette_score

    distinct = len(np.unique(vectors.round(6), axis=0))
    lo, hi = k_range
    scores: dict[int, float] = {}
    best: tuple[float, np.ndarray] | None = None
    for k in range(lo, min(hi, distinct - 1) + 1):
        labels = kmeans(vectors, k, seed)
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = round(float(silhouette_score(vectors, labels, metric="cosine")), 4)
        if best is None or scores[k] > best[0]:
            best = (scores[k], labels)
    if best is None:
        return np.zeros(len(vectors), dtype=np.int64), scores
    return best[1], scores


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
    vectors: np.ndarray, texts: list[str], *, k: int | None, k_range: tuple[int, int], seed: int
) -> Clustering:
    """Clusters numbered by size (largest first, then by first member), members most central first."""
    n = len(vectors)
    if k is not None:
        raw, silhouettes = kmeans(vectors, k, seed) if k > 1 else np.zeros(n, dtype=np.int64), {}
    else:
        raw, silhouettes = choose_k(vectors, k_range, seed)
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
    return Clustering(clusters, assignment, silhouettes)


def nearest(candidates: np.ndarray, query: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` candidate vectors most cosine-similar to `query`, nearest first."""
    if count <= 0 or len(candidates) == 0:
        return np.empty(0, dtype=np.int64)
    similarity = candidates @ unit(query)
    return np.lexsort((np.arange(len(candidates)), -similarity))[:count]
