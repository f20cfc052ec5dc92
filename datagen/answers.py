"""Final-answer extraction and equivalence for math-style outputs, on Hugging Face's math-verify.

Shared by the `math` verifier and by majority voting, so that both agree on what "the same
answer" means: "1/2", "0.5" and "\\frac{1}{2}" are one answer; an empty or non-numeric box is none.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from latex2sympy2_extended.math_normalization import extract_boxed_content
from math_verify import parse, verify

# It warns on every call made without a timeout (see _timeout); the warning is not actionable.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _timeout(seconds: int) -> int | None:
    # math-verify enforces timeouts with signal.alarm, which only works on the main thread;
    # elsewhere it would raise and every answer would silently read as "none".
    return seconds if threading.current_thread() is threading.main_thread() else None


@dataclass(frozen=True)
class Answer:
    parsed: tuple[Any, ...]  # math-verify's parse result: (sympy expression, source string)
    text: str  # the extracted answer as written, for display and reports

    def __str__(self) -> str:
        return self.text


def _parse(text: str) -> Answer | None:
    try:
        parsed = parse(text, parsing_timeout=_timeout(2))
    except Exception:  # noqa: BLE001 - math-verify raises many parser errors; unparsable = no answer
        return None
    # math-verify falls back to the raw string when nothing parses: that is no answer at all.
    if not parsed or all(isinstance(item, str) for item in parsed):
        return None
    shown = parsed[-1] if isinstance(parsed[-1], str) else str(parsed[0])
    return Answer(tuple(parsed), shown)


def final_answer(text: str | None, require_box: bool = False) -> tuple[Answer | None, str | None, str | None]:
    """The final answer, its text as written, and why there is none.

    A boxed answer is the answer: when the text has a \\boxed{} (or \\fbox{}), only its content
    counts, so an empty or garbage box cannot be rescued by a number elsewhere in the text.
    Otherwise math-verify's own extraction applies ("Answer:", else the last expression).
    """
    text = text or ""
    if "\\boxed" in text or "\\fbox" in text:
        content = extract_boxed_content(text).strip()
        if not content:
            return None, None, "empty \\boxed{}"
        answer = _parse(f"\\boxed{{{content}}}")
        if answer is None:
            return None, content, f"unparsable \\boxed{{{content}}}"
        return answer, content, None
    if require_box:
        return None, None, "no \\boxed{} answer"
    if not text.strip():
        return None, None, "empty completion"
    answer = _parse(text)
    if answer is None:
        return None, None, "no final answer found"
    return answer, answer.text, None


def extract_answer(text: str | None) -> Answer | None:
    return final_answer(text)[0]


def parse_reference(reference: str) -> Answer | None:
    """A reference answer as written in a template ("45", "3/8", "\\frac{1}{2}")."""
    return _parse(reference if "$" in reference or "\\" in reference else f"${reference}$") or _parse(reference)


def equivalent(reference: Answer, candidate: Answer) -> bool:
    try:
        return bool(verify(list(reference.parsed), list(candidate.parsed), timeout_seconds=_timeout(2)))
    except Exception:  # noqa: BLE001
        return False
