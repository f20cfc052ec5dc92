"""Final-answer extraction and equivalence for math-style outputs, on Hugging Face's math-verify.

Shared by the `math` verifier and by majority voting, so that both agree on what "the same
answer" means: "1/2", "0.5" and "\\frac{1}{2}" are one answer; an empty or non-numeric box is none.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

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


def extract_answer(text: str | None) -> Answer | None:
    """The final answer of a completion (\\boxed{}, "Answer:", else the last expression), or None."""
    if not text or not text.strip():
        return None
    try:
        parsed = parse(text, parsing_timeout=_timeout(2))
    except Exception:  # noqa: BLE001 - math-verify raises many parser errors; unparsable = no answer
        return None
    if not parsed:
        return None
    shown = parsed[-1] if isinstance(parsed[-1], str) else str(parsed[0])
    return Answer(tuple(parsed), shown)


def parse_reference(reference: str) -> Answer | None:
    """A reference answer as written in a template ("45", "3/8", "\\frac{1}{2}")."""
    return extract_answer(reference if "$" in reference or "\\" in reference else f"${reference}$") or extract_answer(reference)


def equivalent(reference: Answer, candidate: Answer) -> bool:
    try:
        return bool(verify(list(reference.parsed), list(candidate.parsed), timeout_seconds=_timeout(2)))
    except Exception:  # noqa: BLE001
        return False
