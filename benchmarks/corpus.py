"""Real-ish documents with planted near-duplicates, reproducible from a seed.

Sentences are the docstrings of Python's own standard library: real English with real phrase
repetition, and the same text on every machine with the same Python minor version, so no
download is needed. A document is 4-10 random sentences (about 110 words). Of the documents:
- `near` are near-duplicates of an earlier document: word edits (substitute, delete, insert,
  swap) at a rate drawn so that their Jaccard similarity straddles the usual 0.8 threshold, plus
  case and punctuation changes that text normalization removes;
- `partial` share about half the sentences of an earlier one: hard negatives, well below 0.8;
- the rest are fresh draws.
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from pathlib import Path

_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@functools.lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Distinct prose sentences (6-60 words, mostly letters) from the stdlib's docstrings, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if _SKIP & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            for paragraph in re.split(r"\n\s*\n", doc or ""):
                for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
                    words = sentence.split()
                    if 6 <= len(words) <= 60 and sum(c.isalpha() for c in sentence) > 0.7 * len(sentence):
                        found.add(sentence)
    return tuple(sorted(found))


def _edit(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    words = text.split()
    # About 0-6 word edits per 100 words: with 5-word shingles that spans Jaccard ~0.6 to 1.0.
    edits = round(rng.uniform(0, 0.06) * len(words))
    for _ in range(edits):
        op = rng.randrange(4)
        i = rng.randrange(len(words))
        if op == 0:
            words[i] = rng.choice(vocabulary)
        elif op == 1 and len(words) > 10:
            del words[i]
        elif op == 2:
            words.insert(i, rng.choice(vocabulary))
        elif i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
    for _ in range(rng.randrange(3)):  # cosmetic: normalization makes these invisible
        i = rng.randrange(len(words))
        words[i] = words[i].upper() if rng.random() < 0.5 else words[i] + ","
    return " ".join(words)


def documents(n: int, seed: int = 0, near: float = 0.2, partial: float = 0.1, sentences_per_doc: tuple[int, int] = (4, 10)) -> list[str]:
    pool = sentences()
    rng = random.Random(seed)
    vocabulary = _vocabulary()
    parts: list[list[str]] = []
    texts: list[str] = []
    lo, hi = sentences_per_doc
    for _ in range(n):
        roll = rng.random()
        if texts and roll < near:
            source = rng.randrange(len(texts))
            parts.append(parts[source])
            texts.append(_edit(texts[source], rng, vocabulary))
            continue
        if texts and roll < near + partial:
            chosen = list(parts[rng.randrange(len(parts))])
            for i in rng.sample(range(len(chosen)), k=max(1, len(chosen) // 2)):
                chosen[i] = rng.choice(pool)
        else:
            chosen = [rng.choice(pool) for _ in range(rng.randint(lo, hi))]
        parts.append(chosen)
        texts.append(" ".join(chosen))
    return texts


def completion(key: str, near: float = 0.2, bases: int = 5000, sentences_per_text: tuple[int, int] = (2, 6)) -> str:
    """One model-output-like text, a pure function of `key` (so any number can be made without
    holding them): 2-6 random sentences. A `near` fraction are edited copies of one of `bases`
    shared texts, so near-duplicates recur across prompts, as in a collapsing generator."""
    pool = sentences()
    rng = random.Random(key)
    if rng.random() < near:
        base = completion(f"base:{rng.randrange(bases)}", 0.0, bases, sentences_per_text)
        return _edit(base, rng, _vocabulary())
    lo, hi = sentences_per_text
    return " ".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))


@functools.lru_cache(maxsize=1)
def _vocabulary() -> list[str]:
    return sorted({w for s in sentences()[:2000] for w in s.split() if w.isalpha()})
