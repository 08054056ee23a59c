"""Problems from files: JSON lines or parquet, checked in full before training starts.

Every row is validated when the task is built, so a bad row fails the run in the first second
with ``file:line`` (JSON lines, 1-based) or ``file row N`` (parquet, 0-based), not hours in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megatron_spark.data.countdown import CountdownConfig, CountdownTask
from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask, Problem, TaskSource
from megatron_spark.data.tokenizer import Tokenizer
from megatron_spark.errors import UserError

SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class FileTaskConfig:
    """Problems read from a ``.jsonl`` or ``.parquet`` file, one problem per row."""

    train_path: str
    """File of train problems."""
    held_out_path: str | None = None
    """File of held-out problems; if None, ``held_out_fraction`` of the train file is split off."""
    held_out_fraction: float = 0.05
    """Share of the train file's rows held out when ``held_out_path`` is None (at least one row
    when positive), chosen by a permutation seeded with ``seed``."""
    prompt_key: str = "prompt"
    """Field holding the prompt text (a non-empty string)."""
    answer_key: str = "answer"
    """Field holding the ground truth (a string or a number, kept as its string)."""
    solution_key: str | None = None
    """Field holding a worked solution (a string), required on every row when set."""
    seed: int = 0
    """Seed of the held-out split."""


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed JSON) for every non-blank line; invalid UTF-8 or JSON is a
    UserError naming ``file:line``."""
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            # utf-8-sig: a byte-order mark at the start of the file is not part of the JSON
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield number, row


def _read_parquet(path: Path, keys: Sequence[str]) -> Iterator[tuple[int, Any]]:
    """(0-based row index, row dict) for every row, after checking that the columns exist."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    for key in keys:
        if key not in table.column_names:
            raise UserError(f"{path}: no column '{key}' (columns: {', '.join(table.column_names)})")
    yield from enumerate(table.select(list(keys)).to_pylist())


def _text_field(row: dict[str, Any], key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise UserError(f"{where}: missing key '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{where}: '{key}' is empty")
    _check_encodable(value, key, where)
    return value


def _check_encodable(text: str, key: str, where: str) -> None:
    """A lone surrogate (JSON's ``"\\udc80"``) decodes but cannot be tokenized or written."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(
            f"{where}: '{key}' holds a lone surrogate {text[e.start]!r} at character {e.start}"
        ) from None


def _answer_field(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        raise UserError(f"{where}: missing key '{key}'")
    # bool is an int subclass, but True is no ground truth anyone means.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UserError(f"{where}: '{key}' must be a string or a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: '{key}' is {value}; expected a finite number or a string")
    text = str(value).strip()
    _check_encodable(text, key, where)
    if not text:
        raise UserError(f"{where}: '{key}' is empty")
    return text


def row_to_problem(row: Any, where: str, uid: str, cfg: FileTaskConfig) -> Problem:
    """One validated row; ``where`` names it in errors."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    solution = None if cfg.solution_key is None else _text_field(row, cfg.solution_key, where)
    return Problem(
        uid=uid,
        prompt=_text_field(row, cfg.prompt_key, where),
        answer=_answer_field(row, cfg.answer_key, where),
        solution=solution,
    )


def read_problems(path: str | Path, cfg: FileTaskConfig) -> list[Problem]:
    """Every row of a ``.jsonl`` or ``.parquet`` file as a Problem; raises on the first bad row.

    A problem's uid is the file name and its line (JSON lines) or row index (parquet).
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: unsupported file type, expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        problems = [
            row_to_problem(row, f"{path}:{line}", f"{path.name}:{line}", cfg)
            for line, row in read_jsonl(path)
        ]
    else:
        keys = [cfg.prompt_key, cfg.answer_key] + ([cfg.solution_key] if cfg.solution_key else [])
        problems = [
            row_to_problem(row, f"{path} row {index}", f"{path.name}:{index}", cfg)
            for index, row in _read_parquet(path, keys)
        ]
    if not problems:
        raise UserError(f"{path}: no problems (the file has no rows)")
    return problems


def split_held_out(
    problems: list[Problem], fraction: float, seed: int
) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out): ``round(fraction * n)`` rows (at least one if fraction > 0) picked by a
    seeded permutation; both keep file order."""
    n = len(problems)
    count = max(1, round(fraction * n)) if fraction > 0 else 0
    if count >= n:
        raise UserError(
            f"held_out_fraction={fraction} leaves no train problems out of {n}; lower it or give "
            f"held_out_path"
        )
    held = set(np.random.default_rng(seed).permutation(n)[:count].tolist())
    train = [p for i, p in enumerate(problems) if i not in held]
    return train, [p for i, p in enumerate(problems) if i in held]


class FileTask:
    """A TaskSource over a finite file of problems."""

    def __init__(self, cfg: FileTaskConfig):
        if not 0.0 <= cfg.held_out_fraction < 1.0:
            raise UserError(f"held_out_fraction={cfg.held_out_fraction}, expected in [0, 1)")
        self.cfg = cfg
        self.name = Path(cfg.train_path).stem
        problems = read_problems(cfg.train_path, cfg)
        if cfg.held_out_path is None:
            self._train, self._held_out = split_held_out(problems, cfg.held_out_fraction, cfg.seed)
        else:
            self._train, self._held_out = problems, read_problems(cfg.held_out_path, cfg)

    def num_train(self) -> int | None:
        return len(self._train)

    def train_problem(self, index: int) -> Problem:
        return self._train[index]

    def held_out(self) -> list[Problem]:
        return list(self._held_out)


def check_prompt_lengths(
    problems: Sequence[Problem], tokenizer: Tokenizer, max_prompt_tokens: int, source: str
) -> None:
    """Raise a UserError naming the first problem whose prompt is longer than the limit."""
    for problem in problems:
        length = len(tokenizer.encode_prompt(problem.prompt))
        if length > max_prompt_tokens:
            raise UserError(
                f"{source}: the prompt of problem {problem.uid} is {length} tokens, more than "
                f"max_prompt_tokens={max_prompt_tokens}"
            )


def load_task(cfg: ArithmeticConfig | CountdownConfig | FileTaskConfig) -> TaskSource:
    """The task a config describes."""
    if isinstance(cfg, ArithmeticConfig):
        return ArithmeticTask(cfg)
    if isinstance(cfg, CountdownConfig):
        return CountdownTask(cfg)
    if isinstance(cfg, FileTaskConfig):
        return FileTask(cfg)
    raise TypeError(f"not a task config: {type(cfg).__name__}")
