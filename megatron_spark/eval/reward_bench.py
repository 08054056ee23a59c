"""A user-supplied reward benchmark: judge items with known verdicts, one JSON object per line.

Two kinds of item, told apart by their fields::

    {"question": "...", "response": "...", "label": "correct" | "incorrect"}            pointwise
    {"question": "...", "response_a": "...", "response_b": "...", "label": "A" | "B"}  pairwise

``label`` is the truth (pointwise) or the better response (pairwise); labels are matched exactly.
An optional ``"id"`` names the item, otherwise it is ``<file stem>-<line>``. Other fields are
ignored. The whole file is validated before anything is returned: the first bad line raises a
UserError naming ``file:line``, the field and what was expected.

:func:`score_replies` scores the judge's replies: accuracy and the share of replies with a
parseable verdict (an accuracy of 0 with a parse rate of 0 means the judge never answered in the
verdict format, not that it judged wrongly), and one row per item for ``reward_bench.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from megatron_spark.data.datasets import read_jsonl
from megatron_spark.errors import UserError

Kind = Literal["pointwise", "pairwise"]

LABELS: dict[str, tuple[str, ...]] = {
    "pointwise": ("correct", "incorrect"),
    "pairwise": ("A", "B"),
}
"""Allowed labels per item kind."""


@dataclass(frozen=True)
class BenchItem:
    """One benchmark item, validated."""

    uid: str
    """The item's ``id``, or ``<file stem>-<line>`` when it has none; unique within the file."""
    kind: Kind
    """``pointwise``: judge one response; ``pairwise``: pick the better of two."""
    question: str
    """The problem the responses answer."""
    responses: tuple[str, ...]
    """One response (pointwise) or two, in slot order A, B (pairwise)."""
    label: str
    """``correct``/``incorrect`` (pointwise) or ``A``/``B`` (pairwise)."""


def _has(row: dict[str, Any], key: str) -> bool:
    return row.get(key) is not None


def _text(row: dict[str, Any], key: str, where: str) -> str:
    """A required non-empty string field."""
    if not _has(row, key):
        raise UserError(f"{where}: missing field '{key}' (a non-empty string)")
    value = row[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{where}: field '{key}' is empty, expected a non-empty string")
    return value


def _responses(row: dict[str, Any], where: str) -> tuple[Kind, tuple[str, ...]]:
    """The item's kind and responses: exactly one of ``response`` or ``response_a``+``response_b``."""
    pointwise = _has(row, "response")
    pairwise = [key for key in ("response_a", "response_b") if _has(row, key)]
    if pointwise and pairwise:
        raise UserError(
            f"{where}: field 'response' together with '{pairwise[0]}'; give either 'response' "
            f"(pointwise item) or 'response_a' and 'response_b' (pairwise item), not both"
        )
    if pointwise:
        return "pointwise", (_text(row, "response", where),)
    if not pairwise:
        raise UserError(
            f"{where}: missing field 'response' (pointwise item) or 'response_a' and 'response_b' "
            f"(pairwise item)"
        )
    return "pairwise", (_text(row, "response_a", where), _text(row, "response_b", where))


def _label(row: dict[str, Any], kind: Kind, where: str) -> str:
    allowed = LABELS[kind]
    listed = ", ".join(f"'{label}'" for label in allowed)
    if "label" not in row:
        raise UserError(f"{where}: missing field 'label' (one of {listed} for a {kind} item)")
    label = row["label"]
    if label not in allowed:  # exact match: "Correct" or "a" is refused, not guessed at
        shown = f"'{label}'" if isinstance(label, str) else repr(label)
        raise UserError(f"{where}: label {shown} is not one of {listed} ({kind} item)")
    return label


def row_to_item(row: Any, where: str, default_uid: str) -> BenchItem:
    """One validated line; ``where`` (``file:line``) names it in errors."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = _text(row, "question", where)
    kind, responses = _responses(row, where)
    label = _label(row, kind, where)
    uid = _text(row, "id", where) if "id" in row else default_uid
    return BenchItem(uid=uid, kind=kind, question=question, responses=responses, label=label)


def load_reward_bench(path: str | Path) -> list[BenchItem]:
    """Every item of a benchmark ``.jsonl`` file, in file order; raises on the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: reward benchmark file not found")
    items: list[BenchItem] = []
    first_line: dict[str, int] = {}
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        item = row_to_item(row, where, default_uid=f"{path.stem}-{line}")
        if item.uid in first_line:
            raise UserError(
                f"{where}: duplicate id '{item.uid}' (field 'id'), first used on line {first_line[item.uid]}"
            )
        first_line[item.uid] = line
        items.append(item)
    if not items:
        raise UserError(f"{path}: no items (the file has no non-blank lines)")
    return items


ITEMS_FILE = "reward_bench.jsonl"
"""Per-item results, written beside eval.json."""


@dataclass(frozen=True)
class JudgeQuery:
    """What the judge is asked for one item and which verdict is right."""

    prompt: str
    """The judge prompt (question and response(s) in a judge template)."""
    choices: tuple[str, str]
    """The verdicts the parser accepts (``Yes``/``No`` or ``A``/``B``)."""
    expected: str
    """The verdict the item's label calls for."""


def score_replies(
    items: Sequence[BenchItem], queries: Sequence[JudgeQuery], replies: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Summary and per-item rows of the judge's ``replies`` (one per item, in order).

    Summary, per kind present: ``<kind>_accuracy`` (parsed verdict equals the expected one, over
    the kind's items), ``<kind>_verdict_parse_rate`` (a verdict parsed, whatever it is) and
    ``<kind>_items``; over all items ``verdict_parse_rate``. Rows: ``id``, ``kind``, ``prompt``,
    ``label`` (the file's), ``expected`` verdict, ``reply``, ``verdict`` (parsed, or None) and
    ``correct``.
    """
    from megatron_spark.spark.verdict import parse_verdict

    rows = []
    for item, query, reply in zip(items, queries, replies, strict=True):
        verdict = parse_verdict(reply, query.choices)
        rows.append(
            {
                "id": item.uid,
                "kind": item.kind,
                "prompt": query.prompt,
                "label": item.label,
                "expected": query.expected,
                "reply": reply,
                "verdict": verdict,
                "correct": verdict == query.expected,
            }
        )
    summary: dict[str, Any] = {"items": len(rows)}
    for kind in LABELS:
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            summary[f"{kind}_accuracy"] = sum(r["correct"] for r in mine) / len(mine)
            summary[f"{kind}_verdict_parse_rate"] = sum(r["verdict"] is not None for r in mine) / len(mine)
            summary[f"{kind}_items"] = len(mine)
    summary["verdict_parse_rate"] = sum(r["verdict"] is not None for r in rows) / max(1, len(rows))
    return summary, rows
