r"""Read a judge's boxed verdict and score it against the stored label.

The rule, deterministic and lenient only about decoration:

1. Take the content of every outermost balanced ``\boxed{...}`` (or ``\fbox{...}``); no box, no
   verdict. Text outside the boxes is ignored, so an unboxed "Yes" is no verdict.
2. Normalise each content until it stops changing: strip whitespace; unwrap a ``\text{}``,
   ``\textbf{}``, ``\mathrm{}``, ``\mathbf{}``, nested ``\boxed{}`` or bare ``{}`` group that
   spans all of it; strip parentheses, brackets, quotes, backticks and asterisks from both ends
   and '.', ':', '!' from the end. So ``(A)``, ``\text{B}``, ``**No**`` and ``A.`` read as bare
   words.
3. Compare the result case-insensitively with the choices. A box that does not name exactly one
   choice ("Yes or No", "A/B", "not A", "") voids the verdict, and so do boxes that name
   different choices; boxes that all name the same choice give that choice, spelled as in
   ``choices``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from megatron_spark.reward.extract import boxed_contents, closing_brace

# A group that may span a whole box's content: ``{``, or a wrapper command and its brace.
_WRAPPER = re.compile(r"(?:\\(?:text|textbf|mathrm|mathbf|boxed|fbox)\s*)?\{")
_EDGES = "()[]\"'`*"
_TRAILING = ".:!"


def _unwrap(content: str) -> str:
    """The inside of a group that spans all of ``content``, else ``content`` itself."""
    match = _WRAPPER.match(content)
    if match is None:
        return content
    close = closing_brace(content, match.end() - 1)
    # The group must close on the last character: "\text{A} B" is not wrapped.
    return content[match.end() : -1] if close == len(content) - 1 else content


def _normalise(content: str) -> str:
    while True:
        before = content
        content = _unwrap(content.strip()).strip().strip(_EDGES).rstrip(_TRAILING)
        if content == before:
            return content


def _check_choices(choices: Sequence[str]) -> dict[str, str]:
    """Case-folded choice -> choice; raises on an empty or case-insensitively repeated choice."""
    folded = {c.casefold(): c for c in choices}
    if len(folded) != len(choices) or "" in folded:
        raise ValueError(f"verdict choices must be non-empty and distinct ignoring case, got {list(choices)}")
    return folded


def parse_verdict(text: str, choices: Sequence[str]) -> str | None:
    r"""The choice that every ``\boxed{}`` in ``text`` names, or None (see the module rule).

    >>> parse_verdict(r"Mine: 6. Given: 6. \boxed{ (yes) }", ("Yes", "No"))
    'Yes'
    """
    folded = _check_choices(choices)
    named = {folded.get(_normalise(c).casefold()) for c in boxed_contents(text)}
    if len(named) != 1:
        return None  # no box, or boxes that disagree
    return named.pop()  # None when the one reading matches no choice


def verdict_reward(text: str, label: str, choices: Sequence[str]) -> float:
    """1.0 if ``text`` gives the verdict ``label`` (a member of ``choices``), else 0.0."""
    if label not in choices:
        raise ValueError(f"verdict label {label!r} is not one of the choices {list(choices)}")
    return 1.0 if parse_verdict(text, choices) == label else 0.0


def check_matches(text: str, check: str) -> bool:
    r"""Whether the reasoning of ``text`` before its last ``\boxed{`` is ``check``, whitespace
    folded (``spark.judge_reward: checked``); False without a box or with an empty ``check``.

    >>> check_matches(r"3*5=15. 15+7=22.  22 vs 22: equal. \boxed{Yes}", "3*5=15. 15+7=22. 22 vs 22: equal.")
    True
    """
    at = text.rfind("\\boxed{")
    return bool(check.split()) and at >= 0 and text[:at].split() == check.split()


def judge_reward(text: str, label: str, choices: Sequence[str], check: str = "") -> float:
    """:func:`verdict_reward`, and 0.0 unless ``text``'s check is ``check`` when one is given."""
    reward = verdict_reward(text, label, choices)
    return reward if not check or check_matches(text, check) else 0.0
