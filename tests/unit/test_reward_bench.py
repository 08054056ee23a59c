"""Reward benchmark files: a mixed file loads item by item; every bad line is refused with its
file, line and field, and nothing is returned."""

import json

import pytest

from megatron_spark.errors import UserError
from megatron_spark.eval.reward_bench import BenchItem, load_reward_bench


def _write(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


POINT = {"question": "1+1?", "response": "\\boxed{2}", "label": "correct"}
PAIR = {"question": "2+2?", "response_a": "\\boxed{5}", "response_b": "\\boxed{4}", "label": "B"}


def test_mixed_file_loads_with_kinds_labels_and_responses(tmp_path):
    rows = [
        POINT,
        "",  # blank lines are skipped but counted
        {**PAIR, "id": "pair-one", "subset": "math"},  # unknown fields are ignored
        {"question": "3?", "response": "\\boxed{4}", "label": "incorrect"},
        {"question": "q", "response_a": "x", "response_b": "y", "label": "A"},
    ]
    items = load_reward_bench(_write(tmp_path / "bench.jsonl", rows))
    assert items == [
        BenchItem("bench-1", "pointwise", "1+1?", ("\\boxed{2}",), "correct"),
        BenchItem("pair-one", "pairwise", "2+2?", ("\\boxed{5}", "\\boxed{4}"), "B"),
        BenchItem("bench-4", "pointwise", "3?", ("\\boxed{4}",), "incorrect"),
        BenchItem("bench-5", "pairwise", "q", ("x", "y"), "A"),
    ]


def test_accepts_a_str_path(tmp_path):
    path = _write(tmp_path / "b.jsonl", [POINT])
    assert [item.uid for item in load_reward_bench(str(path))] == ["b-1"]


BAD = [
    # (rows, line, field, message fragment)
    ([POINT, '{"question": "a", '], 2, "", "invalid JSON"),
    ([POINT, "[1, 2]"], 2, "", "expected a JSON object, got list"),
    ([{"response": "r", "label": "correct"}], 1, "question", "missing field 'question'"),
    ([{**POINT, "question": "  "}], 1, "question", "field 'question' is empty"),
    ([{**POINT, "question": 3}], 1, "question", "field 'question' must be a string, got int"),
    ([{"question": "q", "label": "correct"}], 1, "response", "missing field 'response' (pointwise item) or"),
    ([{**POINT, "response_a": "a"}], 1, "response_a", "not both"),
    ([{**PAIR, "response": "r"}], 1, "response", "not both"),
    ([{"question": "q", "response_a": "a", "label": "A"}], 1, "response_b", "missing field 'response_b'"),
    ([{**POINT, "response": ""}], 1, "response", "field 'response' is empty"),
    ([{**PAIR, "response_a": "\n"}], 1, "response_a", "field 'response_a' is empty"),
    ([{**PAIR, "response_b": ""}], 1, "response_b", "field 'response_b' is empty"),
    ([{k: v for k, v in POINT.items() if k != "label"}], 1, "label", "missing field 'label'"),
    (
        [POINT, PAIR, {**POINT, "label": "maybe"}],
        3,
        "label",
        "label 'maybe' is not one of 'correct', 'incorrect' (pointwise item)",
    ),
    ([{**POINT, "label": "A"}], 1, "label", "label 'A' is not one of 'correct', 'incorrect'"),
    ([{**PAIR, "label": "correct"}], 1, "label", "label 'correct' is not one of 'A', 'B' (pairwise item)"),
    ([{**PAIR, "label": "b"}], 1, "label", "label 'b' is not one of 'A', 'B'"),
    ([{**PAIR, "label": 1}], 1, "label", "label 1 is not one of 'A', 'B'"),
    ([{**POINT, "id": ""}], 1, "id", "field 'id' is empty"),
    (
        [{**POINT, "id": "x"}, {**PAIR, "id": "x"}],
        2,
        "id",
        "duplicate id 'x' (field 'id'), first used on line 1",
    ),
    # an explicit id may not take the default id of a later line
    ([{**POINT, "id": "bad-2"}, PAIR], 2, "id", "duplicate id 'bad-2'"),
]


@pytest.mark.parametrize("rows,line,field,message", BAD)
def test_bad_line_names_file_line_and_field(tmp_path, rows, line, field, message):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as e:
        load_reward_bench(path)
    text = str(e.value)
    assert f"bad.jsonl:{line}:" in text
    assert field in text and message in text
    assert "\n" not in text


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(POINT).encode() + b"\n" + b'{"question": "\xff"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: invalid UTF-8"):
        load_reward_bench(path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_file_without_items_is_refused(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=r"empty\.jsonl: no items"):
        load_reward_bench(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"absent\.jsonl: reward benchmark file not found"):
        load_reward_bench(tmp_path / "absent.jsonl")


def test_scores_report_the_verdict_parse_rate_and_one_row_per_item(tmp_path):
    from megatron_spark.eval.reward_bench import JudgeQuery, score_replies

    items = load_reward_bench(
        _write(tmp_path / "b.jsonl", [POINT, {**POINT, "label": "incorrect"}, PAIR, {**PAIR, "label": "A"}])
    )
    queries = [
        JudgeQuery("p1", ("Yes", "No"), "Yes"),
        JudgeQuery("p2", ("Yes", "No"), "No"),
        JudgeQuery("p3", ("A", "B"), "B"),
        JudgeQuery("p4", ("A", "B"), "A"),
    ]
    replies = ["\\boxed{Yes}", "It is right.", "\\boxed{A}", "\\boxed{A or B}"]
    summary, rows = score_replies(items, queries, replies)
    assert summary == {
        "items": 4,
        "pointwise_accuracy": 0.5,
        "pointwise_verdict_parse_rate": 0.5,
        "pointwise_items": 2,
        "pairwise_accuracy": 0.0,
        "pairwise_verdict_parse_rate": 0.5,
        "pairwise_items": 2,
        "verdict_parse_rate": 0.5,
    }
    assert rows[1] == {
        "id": "b-2",
        "kind": "pointwise",
        "prompt": "p2",
        "label": "incorrect",
        "expected": "No",
        "reply": "It is right.",
        "verdict": None,  # no box: nothing parsed, which is why the item is wrong
        "correct": False,
    }
    assert [(r["verdict"], r["correct"]) for r in rows] == [
        ("Yes", True),
        (None, False),
        ("A", False),
        (None, False),
    ]
    assert json.loads(json.dumps(rows)) == rows  # rows are written as jsonl
