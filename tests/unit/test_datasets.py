"""File tasks: every bad row is refused up front with its file and line; splits are deterministic."""

import json

import pytest

from megatron_spark.data.datasets import (
    FileTask,
    FileTaskConfig,
    load_task,
    read_problems,
)
from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask, Problem
from megatron_spark.errors import UserError


def _write_jsonl(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def _rows(n):
    return [{"prompt": f"Compute {i}+1.", "answer": i + 1} for i in range(n)]


def test_jsonl_rows_become_problems(tmp_path):
    rows = [
        {"question": "Compute 1+1.", "gt": 2, "worked": "1+1=2. \\boxed{2}"},
        "   ",  # blank lines are skipped but still counted
        {"question": "Half of one?", "gt": 0.5, "worked": "\\boxed{0.5}", "extra": [1]},
        {"question": "Name it.", "gt": " B ", "worked": "\\boxed{B}"},
    ]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = FileTaskConfig(str(path), prompt_key="question", answer_key="gt", solution_key="worked")
    problems = read_problems(path, cfg)
    assert problems == [
        Problem("train.jsonl:1", "Compute 1+1.", "2", "1+1=2. \\boxed{2}"),
        Problem("train.jsonl:3", "Half of one?", "0.5", "\\boxed{0.5}"),
        Problem("train.jsonl:4", "Name it.", "B", "\\boxed{B}"),
    ]


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "answer": 1}\r\n{"prompt": "b", "answer": 2}\r\n')
    assert [(p.uid, p.prompt) for p in read_problems(path, FileTaskConfig(str(path)))] == [
        ("win.jsonl:1", "a"),
        ("win.jsonl:2", "b"),
    ]


BAD_JSONL = [
    (['{"prompt": "a", "answer": 1}', '{"prompt": "b", "answer": 2'], 2, "invalid JSON"),
    ([{"prompt": "a", "answer": 1}, {"answer": 2}], 2, "missing key 'prompt'"),
    ([{"prompt": "a"}], 1, "missing key 'answer'"),
    ([{"prompt": "a", "answer": None}], 1, "missing key 'answer'"),
    ([{"prompt": "a", "answer": 1}, {"prompt": " \n ", "answer": 2}], 2, "'prompt' is empty"),
    ([{"prompt": 5, "answer": 1}], 1, "'prompt' must be a string, got int"),
    ([{"prompt": "a", "answer": True}], 1, "'answer' must be a string or a number, got bool"),
    ([{"prompt": "a", "answer": [1]}], 1, "'answer' must be a string or a number, got list"),
    ([{"prompt": "a", "answer": ""}], 1, "'answer' is empty"),
    (['["prompt", "answer"]'], 1, "expected a JSON object, got list"),
]


@pytest.mark.parametrize("rows,line,message", BAD_JSONL)
def test_bad_jsonl_names_file_line_and_problem(tmp_path, rows, line, message):
    path = _write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(UserError) as e:
        FileTask(FileTaskConfig(str(path)))
    assert f"data.jsonl:{line}:" in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": 1}\n{"prompt": "\xff", "answer": 1}\n')
    with pytest.raises(UserError, match=r"data\.jsonl:2: invalid UTF-8"):
        FileTask(FileTaskConfig(str(path)))


def test_solution_key_is_required_when_set(tmp_path):
    path = _write_jsonl(
        tmp_path / "data.jsonl", [{"prompt": "a", "answer": 1, "sol": "x"}, {"prompt": "b", "answer": 2}]
    )
    with pytest.raises(UserError, match=r"data\.jsonl:2: missing key 'sol'"):
        read_problems(path, FileTaskConfig(str(path), solution_key="sol"))


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("missing.jsonl", None, "missing.jsonl: file not found"),
        ("data.csv", "prompt,answer\n", "data.csv: unsupported file type"),
        ("empty.jsonl", "\n\n", "empty.jsonl: no problems"),
        ("broken.parquet", "not parquet", "broken.parquet: not a readable parquet file"),
    ],
)
def test_bad_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        FileTask(FileTaskConfig(str(path)))


def test_held_out_fraction_split_is_deterministic_and_disjoint(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(40))
    task = FileTask(FileTaskConfig(str(path), held_out_fraction=0.1, seed=5))
    train = [task.train_problem(i) for i in range(task.num_train())]
    held = task.held_out()
    assert (len(train), len(held)) == (36, 4)
    assert sorted(p.uid for p in train + held) == sorted(f"train.jsonl:{i}" for i in range(1, 41))
    again = FileTask(FileTaskConfig(str(path), held_out_fraction=0.1, seed=5))
    assert again.held_out() == held
    other = FileTask(FileTaskConfig(str(path), held_out_fraction=0.1, seed=6))
    assert other.held_out() != held
    tiny = _write_jsonl(tmp_path / "tiny.jsonl", _rows(1))
    with pytest.raises(UserError, match="held_out_fraction=0.05 leaves no train problems"):
        FileTask(FileTaskConfig(str(tiny)))


def test_held_out_file_is_used_whole(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _rows(5))
    held = _write_jsonl(tmp_path / "test.jsonl", _rows(3))
    task = load_task(FileTaskConfig(str(train), held_out_path=str(held)))
    assert task.num_train() == 5 and [p.uid for p in task.held_out()] == [
        f"test.jsonl:{i}" for i in (1, 2, 3)
    ]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(UserError, match=r"bad\.jsonl:1"):
        FileTask(FileTaskConfig(str(train), held_out_path=str(bad)))


def _write_parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_rows_become_problems(tmp_path):
    path = _write_parquet(tmp_path / "train.parquet", {"prompt": ["p0", "p1"], "answer": [3, 4], "x": [0, 0]})
    problems = read_problems(path, FileTaskConfig(str(path)))
    assert problems == [Problem("train.parquet:0", "p0", "3"), Problem("train.parquet:1", "p1", "4")]


@pytest.mark.parametrize(
    "columns,message",
    [
        ({"prompt": ["p0"]}, "d.parquet: no column 'answer'"),
        ({"prompt": ["p0", "  "], "answer": ["1", "2"]}, "d.parquet row 1: 'prompt' is empty"),
        ({"prompt": ["p0", "p1"], "answer": ["1", None]}, "d.parquet row 1: missing key 'answer'"),
        ({"prompt": [1, 2], "answer": ["1", "2"]}, "d.parquet row 0: 'prompt' must be a string"),
    ],
)
def test_bad_parquet_names_file_row_and_problem(tmp_path, columns, message):
    path = _write_parquet(tmp_path / "d.parquet", columns)
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        FileTask(FileTaskConfig(str(path), held_out_fraction=0.0))


def test_load_task_dispatches_on_the_config():
    assert isinstance(load_task(ArithmeticConfig()), ArithmeticTask)
