"""Problems from files: JSON lines or parquet, checked in full before training starts.

Every row is validated when the task is built (its format, its fields, an extractable finite
answer: :mod:`megatron_spark.data.formats`), so a bad row fails the run in the first second with
``file:line`` (JSON lines, 1-based) or ``file row N`` (parquet, 0-based), not hours in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megatron_spark.data.countdown import CountdownConfig, CountdownTask
from megatron_spark.data.formats import Extract, Format, RowSpec, read_row, resolve_spec
from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask, Problem, TaskSource
from megatron_spark.errors import UserError

SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class FileTaskConfig:
    """Problems read from a ``.jsonl`` or ``.parquet`` file, one problem per row, in one of the row
    formats of :mod:`megatron_spark.data.formats` (GSM8K, MATH, chat messages, plain fields)."""

    train_path: str
    """File of train problems."""
    held_out_path: str | None = None
    """File of held-out problems; if None, ``held_out_fraction`` of the train file is split off."""
    held_out_fraction: float = 0.05
    """Share of the train file's rows held out when ``held_out_path`` is None (at least one row
    when positive), chosen by a permutation seeded with ``seed``."""
    format: Format = "auto"
    """How a row holds its problem: ``plain`` (a prompt and an answer field), ``gsm8k`` (``question``
    and an ``answer`` ending ``#### N``), ``math`` (``problem`` and a ``solution`` whose last
    ``\\boxed{}`` is the answer), ``messages`` (``[{role, content}, ...]``: a user turn and an
    optional assistant turn), or ``auto``: decided from the first row of each file and printed at
    the start of the run."""
    prompt_key: str | None = None
    """Field holding the prompt text (a non-empty string); None: the format's (``prompt``,
    ``question``, ``problem``)."""
    answer_key: str | None = None
    """Field holding the ground truth, or the text it is extracted from (a string, or a number kept
    as its string); None: the format's (``answer``; ``math`` and ``messages`` read it from the
    solution)."""
    solution_key: str | None = None
    """Field holding a worked solution (a string), required on every row when set; None: the
    format's (``gsm8k``: the answer text, ``math``: ``solution``, ``messages``: the assistant
    turn, ``plain``: none)."""
    messages_key: str = "messages"
    """Field holding the chat turns of ``messages`` rows."""
    answer_extract: Extract = "auto"
    """How the ground truth is read from its field: ``none`` (the whole field), ``boxed`` (its last
    ``\\boxed{}``), ``gsm8k`` (what follows its last ``####``), or ``auto``: the format's choice
    (plain and an explicit ``answer_key``: none; gsm8k: gsm8k; math: boxed; messages: the last box,
    else ``#### N``)."""
    prompt_suffix: str | None = None
    """Text added on a new line after every prompt, e.g. ``Put the final answer in \\boxed{}.``; it
    becomes part of the problem, so judge and reflection prompts show the question as the policy
    saw it (as if the file had been rewritten)."""
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


def _read_parquet(path: Path) -> Any:
    """The file's pyarrow table (its format is detected from the first row before any column is
    converted to Python)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    return table


def _parquet_rows(path: Path, table: Any, keys: Sequence[str]) -> Iterator[tuple[int, Any]]:
    """(0-based row index, row dict of ``keys`` only) for every row, after checking the columns."""
    for key in keys:
        if key not in table.column_names:
            raise UserError(f"{path}: no column '{key}' (columns: {', '.join(table.column_names)})")
    yield from enumerate(table.select(list(keys)).to_pylist())


def row_spec(cfg: FileTaskConfig, first_row: Any) -> RowSpec:
    """How the rows of a file are read: ``cfg``'s format and keys (auto: detected from ``first_row``)."""
    return resolve_spec(
        cfg.format,
        cfg.prompt_key,
        cfg.answer_key,
        cfg.solution_key,
        cfg.messages_key,
        cfg.answer_extract,
        first_row,
    )


def row_to_problem(row: Any, where: str, uid: str, spec: RowSpec, suffix: str | None = None) -> Problem:
    """One validated row; ``where`` names it in errors; ``suffix`` goes on a new line after the prompt."""
    prompt, answer, solution = read_row(row, spec, where)
    if suffix:
        prompt = f"{prompt.rstrip()}\n{suffix}"
    return Problem(uid=uid, prompt=prompt, answer=answer, solution=solution)


def read_problems(path: str | Path, cfg: FileTaskConfig) -> list[Problem]:
    """Every row of a ``.jsonl`` or ``.parquet`` file as a Problem (see :func:`read_file`)."""
    return read_file(path, cfg)[0]


def read_file(path: str | Path, cfg: FileTaskConfig) -> tuple[list[Problem], RowSpec]:
    """Every row of a ``.jsonl`` or ``.parquet`` file as a Problem, and the format they were read
    in; raises on the first bad row.

    A problem's uid is the file name and its line (JSON lines) or row index (parquet).
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: unsupported file type, expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        rows = list(read_jsonl(path))
        spec = row_spec(cfg, rows[0][1] if rows else None)
        problems = [
            row_to_problem(row, f"{path}:{line}", f"{path.name}:{line}", spec, cfg.prompt_suffix)
            for line, row in rows
        ]
    else:
        table = _read_parquet(path)
        spec = row_spec(cfg, table.slice(0, 1).to_pylist()[0] if table.num_rows else None)
        problems = [
            row_to_problem(row, f"{path} row {index}", f"{path.name}:{index}", spec, cfg.prompt_suffix)
            for index, row in _parquet_rows(path, table, spec.columns())
        ]
    if not problems:
        raise UserError(f"{path}: no problems (the file has no rows)")
    return problems, spec


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
        problems, self.spec = read_file(cfg.train_path, cfg)
        notes = [self.spec.describe(cfg.train_path)]
        if cfg.held_out_path is None:
            self._train, self._held_out = split_held_out(problems, cfg.held_out_fraction, cfg.seed)
        else:
            self._held_out, held_spec = read_file(cfg.held_out_path, cfg)
            self._train = problems
            if held_spec.format != self.spec.format:
                notes.append(held_spec.describe(cfg.held_out_path))
        self.description = "; ".join(notes)
        """One line saying how the rows were read (format, detected or configured, fields)."""

    def num_train(self) -> int | None:
        return len(self._train)

    def train_problem(self, index: int) -> Problem:
        return self._train[index]

    def held_out(self) -> list[Problem]:
        return list(self._held_out)


def load_task(cfg: ArithmeticConfig | CountdownConfig | FileTaskConfig) -> TaskSource:
    """The task a config describes."""
    if isinstance(cfg, ArithmeticConfig):
        return ArithmeticTask(cfg)
    if isinstance(cfg, CountdownConfig):
        return CountdownTask(cfg)
    if isinstance(cfg, FileTaskConfig):
        return FileTask(cfg)
    raise TypeError(f"not a task config: {type(cfg).__name__}")
