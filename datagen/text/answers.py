"""Final-answer extraction and equivalence for math-style outputs, on Hugging Face's math-verify.

The one answer parser of datagen: the `math` verifier, majority voting and the counterexample
corrections all use it, so they agree on what "the same answer" means. Rules:
- the last `\\boxed{}` (or `\\fbox{}`) of a completion is its final answer: earlier boxes are
  drafts ("\\boxed{5}, but that is wrong; the answer is \\boxed{7}" answers 7), and an empty or
  unparsable last box is no answer, never rescued by a number elsewhere; without a box,
  math-verify's own extraction applies ("final answer is", "Answer:", else the last expression);
- a reference is one whole LaTeX expression, with or without `$`: `2\\sqrt{2}` is 2*sqrt(2) and
  `-2\\pi` is -2*pi (not their leading number), `\\frac{3}{8}`, `3/8` and `0.375` are one value;
- before math-verify sees an answer (`prepare`): full-width digits and signs and the minus sign
  U+2212 become ASCII; no-break, figure, thin and narrow no-break spaces read as LaTeX's `\\,`,
  other Unicode spaces as spaces; digits grouped by threes with a thin space or another spacing
  (`1\\,200`, `1\\ 200`, `1{,}200`, U+2009, U+202F, and in a box or a reference also `1~200`
  and `1 200`) are one number (1200), never a product or a mixed number; a degree sign (`°`,
  `\\degree`, `^\\circ`, `^{\\circ}`) and the temperature scale after it (`C`, `F`, `K`) are
  dropped (`4^\\circ C` is 4);
- units written as `\\text{cm}` / `\\mbox{ m}` / `\\mathrm{kg}`, common unit words and percent
  signs are handled by math-verify's own LaTeX normalisation (`NormalizationConfig(units=True)`,
  its default for LaTeX extraction): `5\\text{ cm}` is 5 and `50\\%` equals both 50 and 0.5.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

import sympy
from latex2sympy2_extended.math_normalization import extract_boxed_content
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

# It warns on every call made without a timeout (see _timeout); the warning is not actionable.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# math-verify's own extraction (its defaults, spelled out): LaTeX (boxed, $...$, \(...\)) with its
# normalisation of units, percent and malformed operators, then plain expressions.
EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())

# What math-verify does not do itself. Separators between groups of three digits; a plain space
# only between exactly-three-digit groups after a 1-3 digit head, as in SI style ("1 200 000").
_GROUP_SEPARATOR = r"(?:\\[,;:!] ?|\\ |\\(?:thinspace|medspace|thickspace|nobreakspace)(?: |\{\})?|\{,\}|~| )"
_DIGIT_GROUPS = re.compile(r"(?<![\d.,])(\d{1,3})((?:" + _GROUP_SEPARATOR + r"\d{3})+)(?!\d)")
_GROUP_SPLIT = re.compile(_GROUP_SEPARATOR)
# In running text a plain space or ~ between numbers is more often a list than a digit group
# ("2 100-dollar bills"): there only LaTeX spacing commands and thin spaces group digits.
_LATEX_GROUP_SEPARATOR = _GROUP_SEPARATOR.replace("|~| )", ")")
_DIGIT_GROUPS_IN_TEXT = re.compile(r"(?<![\d.,])(\d{1,3})((?:" + _LATEX_GROUP_SEPARATOR + r"\d{3})+)(?!\d)")
# Spaces used between digit groups (no-break, figure, thin, narrow no-break) read as LaTeX's \,.
_GROUP_SPACES = {"\u00a0", "\u2007", "\u2009", "\u202f"}
_DEGREE = re.compile(
    r"\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\degree|°)"  # the degree mark
    r"(?:(?:\s|\\[,;: ])*(?:\\(?:text|mathrm|mbox|rm)\s*\{\s*[CFK]\s*\}|[CFK](?![A-Za-z])))?"  # and its scale
)


def _timeout(seconds: int) -> int | None:
    # math-verify enforces timeouts with signal.alarm, which only works on the main thread;
    # elsewhere it would raise and every answer would silently read as "none".
    return seconds if threading.current_thread() is threading.main_thread() else None


def _plain_char(ch: str) -> str:
    if ch in _GROUP_SPACES:
        return "\\,"
    if unicodedata.category(ch) == "Zs":
        return " "
    if ch == "\u2212":  # minus sign
        return "-"
    if "\uff01" <= ch <= "\uff5e":  # full-width ASCII forms
        return chr(ord(ch) - 0xFEE0)
    return ch


def prepare(text: str, answer_only: bool = True) -> str:
    """What datagen does to an answer's text before math-verify parses it (module docstring):
    plain spaces and ASCII forms, digit groups joined, degree marks dropped. `answer_only`: the
    text is one answer (a box's content, a reference), where a plain space or ~ between digit
    groups is a thousands separator too; in running text only LaTeX spacing and thin spaces are.
    Superscript digits and other compatibility characters are left to math-verify (NFKC would
    turn "3²" into "32")."""
    if not text.isascii():
        text = "".join(_plain_char(ch) for ch in text)
    text = _DEGREE.sub("", text)
    groups = _DIGIT_GROUPS if answer_only else _DIGIT_GROUPS_IN_TEXT
    return groups.sub(lambda m: m.group(1) + "".join(_GROUP_SPLIT.split(m.group(2))), text)


@dataclass(frozen=True)
class Answer:
    """A parsed answer. `parsed`: math-verify's parse result (sympy expression, source string);
    `text`: the extracted answer as written, for display, reports and vote classes."""

    parsed: tuple[Any, ...]
    text: str

    def __str__(self) -> str:
        return self.text


def _parse(text: str) -> Answer | None:
    try:
        parsed = parse(text, extraction_config=EXTRACTION, parsing_timeout=_timeout(2))
    except Exception:  # noqa: BLE001 - math-verify raises many parser errors; unparsable = no answer
        return None
    # math-verify falls back to the raw string when nothing parses: that is no answer at all.
    if not parsed or all(isinstance(item, str) for item in parsed):
        return None
    shown = parsed[-1] if isinstance(parsed[-1], str) else str(parsed[0])
    return Answer(tuple(parsed), shown)


def last_box(text: str) -> str | None:
    """The content of the last \\boxed{} / \\fbox{} of the text (stripped; "" for an empty box),
    or None when there is none. Braces are matched by math-verify's own box extraction."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    return extract_boxed_content(text[start:], mode="last").strip()


def _parse_box(content: str) -> Answer | None:
    """A box's content parsed as one LaTeX expression (math-verify's boxed extraction)."""
    return _parse(f"\\boxed{{{prepare(content)}}}")


def final_answer(text: str | None, require_box: bool = False) -> tuple[Answer | None, str | None, str | None]:
    """The final answer, its text as written, and why there is none (module docstring's rules).

    Returns (answer, shown, problem): answer None means no answer, and problem says why ("empty
    \\boxed{}", "unparsable \\boxed{...}", "no \\boxed{} answer", "empty completion", "no final
    answer found"); shown is the extracted text when there is one."""
    text = text or ""
    content = last_box(text)
    if content is not None:
        if not content:
            return None, None, "empty \\boxed{}"
        answer = _parse_box(content)
        if answer is None:
            return None, content, f"unparsable \\boxed{{{content}}}"
        return answer, content, None
    if require_box:
        return None, None, "no \\boxed{} answer"
    if not text.strip():
        return None, None, "empty completion"
    answer = _parse(prepare(text, answer_only=False))
    if answer is None:
        return None, None, "no final answer found"
    return answer, answer.text, None


def extract_answer(text: str | None) -> Answer | None:
    """The final answer of a completion (see `final_answer`), or None."""
    return final_answer(text)[0]


def parse_reference(reference: str) -> Answer | None:
    """A reference answer as written in a template or data set ("45", "3/8", "\\frac{1}{2}",
    "2\\sqrt{2}", "$-2\\pi$", "\\boxed{7}"), read as one whole expression; None when it does not
    parse as one."""
    text = reference.strip()
    if last_box(text) is not None:
        text = last_box(text) or ""
    elif len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return _parse_box(text) if text else None


def _same_value(a: Answer, b: Answer) -> bool:
    """Equal by value alone. `equivalent` also counts equal source strings as equal (math-verify
    compares them too), which would take "1 (1)" read as 2 for "1 (1)" read as 1."""
    values_a = [item for item in a.parsed if not isinstance(item, str)]
    values_b = [item for item in b.parsed if not isinstance(item, str)]
    try:
        return bool(values_a and values_b and verify(values_a, values_b, timeout_seconds=_timeout(2)))
    except Exception:  # noqa: BLE001
        return False


def _latex(answer: Answer) -> str | None:
    value = next((item for item in answer.parsed if not isinstance(item, str)), None)
    try:
        return sympy.latex(value) if value is not None else None
    except Exception:  # noqa: BLE001 - a value sympy cannot print has no LaTeX form here
        return None


def reference_text(answer: Answer) -> str | None:
    """The answer written so that `parse_reference` reads it back as the same value: its text as
    extracted when that reads back so, else sympy's LaTeX of its value; None when neither does.

    An answer extracted from running text is read by other rules than a reference: "so the
    answer is 1 (1)." answers 1, while the reference "1 (1)" is the mixed number 2. A vote's
    answers are written with this, so that a later stage reading them as its reference (verify's
    `reference_column: vote_majority`) means the answer the vote counted."""
    for text in (answer.text, _latex(answer)):
        if text:
            back = parse_reference(text)
            if back is not None and _same_value(back, answer):
                return text
    return None


def equivalent(reference: Answer, candidate: Answer) -> bool:
    """Whether math-verify finds the two answers equal (numerically, symbolically, as sets or
    intervals); False when it cannot decide in time."""
    try:
        return bool(verify(list(reference.parsed), list(candidate.parsed), timeout_seconds=_timeout(2)))
    except Exception:  # noqa: BLE001
        return False
