"""Pull the final answer out of a text: the content of ``\\boxed{...}``, or GSM8K's ``#### N``."""

from __future__ import annotations

import re
from typing import Literal

BoxChoice = Literal["last", "first"]

# ``\boxed{``, ``\boxed {`` and ``\fbox{``; the brace is where the content starts.
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def closing_brace(text: str, open_at: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``open_at``, or None if it never closes.

    Escaped braces (``\\{``, ``\\}``) do not count.
    """
    depth, i = 0, open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every outermost balanced box's content in ``text``, in order.

    ``text[start:end]`` is the content between the braces, unstripped. A box nested in another
    belongs to the outer one's content; a box that never closes is skipped and the search goes
    on after its opening brace.
    """
    spans, start = [], 0
    while (match := _BOX_OPEN.search(text, start)) is not None:
        open_at = match.end() - 1
        close_at = closing_brace(text, open_at)
        if close_at is None:
            start = match.end()
            continue
        spans.append((open_at + 1, close_at))
        start = close_at + 1
    return spans


def boxed_contents(text: str) -> list[str]:
    """Contents of every outermost balanced box, in order (whitespace stripped; see ``boxed_spans``)."""
    return [text[start:end].strip() for start, end in boxed_spans(text)]


def extract_boxed(text: str, which: BoxChoice = "last") -> str | None:
    """The content of the last (or first) balanced ``\\boxed{...}`` in ``text``; None if none.

    ``\\boxed{}`` gives the empty string, which every verifier counts as wrong.
    """
    contents = boxed_contents(text)
    if not contents:
        return None
    return contents[-1] if which == "last" else contents[0]


# GSM8K's final-answer line: "#### 72" (the last one counts).
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def extract_gsm8k(text: str) -> str | None:
    """The answer after the last ``####`` (GSM8K's final-answer marker), stripped, with thousands
    separators dropped (``1,600`` -> ``1600``); None when there is no ``####`` or nothing follows it."""
    matches = _HASHES.findall(text)
    if not matches:
        return None
    answer = _THOUSANDS.sub("", matches[-1].strip())
    return answer or None
