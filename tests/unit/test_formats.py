r"""Row formats users have: GSM8K (``#### N``), MATH (``\boxed{}`` solutions), chat messages and
plain fields; the ground truth extracted per format, checked before training, errors at file:line."""

import json

import pytest

from megatron_spark.data.datasets import FileTask, FileTaskConfig, read_file
from megatron_spark.data.formats import gsm8k_solution
from megatron_spark.data.tasks import Problem
from megatron_spark.errors import UserError
from megatron_spark.reward.extract import extract_boxed, extract_gsm8k


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GSM8K_ROW = {
    "question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
    "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72 clips.\n#### 72",
}


def test_gsm8k_extraction_takes_the_last_marker_and_drops_thousands_separators():
    assert extract_gsm8k("a\n#### 5\nb\n#### 1,600") == "1600"
    assert extract_gsm8k("#### -3.5 ") == "-3.5"
    assert extract_gsm8k("no marker") is None and extract_gsm8k("####   ") is None


def test_gsm8k_rows_are_detected_and_their_solutions_end_in_a_box(tmp_path):
    path = _jsonl(tmp_path / "gsm.jsonl", [GSM8K_ROW])
    (problem,), spec = read_file(path, FileTaskConfig(str(path)))
    assert spec.format == "gsm8k" and "detected" in spec.describe(str(path))
    assert problem == Problem(
        "gsm.jsonl:1",
        GSM8K_ROW["question"],
        "72",
        "In May she sold 48/2 = 24 clips.\nIn all 48+24 = 72 clips.\nThe final answer is \\boxed{72}.",
    )


def test_gsm_symbolic_rows_from_reasoning_gym_extract_their_answers(tmp_path):
    """reasoning-gym's GSM-Symbolic generator writes real GSM8K-format worked answers."""
    reasoning_gym = pytest.importorskip("reasoning_gym")
    data = reasoning_gym.create_dataset("gsm_symbolic", size=40, seed=3)
    rows = [{"question": r["question"], "answer": r["metadata"]["answer_cot"]} for r in data]
    path = _jsonl(tmp_path / "gsm_symbolic.jsonl", rows)
    problems = read_file(path, FileTaskConfig(str(path)))[0]
    # Its "#### 16.0" is the "16" of its answer field: equal for math-verify, kept as written.
    assert [float(p.answer) for p in problems] == [float(r["answer"]) for r in data]
    for p in problems:
        assert extract_boxed(p.solution) == p.answer and "####" not in p.solution


def test_math_rows_read_the_last_balanced_box_of_the_solution(tmp_path):
    rows = [
        {"problem": "Simplify.", "solution": "First \\boxed{2}, then $\\boxed{\\frac{1}{2}}$.", "level": 3},
        {"problem": "Interval?", "solution": "It is $\\boxed{(-\\infty, 3]}$."},
    ]
    path = _jsonl(tmp_path / "math.jsonl", rows)
    problems, spec = read_file(path, FileTaskConfig(str(path)))
    assert spec.format == "math"
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "(-\\infty, 3]"]
    assert problems[0].solution == rows[0]["solution"]
    # An explicit answer field wins over the solution's box.
    rows = [{"problem": "p", "solution": "\\boxed{0.5}", "answer": "\\frac12"}]
    path = _jsonl(tmp_path / "math500.jsonl", rows)
    cfg = FileTaskConfig(str(path), format="math", answer_key="answer")
    assert read_file(path, cfg)[0][0].answer == "\\frac12"


def test_chat_message_rows(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "So \\boxed{2}."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "2+2=4\n#### 4"},
            ]
        },
    ]
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    problems, spec = read_file(path, FileTaskConfig(str(path)))
    assert spec.format == "messages"
    assert [(p.prompt, p.answer) for p in problems] == [("1+1?", "2"), ("2+2?", "4")]
    assert problems[1].solution == "2+2=4\nThe final answer is \\boxed{4}."
    # A user turn alone needs an answer field.
    path = _jsonl(tmp_path / "asks.jsonl", [{"messages": [{"role": "user", "content": "3+3?"}], "gt": 6}])
    (problem,) = read_file(path, FileTaskConfig(str(path), answer_key="gt"))[0]
    assert (problem.prompt, problem.answer, problem.solution) == ("3+3?", "6", None)


BAD_ROWS = [
    ("gsm8k", {"question": "q", "answer": "no marker here"}, "'answer' has no '#### N' answer line"),
    ("gsm8k", {"question": "q", "answer": "x\n#### inf"}, "'inf', not a finite number"),
    ("math", {"problem": "q", "solution": "no box"}, "'solution' has no \\boxed{} answer"),
    ("math", {"problem": "q", "solution": "\\boxed{ }"}, "extracted from 'solution' is empty"),
    ("plain", {"prompt": "q", "answer": float("nan")}, "'nan', not a finite number"),
    ("messages", {"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
    (
        "messages",
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
        "set task.system_prompt",
    ),
    (
        "messages",
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "r"}]},
        "expected [user] or [user, assistant]",
    ),
    ("messages", {"messages": [{"role": "user", "content": 3}]}, "messages[0].content must be a string"),
]


@pytest.mark.parametrize("fmt,row,message", BAD_ROWS)
def test_an_answer_that_cannot_be_extracted_is_refused_at_its_line(tmp_path, fmt, row, message):
    good = {
        "gsm8k": GSM8K_ROW,
        "math": {"problem": "p", "solution": "\\boxed{1}"},
        "plain": {"prompt": "p", "answer": 1},
        "messages": {
            "messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "\\boxed{1}"}]
        },
    }[fmt]
    path = _jsonl(tmp_path / "data.jsonl", [good, good, row])
    with pytest.raises(UserError) as e:
        FileTask(FileTaskConfig(str(path), format=fmt))
    assert "data.jsonl:3:" in str(e.value) and message in str(e.value), str(e.value)


def test_a_row_that_differs_from_the_detected_format_names_its_line(tmp_path):
    path = _jsonl(tmp_path / "mixed.jsonl", [GSM8K_ROW, {"question": "q", "answer": "42"}])
    with pytest.raises(UserError, match=r"mixed\.jsonl:2: 'answer' has no '#### N' answer line"):
        FileTask(FileTaskConfig(str(path)))


def test_answer_extract_overrides_the_format_default(tmp_path):
    path = _jsonl(tmp_path / "boxed.jsonl", [{"prompt": "q", "answer": "The answer is \\boxed{7}."}])
    assert read_file(path, FileTaskConfig(str(path)))[0][0].answer == "The answer is \\boxed{7}."
    assert read_file(path, FileTaskConfig(str(path), answer_extract="boxed"))[0][0].answer == "7"


def test_prompt_suffix_goes_on_its_own_line(tmp_path):
    path = _jsonl(tmp_path / "gsm.jsonl", [GSM8K_ROW] * 3)
    suffix = "Put the final answer in \\boxed{}."
    task = FileTask(FileTaskConfig(str(path), prompt_suffix=suffix, held_out_fraction=0.34))
    for p in [task.train_problem(0), *task.held_out()]:
        assert p.prompt == f"{GSM8K_ROW['question']}\n{suffix}"


def test_parquet_gsm8k_rows_are_detected_and_only_needed_columns_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "gsm.parquet"
    table = pa.table({"question": [GSM8K_ROW["question"]] * 2, "answer": [GSM8K_ROW["answer"], "#### 5"]})
    pq.write_table(table, path)
    problems, spec = read_file(path, FileTaskConfig(str(path)))
    assert spec.format == "gsm8k" and [p.answer for p in problems] == ["72", "5"]
    assert problems[1].solution == "The final answer is \\boxed{5}."


def test_description_says_what_was_detected_or_configured(tmp_path):
    path = _jsonl(tmp_path / "gsm.jsonl", [GSM8K_ROW] * 2)
    auto = FileTask(FileTaskConfig(str(path), held_out_fraction=0.5)).description
    assert "gsm8k rows (detected: 'question' and an 'answer' with a '#### N' line)" in auto
    assert "after '####'" in auto and "converted to a boxed final answer" in auto
    configured = FileTask(FileTaskConfig(str(path), held_out_fraction=0.5, format="gsm8k")).description
    assert "gsm8k rows (configured)" in configured


def test_gsm8k_solution_without_work_is_the_boxed_line():
    assert gsm8k_solution("#### 12") == "The final answer is \\boxed{12}."
