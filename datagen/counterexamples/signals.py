"""What shows a failure, as text to embed: the prompt, the output, the expected answer, and where
output and expected differ; and the kind of a failure (code or not).

The difference is what separates failure *modes* from topics: two off-by-one failures on unrelated
tasks differ from their fixes by the same `+ 1`, two hallucinated APIs by one attribute name
replaced with another, two missing error checks by an added `try:` / `if ...: return None`.
It is computed on the code when both sides hold code (the last fenced block, else the text), as
`difflib.SequenceMatcher` opcodes over tokens (words and single punctuation marks) and over
stripped lines; and, for Python, as the classes of tokens that changed (keywords, dropped or added
identifiers, numbers, operators: datagen.counterexamples.structure), which say what kind of change
the fix is whatever its words.
"""

from __future__ import annotations

import ast
import difflib
import re

import numpy as np

from datagen.counterexamples.structure import change_vector
from datagen.steps.verify import fenced_blocks
from datagen.text.embeddings import encode
from datagen.text.python_syntax import parse_python

COMPONENTS = ("prompt", "output", "expected", "changed_tokens", "changed_lines", "change_kinds", "diagnosis")
VECTOR_COMPONENTS = ("change_kinds",)  # computed, not embedded: component_vectors
TOKEN = re.compile(r"\w+|[^\w\s]")
MAX_DIFF_TOKENS = 4000  # SequenceMatcher is quadratic in the worst case: longer sides are cut


def code_of(text: str | None) -> str:
    """The last fenced block of `text` (what a chat model's answer puts its program in; fences as
    datagen.steps.verify.fenced_blocks reads them: mid-line, ``` or ~~~, cut off), else the text."""
    text = text or ""
    blocks = [body for _, body in fenced_blocks(text) if body.strip()]
    return blocks[-1] if blocks else text


def looks_like_code(text: str | None) -> bool:
    """True when the text holds Python that defines a function or class (fenced or bare)."""
    source = code_of(text)
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for node in ast.walk(tree))


def is_code_failure(output: str | None, expected: str | None) -> bool:
    """A code failure: the expected answer is code, or (without one) the output is."""
    return looks_like_code(expected) if expected else looks_like_code(output)


def changed_tokens(output: str, expected: str) -> str:
    """Token-level difference: one line per changed span, `wrong: <tokens>` then `right: <tokens>`."""
    a = TOKEN.findall(code_of(output))[:MAX_DIFF_TOKENS]
    b = TOKEN.findall(code_of(expected))[:MAX_DIFF_TOKENS]
    lines = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if i2 > i1:
            lines.append("wrong: " + " ".join(a[i1:i2]))
        if j2 > j1:
            lines.append("right: " + " ".join(b[j1:j2]))
    return "\n".join(lines)


def changed_lines(output: str, expected: str) -> str:
    """Line-level difference (stripped, blank lines ignored): `wrong: <line>` / `right: <line>`."""
    a = [line.strip() for line in code_of(output).splitlines() if line.strip()][:MAX_DIFF_TOKENS]
    b = [line.strip() for line in code_of(expected).splitlines() if line.strip()][:MAX_DIFF_TOKENS]
    lines = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            lines += ["wrong: " + line for line in a[i1:i2]] + ["right: " + line for line in b[j1:j2]]
    return "\n".join(lines)


def component_texts(prompts: list[str], outputs: list[str], expected: list[str | None]) -> dict[str, list[str | None]]:
    """Each component's text per failure; None where it does not exist (no expected: no difference)."""
    return {
        "prompt": list(prompts),
        "output": [code_of(o) for o in outputs],
        "expected": [code_of(e) if e else None for e in expected],
        "changed_tokens": [changed_tokens(o, e) if e else None for o, e in zip(outputs, expected)],
        "changed_lines": [changed_lines(o, e) if e else None for o, e in zip(outputs, expected)],
    }


def component_vectors(outputs: list[str], expected: list[str | None]) -> dict[str, list[np.ndarray | None]]:
    """The computed (not embedded) components per failure: change_kinds (structure.change_vector of
    the output's and the expected's code); None without an expected or where either side is not Python."""
    return {"change_kinds": [change_vector(code_of(o), code_of(e)) if e else None for o, e in zip(outputs, expected)]}


def component_blocks(
    encoder, texts: dict[str, list[str | None]], weights: dict[str, float], computed: dict[str, list[np.ndarray | None]] | None = None,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Each used component's unit vectors, (n, d_c) per component, zero rows where a failure lacks it
    (or its text is empty); a component no failure has is left out. Text components are embedded
    with `encoder`; VECTOR_COMPONENTS come from `computed` (component_vectors).

    Raises ValueError when no component has a positive weight.
    """
    used = [c for c in COMPONENTS if weights.get(c, 0.0) > 0]
    if not used:
        raise ValueError("every embedding weight is zero: nothing to cluster on")
    blocks: dict[str, np.ndarray] = {}
    for component in used:
        if component in VECTOR_COMPONENTS:
            column = (computed or {}).get(component) or []
            present = [i for i, v in enumerate(column) if v is not None and np.any(v)]
            if not present:
                continue
            vectors = np.zeros((len(column), len(column[present[0]])), dtype=np.float32)
            vectors[present] = np.stack([column[i] for i in present])
        else:
            column = texts[component]
            present = [i for i, t in enumerate(column) if t and t.strip()]
            if not present:  # an all-zero block would change no cosine
                continue
            found = encode(encoder, [column[i] for i in present], batch_size)
            vectors = np.zeros((len(column), found.shape[1]), dtype=np.float32)
            vectors[present] = found
        blocks[component] = vectors
    return blocks


def join_blocks(blocks: dict[str, np.ndarray], weights: dict[str, float], n: int) -> np.ndarray:
    """The blocks times their weights, side by side, each row scaled to unit length: (n, sum d_c).
    The cosine of two failures is then the weighted mean of their components' cosines over what both have."""
    parts = [blocks[c] * np.float32(weights[c]) for c in COMPONENTS if c in blocks and weights.get(c, 0.0) > 0]
    if not parts:
        return np.zeros((n, 1), dtype=np.float32)
    joint = np.hstack(parts)
    norms = np.linalg.norm(joint, axis=1, keepdims=True)
    return joint / np.where(norms == 0, 1, norms)


def embed_failures(
    encoder, texts: dict[str, list[str | None]], weights: dict[str, float], batch_size: int = 64,
    computed: dict[str, list[np.ndarray | None]] | None = None,
) -> np.ndarray:
    """One unit vector per failure: each component's unit vector times its weight, side by side,
    the whole normalised (component_blocks, then join_blocks). A component a failure lacks (or whose
    text is empty) is a zero block, so the cosine of two failures is the weighted mean of their
    components' cosines over what both have.

    Shapes: texts[c] (or computed[c]) has n entries for each component c with a weight > 0;
    returns (n, sum of the used components' widths). Raises ValueError when no weight is positive.
    """
    n = len(next(iter(texts.values())))
    return join_blocks(component_blocks(encoder, texts, weights, computed, batch_size), weights, n)
