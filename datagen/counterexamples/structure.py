"""What *kind* of change turns a failing program into its fix, as a short fixed-length vector.

Text embeddings of a diff see words: a fix that also refactors (a new variable, a rewritten line)
reads like whatever its new words resemble, so a missing bounds check whose fix introduces
`words = sentence.split()` can land among the renamed API calls. Python's own tokenizer says
what class each token of the two programs is, whatever the task's topic and wording:

- keywords (`keyword.kwlist`, plus None/True/False): one dimension each, |count in fix - count in
  failure|. A missing guard adds `if`/`try`/`except`/`return`/`None`/`not`/`is`;
- identifiers the failing program uses and the fix does not: the fix had to stop calling something
  (a hallucinated function, method, module member or keyword argument). It counts double: it is the
  one change that alone says "called what is not there", whereas an identifier only the fix has is
  as often a new local of a refactor;
- identifiers only the fix uses;
- number literals only in the failure, and only in the fix (a changed bound, start or step);
- arithmetic and comparison operators, |count difference| summed (`+ 1` added, `<` -> `<=`).

So an off-by-one fix changes numbers and operators but no identifier, a missing-error-handling fix
adds keywords and keeps every identifier of the failure, an API fix drops an identifier. Each
count c enters as log(1 + c), so one large rewrite does not outweigh the kind of change, and the
vector is scaled to unit length (cosine geometry, like the embeddings it is placed beside; see
signals.embed_failures). Comparing changes by the classes of what changed rather than by their
text is the idea of fine-grained change classification (Fluri & Gall, "Classifying Change Types
for Qualifying Change Couplings", ICPC 2006), reduced here to lexical classes.

Python only: where either side does not tokenize as Python, there is no vector (None) and the
failure is compared by its other components alone.
"""

from __future__ import annotations

import io
import keyword
import tokenize
from collections import Counter

import numpy as np

KEYWORDS = tuple(sorted(set(keyword.kwlist) | {"None", "True", "False"}))
OPERATORS = frozenset("+ - * / // % ** < > <= >= == != += -= *= /= //=".split())
DROPPED_IDENTIFIER_WEIGHT = 2.0
COUNTS = (
    "identifiers_only_in_failure", "identifiers_only_in_fix", "numbers_only_in_failure", "numbers_only_in_fix", "operators_changed",
)
FEATURES = tuple(f"keyword_{k}" for k in KEYWORDS) + COUNTS


def _lexicon(source: str) -> tuple[Counter, set[str], Counter, Counter] | None:
    """(keyword counts, identifiers, number literal counts, operator counts); None where the
    source does not tokenize (unbalanced brackets, unterminated strings, bad indentation)."""
    keywords, identifiers, numbers, operators = Counter(), set(), Counter(), Counter()
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME:
                if token.string in KEYWORDS:
                    keywords[token.string] += 1
                else:
                    identifiers.add(token.string)
            elif token.type == tokenize.NUMBER:
                numbers[token.string] += 1
            elif token.type == tokenize.OP and token.string in OPERATORS:
                operators[token.string] += 1
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return keywords, identifiers, numbers, operators


def change_counts(failure: str, fix: str) -> dict[str, float] | None:
    """The raw counts by feature name (non-zero ones only); None when either side does not tokenize."""
    a, b = _lexicon(failure), _lexicon(fix)
    if a is None or b is None:
        return None
    (kw_a, ids_a, num_a, op_a), (kw_b, ids_b, num_b, op_b) = a, b
    counts: dict[str, float] = {f"keyword_{k}": abs(kw_b[k] - kw_a[k]) for k in KEYWORDS}
    counts["identifiers_only_in_failure"] = DROPPED_IDENTIFIER_WEIGHT * len(ids_a - ids_b)
    counts["identifiers_only_in_fix"] = len(ids_b - ids_a)
    counts["numbers_only_in_failure"] = sum((num_a - num_b).values())
    counts["numbers_only_in_fix"] = sum((num_b - num_a).values())
    counts["operators_changed"] = sum(abs(op_b[o] - op_a[o]) for o in OPERATORS)
    return {name: value for name, value in counts.items() if value}


def change_vector(failure: str, fix: str) -> np.ndarray | None:
    """A unit vector of len(FEATURES) float32 (log(1 + count) per feature, then scaled); the zero
    vector when nothing of these classes changed; None when either side does not tokenize."""
    counts = change_counts(failure, fix)
    if counts is None:
        return None
    vector = np.array([np.log1p(counts.get(name, 0.0)) for name in FEATURES], dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
