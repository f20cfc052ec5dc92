"""Degenerate model text: repetition loops, judge rationales that say nothing of their own, and
"revisions" that talk about revising instead of being the revised answer.

Every check tokenises with `datagen.text.normalize.tokens` (the one normalisation and tokenisation of
datagen: words, or one token per character in scripts written without spaces), so a Chinese or
Thai loop is found like an English one.

Repetition (`repetition`), over word n-grams of N_GRAM = 4 tokens:
- a text of fewer than MIN_TOKENS tokens is never repetitive (too short to tell);
- distinct-4 (distinct 4-grams / all 4-grams, Li et al. 2016, "A Diversity-Promoting Objective
  Function for Neural Conversation Models") below MIN_DISTINCT over the whole text; or
- distinct-4 below MIN_DISTINCT_TAIL over the last TAIL_TOKENS tokens: a loop the model fell into
  after a sound start (the usual shape of a text cut off at max_tokens).
Healthy text stays well above both: prose, numbered lists and code with repeated statements keep
distinct-4 above 0.8 because their lines differ in at least one token in every window of four; a
poem whose refrain comes back between verses stays above 0.6. A loop of period p repeated k times
has distinct-4 close to 1/k.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from datagen.text.normalize import tokenize, tokens

N_GRAM = 4
MIN_TOKENS = 24
MIN_DISTINCT = 0.4
TAIL_TOKENS = 120
MIN_DISTINCT_TAIL = 0.3
# A judge rationale that copies the candidate: this share of its 5-grams occurs in the candidate.
PARROT_NGRAM = 5
MAX_PARROT_SHARE = 0.6
MIN_RATIONALE_WORDS = 1
# A revision that restates the critique: this share of its 5-grams occurs in the critique.
MAX_CRITIQUE_SHARE = 0.6


@dataclass(frozen=True)
class Repetition:
    """Distinct-4 of the whole text and of its tail (None when too short to tell)."""

    tokens: int
    distinct: float | None
    distinct_tail: float | None

    @property
    def repetitive(self) -> bool:
        return (self.distinct is not None and self.distinct < MIN_DISTINCT) or (
            self.distinct_tail is not None and self.distinct_tail < MIN_DISTINCT_TAIL
        )


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(words: list[str], n: int = N_GRAM) -> float | None:
    """Distinct n-grams / n-grams of a token list (None when it has no n-gram)."""
    grams = ngrams(words, n)
    return len(set(grams)) / len(grams) if grams else None


def repetition(text: str | None) -> Repetition:
    """The repetition figures of one text (module docstring)."""
    return _repetition(tokens(text or ""))


def repetitive_series(texts: pl.Series) -> pl.Series:
    """`is_repetitive` of every text of a String Series (null: False), tokenised in one pass."""
    lists = tokenize(texts.cast(pl.String))
    return pl.Series(texts.name, [words is not None and _repetition(words).repetitive for words in lists.to_list()], dtype=pl.Boolean)


def _repetition(words: list[str]) -> Repetition:
    if len(words) < MIN_TOKENS:
        return Repetition(len(words), None, None)
    tail = distinct_n(words[-TAIL_TOKENS:]) if len(words) >= TAIL_TOKENS else None
    return Repetition(len(words), distinct_n(words), tail)


def is_repetitive(text: str | None) -> bool:
    """Whether the text is a repetition loop (module docstring for the thresholds)."""
    return repetition(text).repetitive


def overlap(text: str, source: str, n: int = PARROT_NGRAM) -> float:
    """Share of `text`'s n-grams that also occur in `source` (0 when text has none)."""
    grams = ngrams(tokens(text), n)
    if not grams:
        return 0.0
    present = set(ngrams(tokens(source), n))
    return sum(g in present for g in grams) / len(grams)


def rationale_problem(rationale: str | None, candidates: list[str], code: str, prompt: str | None = None) -> str | None:
    """Why a judge's rationale cannot stand behind a score, or None when it can:
    - it loops (`is_repetitive`);
    - it quotes the request's fence markers (`response-<code>`), which no reading of the
      rubric needs: the small-model failure "the response-<code> is a reference to the response-<code>";
    - it copies a candidate: at least MAX_PARROT_SHARE of its 5-grams are the candidate's;
    - it copies the prompt the same way (it restates the task instead of judging the answer);
    - it says nothing: no word at all.
    """
    text = rationale or ""
    if len(tokens(text)) < MIN_RATIONALE_WORDS:
        return "rationale says nothing"
    if is_repetitive(text):
        return "rationale is a repetition loop"
    if code and code.lower() in text.lower():
        return "rationale repeats the request's fence markers instead of judging"
    if len(ngrams(tokens(text), PARROT_NGRAM)) < 2:
        return None
    for candidate in candidates:
        if overlap(text, candidate) >= MAX_PARROT_SHARE:
            return "rationale copies the response instead of judging it"
    if prompt and overlap(text, prompt) >= MAX_PARROT_SHARE:
        return "rationale copies the prompt instead of judging the response"
    return None


# The opening of a text about revising a response rather than the revised response itself.
_OBJECT = r"(?:the |this |my |your |that )?(?:original |previous |initial |assistant'?s? )?(?:response|answer|reply|text)"
META_REVISION = re.compile(
    r"\A\W*(?:"
    rf"to (?:rewrite|revise|improve|address|fix|correct|update) {_OBJECT}"
    rf"|(?:i|we) (?:will|would|'ll|am going to|can|need to|should) (?:rewrite|revise|improve|change|modify|update|edit|fix|correct|address|make)\b"
    rf"|(?:here(?:'s| is) )?how (?:i|we) (?:would|will|can) (?:rewrite|revise|improve)"
    rf"|(?:the|my|this) revis(?:ed|ion)(?: response| answer| version)? (?:will|would|should|could|addresses|includes|removes|adds|changes|improves|focuses|keeps)\b"
    rf"|in (?:the|this|my) revis(?:ed|ion)\b"
    rf"|the original (?:response|answer|reply)\b"
    rf"|the critique\b"
    rf"|(?:based on|following|according to|in response to) the critique\b"
    r")",
    re.IGNORECASE,
)


def revision_problem(revision: str, critique: str | None, original: str | None) -> str | None:
    """Why a revision is not a revised answer, or None when it is one:
    - it describes the revision ("To rewrite the original response, I will ...", "The revised
      response should ...", "In the revision, ...": META_REVISION, at its start);
    - it restates the critique (at least MAX_CRITIQUE_SHARE of its 5-grams are the critique's);
    - it loops (`is_repetitive`) while the original did not.
    """
    if META_REVISION.match(revision):
        return "describes the revision instead of revising"
    if critique and (tokens(revision) == tokens(critique) or overlap(revision, critique) >= MAX_CRITIQUE_SHARE):
        return "repeats the critique"
    if is_repetitive(revision) and not is_repetitive(original):
        return "repetition loop"
    return None
