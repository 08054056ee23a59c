r"""Row formats of math datasets: where a row keeps its prompt, its ground truth and a worked solution.

==========  ===============  ==============================================  ============================
format      prompt           ground truth (``answer_extract`` default)        worked solution (for SFT)
==========  ===============  ==============================================  ============================
plain       ``prompt``       ``answer``, as it is (``none``)                 ``solution_key``, if set
gsm8k       ``question``     the number after ``####`` in ``answer``         ``answer``, converted
                             (``gsm8k``)
math        ``problem``      the last ``\boxed{}`` of ``solution``           ``solution``
                             (``boxed``)
messages    the user turn    the assistant turn's last ``\boxed{}``, else    the assistant turn
                             its ``#### N`` (``auto``)
==========  ===============  ==============================================  ============================

The key names are each format's defaults; ``prompt_key``, ``answer_key`` and ``solution_key``
replace them. Setting ``answer_key`` for ``math`` or ``messages`` reads the ground truth from that
field (as it is) instead of the solution. ``answer_extract`` overrides how the ground truth is read
from its text: ``none`` (the whole field), ``boxed`` (the last balanced ``\boxed{}``) or ``gsm8k``
(what follows the last ``####``).

A worked solution that ends in ``#### N`` instead of a box (GSM8K's form) is converted, because SFT
on it would teach an answer no verifier reads: the text before ``####``, with GSM8K's calculator
annotations (``<<48/2=24>>``) removed, then ``The final answer is \boxed{N}.``

``auto`` picks the format from the first row (:func:`detect_format`) and says what it saw; every
row is then read in that format, and a row that does not fit is an error naming its file and line.
A ground truth must be non-empty, and one that reads as a number must be finite: a row whose answer
cannot be extracted stops the run before it starts, not as a reward of 0 for ever.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from megatron_spark.errors import UserError
from megatron_spark.reward.extract import boxed_contents, extract_boxed, extract_gsm8k

Format = Literal["auto", "plain", "gsm8k", "math", "messages"]
FORMATS = ("plain", "gsm8k", "math", "messages")
Extract = Literal["auto", "none", "boxed", "gsm8k"]

DEFAULT_KEYS: dict[str, dict[str, str | None]] = {
    "plain": {"prompt": "prompt", "answer": "answer", "solution": None},
    "gsm8k": {"prompt": "question", "answer": "answer", "solution": None},
    "math": {"prompt": "problem", "answer": None, "solution": "solution"},
    "messages": {"prompt": None, "answer": None, "solution": None},
}
"""Each format's field names; None: the format has no such field (the ground truth of ``math``
and ``messages`` comes from the solution)."""

_ANNOTATION = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class RowSpec:
    """How every row of one file is read (a format with its keys resolved)."""

    format: str
    """One of FORMATS."""
    prompt_key: str | None
    """Field of the prompt text (None for ``messages``)."""
    answer_key: str | None
    """Field the ground truth is read from; None: from the worked solution."""
    solution_key: str | None
    """Field of the worked solution (None: none, or the ``messages`` assistant turn)."""
    messages_key: str
    """Field of the chat turns (``messages`` only)."""
    extract: str
    """How the ground truth is read from its text: ``none``, ``boxed``, ``gsm8k`` or ``auto``
    (the last box, else ``#### N``)."""
    detected: str | None = None
    """What ``auto`` saw in the first row, or None when the format was configured."""

    def columns(self) -> list[str]:
        """Fields every row must have."""
        keys = [self.messages_key] if self.format == "messages" else [self.prompt_key]
        keys += [k for k in (self.answer_key, self.solution_key) if k is not None]
        return list(dict.fromkeys(k for k in keys if k is not None))

    def describe(self, source: str) -> str:
        """One line for the run's log: the format, why, and where each part comes from."""
        how = {
            "none": "as it is",
            "boxed": "last \\boxed{}",
            "gsm8k": "after '####'",
            "auto": "last \\boxed{}, else after '####'",
        }[self.extract]
        prompt = f"'{self.prompt_key}'" if self.prompt_key else f"the user turn of '{self.messages_key}'"
        truth_from = self.answer_key or self.solution_key
        truth = f"'{truth_from}'" if truth_from else "the assistant turn"
        if self.solution_key:
            solution = f"'{self.solution_key}'"
        elif self.format == "gsm8k":
            solution = f"'{self.answer_key}' (converted to a boxed final answer)"
        elif self.format == "messages":
            solution = "the assistant turn, where there is one"
        else:
            solution = "none"
        why = f"detected: {self.detected}" if self.detected else "configured"
        return (
            f"{source}: {self.format} rows ({why}); prompt from {prompt}, ground truth from {truth} "
            f"({how}), worked solution from {solution}"
        )


def resolve_spec(
    format: str,
    prompt_key: str | None,
    answer_key: str | None,
    solution_key: str | None,
    messages_key: str,
    extract: str,
    first_row: Any,
) -> RowSpec:
    """The RowSpec of a file: ``format`` (``auto``: detected from ``first_row``), with the
    configured keys over the format's defaults."""
    detected = None
    if format == "auto":
        format, detected = detect_format(first_row, prompt_key, answer_key, solution_key, messages_key)
    defaults = DEFAULT_KEYS[format]
    answer = answer_key if answer_key is not None else defaults["answer"]
    if extract == "auto":
        extract = {"plain": "none", "gsm8k": "gsm8k", "math": "boxed", "messages": "auto"}[format]
        if answer_key is not None and format in ("math", "messages"):
            extract = "none"  # an answer field holds the answer itself
    return RowSpec(
        format=format,
        prompt_key=None if format == "messages" else (prompt_key or defaults["prompt"]),
        answer_key=answer,
        solution_key=solution_key if solution_key is not None else defaults["solution"],
        messages_key=messages_key,
        extract=extract,
        detected=detected,
    )


def detect_format(
    row: Any, prompt_key: str | None, answer_key: str | None, solution_key: str | None, messages_key: str
) -> tuple[str, str]:
    """``(format, what was seen)`` for a file whose first row is ``row``, checked in this order:
    a list under ``messages_key``; a prompt and an answer text with a ``#### N`` line (gsm8k); a
    prompt and a solution with a ``\\boxed{}`` and no answer key configured (math); else plain."""
    if not isinstance(row, dict):
        return "plain", "the first row is not an object"
    if prompt_key is None and isinstance(row.get(messages_key), list):
        return "messages", f"'{messages_key}' is a list of turns"
    answer = answer_key or "answer"
    prompt = prompt_key or "question"
    if prompt in row and isinstance(row.get(answer), str) and extract_gsm8k(row[answer]) is not None:
        return "gsm8k", f"'{prompt}' and an '{answer}' with a '#### N' line"
    prompt, solution = prompt_key or "problem", solution_key or "solution"
    text = row.get(solution)
    if answer_key is None and prompt in row and isinstance(text, str) and boxed_contents(text):
        return "math", f"'{prompt}' and a '{solution}' with \\boxed{{}}"
    return "plain", "no messages, '#### N' answer or boxed solution"


def read_row(row: Any, spec: RowSpec, where: str) -> tuple[str, str, str | None]:
    """``(prompt, ground truth, worked solution or None)`` of one row; ``where`` names it in errors."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if spec.format == "messages":
        prompt, reply = _turns(row, spec.messages_key, where)
        solution = reply if spec.solution_key is None else text_field(row, spec.solution_key, where)
    else:
        prompt = text_field(row, spec.prompt_key, where)
        solution = None if spec.solution_key is None else text_field(row, spec.solution_key, where)
    if spec.format == "gsm8k" and solution is None:
        solution = text_field(row, spec.answer_key, where)
    if spec.answer_key is not None:
        key = spec.answer_key
        text = answer_field(row, key, where) if spec.extract == "none" else text_field(row, key, where)
    elif solution is not None:
        key, text = spec.solution_key or "the assistant turn", solution
    else:
        raise UserError(
            f"{where}: no assistant turn to read the ground truth from; add one or set task.file.answer_key"
        )
    answer = extract_answer(text, spec.extract, key, where)
    if solution is not None and not boxed_contents(solution) and extract_gsm8k(solution) is not None:
        solution = gsm8k_solution(solution)
    return prompt, answer, solution


def extract_answer(text: str, how: str, key: str, where: str) -> str:
    """The ground truth read from ``text`` (field ``key``) as ``how`` says; checked non-empty and,
    when it reads as a number, finite."""
    if how == "none":
        answer = text.strip()
    elif how == "boxed":
        answer = extract_boxed(text)
    elif how == "gsm8k":
        answer = extract_gsm8k(text)
    else:
        answer = extract_boxed(text) if boxed_contents(text) else extract_gsm8k(text)
    if answer is None:
        wanted = {"boxed": "\\boxed{} answer", "gsm8k": "'#### N' answer line"}
        raise UserError(
            f"{where}: '{key}' has no {wanted.get(how, 'boxed or #### answer')} "
            f"(task.file.answer_extract={how}): {_excerpt(text)}"
        )
    if not answer.strip():
        raise UserError(f"{where}: the answer extracted from '{key}' is empty")
    if not _finite(answer):
        raise UserError(f"{where}: the answer from '{key}' is {answer!r}, not a finite number")
    return answer.strip()


def gsm8k_solution(text: str) -> str:
    r"""A GSM8K worked answer in the boxed form SFT teaches: the work before the last ``####``
    without calculator annotations, then ``The final answer is \boxed{N}.``"""
    answer = extract_gsm8k(text)
    work = _ANNOTATION.sub("", text[: text.rfind("####")]).rstrip()
    final = f"The final answer is \\boxed{{{answer}}}."
    return f"{work}\n{final}" if work else final


def _turns(row: dict, key: str, where: str) -> tuple[str, str | None]:
    """(user text, assistant text or None) of a row's chat turns: ``user`` then optionally
    ``assistant``; a per-row system turn is refused (one system prompt serves a run)."""
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: '{key}' must be a non-empty list of {{role, content}} turns")
    roles = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            raise UserError(f"{where}: {key}[{i}] must be an object with a 'role' and a 'content'")
        if not isinstance(turn.get("content"), str):
            raise UserError(f"{where}: {key}[{i}].content must be a string")
        roles.append(turn["role"])
    if roles[0] == "system":
        raise UserError(
            f"{where}: {key}[0] is a system turn; rows may hold user and assistant turns only "
            f"(set task.system_prompt for a system prompt)"
        )
    if roles not in (["user"], ["user", "assistant"]):
        raise UserError(f"{where}: '{key}' has turns {roles}; expected [user] or [user, assistant]")
    if not turns[0]["content"].strip():
        raise UserError(f"{where}: {key}[0].content is empty")
    reply = turns[1]["content"] if len(turns) == 2 else None
    if reply is not None and not reply.strip():
        raise UserError(f"{where}: {key}[1].content is empty")
    return turns[0]["content"], reply


def text_field(row: dict[str, Any], key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise UserError(f"{where}: missing key '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{where}: '{key}' is empty")
    check_encodable(value, key, where)
    return value


def check_encodable(text: str, key: str, where: str) -> None:
    """A lone surrogate (JSON's ``"\\udc80"``) decodes but cannot be tokenized or written."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(
            f"{where}: '{key}' holds a lone surrogate {text[e.start]!r} at character {e.start}"
        ) from None


def answer_field(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        raise UserError(f"{where}: missing key '{key}'")
    # bool is an int subclass, but True is no ground truth anyone means.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UserError(f"{where}: '{key}' must be a string or a number, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise UserError(f"{where}: '{key}' is empty")
    check_encodable(text, key, where)
    return text


def _finite(answer: str) -> bool:
    """False only for text that Python reads as an infinite or nan float (``inf``, ``NaN``,
    ``1e999``): no response can match it. LaTeX such as ``\\infty`` is a real answer."""
    try:
        return math.isfinite(float(answer))
    except ValueError:
        return True


def _excerpt(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else "..." + flat[-limit:])
