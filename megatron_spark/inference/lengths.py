r"""Every length limit of a run, checked before its first step or evaluation.

Each phase feeds the model a prompt and generates (or, in SFT, trains) tokens after it; prompt and
continuation must fit the model's ``max_position_embeddings``. The rollout engine would refuse an
over-long batch only when it meets one, minutes or hours in, losing the work of the phase; here
every phase the command will run is measured first and all that cannot fit are named in one error,
each with its longest item and the numbers that add up past the limit.

=================================  ===============================================================
phase                              longest sequence
=================================  ===============================================================
policy rollout (train)             longest train prompt + ``rollout.max_new_tokens``
held-out evaluation                longest of the first ``train.eval_num_problems`` held-out
                                   prompts + ``rollout.max_new_tokens``
SFT (sft)                          longest prompt + its worked solution + eos
SFT judge/reflection examples      the warm-start examples of the problems with the longest
                                   prompt + solution (their prompts and replies are built here)
recycled items (spark.enabled),    longest judge or reflection prompt (bound below) +
held-out judge evaluation and      ``spark.max_new_tokens``
test-time self-reflection
=================================  ===============================================================

A recycled (or held-out, or test-time) item prompt embeds text the policy generated, so its length
is bounded, not known: a reflection prompt shows a whole response (at most
``rollout.max_new_tokens`` tokens), a pointwise prompt one final answer and a pairwise prompt two,
each the inside of a box within a response (so at most ``rollout.max_new_tokens`` tokens each).
The bound is the longest template rendered around the longest questions with its slots empty, plus
``rollout.max_new_tokens`` per slot: what the run can produce, it can process (up to the few tokens
by which re-encoding a decoded response may differ from the sampled ids).

Every prompt is also checked against ``task.max_prompt_tokens``. A dataset is measured in full; an
unbounded synthetic source by its held-out split and its first ``SYNTHETIC_SAMPLE`` train problems.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from megatron_spark.data.tasks import Problem, TaskSource
from megatron_spark.data.tokenizer import Tokenizer
from megatron_spark.errors import UserError
from megatron_spark.spark import templates

if TYPE_CHECKING:  # the config tree sits above every component it configures
    from megatron_spark.train.config import RunConfig

SYNTHETIC_SAMPLE = 256
"""Train problems of an unbounded source whose prompts are measured."""
LONGEST_QUESTIONS = 3
"""Questions (by prompt tokens) around which every judge and reflection template is rendered."""


@dataclass(frozen=True)
class Need:
    """The longest sequence one phase can make."""

    phase: str
    positions: int
    """Prompt plus continuation, in tokens."""
    longest: str
    """What makes it up, e.g. ``the prompt of problem gsm.jsonl:7 (93 tokens) +
    rollout.max_new_tokens=1024``."""


def check_lengths(
    cfg: RunConfig, command: str, tokenizer: Tokenizer, task: TaskSource, max_positions: int | None
) -> None:
    """Raise one UserError naming every phase of ``command`` (``train``, ``sft`` or ``eval``) whose
    longest sequence exceeds ``max_positions`` (None: unknown, only ``task.max_prompt_tokens`` is
    checked), and the first prompt longer than ``task.max_prompt_tokens``."""
    train, held_out = _known_problems(task)
    lengths = {p.uid: len(tokenizer.encode_prompt(p.prompt)) for p in [*held_out, *train]}
    limit = cfg.task.max_prompt_tokens
    for name, problems in (("held-out", held_out), ("train", train)):
        for p in problems:
            if lengths[p.uid] > limit:
                raise UserError(
                    f"task {task.name} ({name}): the prompt of problem {p.uid} is {lengths[p.uid]} "
                    f"tokens, more than task.max_prompt_tokens={limit}"
                )
    if command == "sft":
        missing = [p.uid for p in train if not p.solution]
        if missing:
            raise UserError(
                f"sft: problem {missing[0]} has no worked solution ({len(missing)} of {len(train)} "
                f"train problems); set task.file.solution_key or use a format with solutions"
            )
    if max_positions is None:
        return
    over = [
        n
        for n in phase_needs(cfg, command, tokenizer, task.name, train, held_out, lengths)
        if n.positions > max_positions
    ]
    if over:
        what = "; ".join(f"{n.phase}: {n.longest} = {n.positions} positions" for n in over)
        raise UserError(
            f"{what}; more than the model's max_position_embeddings={max_positions} "
            f"(model.init={cfg.model.init}); lower the new-token limits named or shorten the prompts"
        )


def phase_needs(
    cfg: RunConfig,
    command: str,
    tokenizer: Tokenizer,
    task_name: str,
    train: Sequence[Problem],
    held_out: Sequence[Problem],
    lengths: dict[str, int],
) -> list[Need]:
    """The longest sequence of every phase ``command`` runs with ``cfg``, in run order."""
    from megatron_spark.spark.checks import checks_for

    new, judge_new = cfg.rollout.max_new_tokens, cfg.spark.max_new_tokens
    evaluated = list(held_out[: cfg.train.eval_num_problems])
    checks = checks_for(task_name)
    needs = []
    if evaluated:
        needs.append(_prompt_need("held-out evaluation", evaluated, lengths, new, "rollout.max_new_tokens"))
    if command == "train" and train:
        needs.append(_prompt_need("policy rollout", train, lengths, new, "rollout.max_new_tokens"))
    if command == "sft" and train:
        needs.append(_sft_need(train, lengths, tokenizer))
        if cfg.sft.judge_fraction > 0 or cfg.sft.reflection_fraction > 0:
            needs.append(_warm_start_need(train, lengths, tokenizer, checks))
    recycled = command == "train" and cfg.spark.enabled
    judged = bool(evaluated) and (cfg.train.eval_judge or command == "eval")
    if recycled or judged:
        # Held-out items and the test-time modes use every kind; recycling the enabled ones.
        kinds = [k for k in ("pointwise", "pairwise", "reflection") if judged or getattr(cfg.spark, k)]
        phase = " and ".join(
            ["recycled judge and reflection items"] * recycled
            + ["held-out judge evaluation" + (" and test-time self-reflection" if command == "eval" else "")]
            * judged
        )
        questions = sorted([*train, *held_out], key=lambda p: lengths[p.uid])[-LONGEST_QUESTIONS:]
        tokens, longest = item_prompt_bound(questions, kinds, tokenizer, checks.styles, new)
        needs.append(Need(phase, tokens + judge_new, f"{longest} + spark.max_new_tokens={judge_new}"))
    return needs


def item_prompt_bound(
    questions: Sequence[Problem],
    kinds: Sequence[str],
    tokenizer: Tokenizer,
    styles: templates.Styles,
    slot_tokens: int,
) -> tuple[int, str]:
    """``(tokens, description)`` of the longest judge or reflection prompt of ``kinds`` around any
    of ``questions``, each generated slot counted as ``slot_tokens`` (see the module docstring)."""
    best = (0, "")
    for problem in questions:
        for kind, template, text, slots in _rendered(problem.prompt, kinds, styles):
            tokens = len(tokenizer.encode_prompt(text)) + slots * slot_tokens
            if tokens > best[0]:
                shown = {
                    "reflection": f"a whole response (up to {slot_tokens} tokens)",
                    "pointwise": f"a final answer (up to {slot_tokens} tokens)",
                    "pairwise": f"2 final answers (up to {slot_tokens} tokens each)",
                }[kind]
                best = (
                    tokens,
                    f"a {kind} prompt (template {template}) on problem {problem.uid} showing {shown}, "
                    f"rollout.max_new_tokens={slot_tokens}: {tokens} tokens",
                )
    return best


def _rendered(question: str, kinds: Sequence[str], styles: templates.Styles):
    """``(kind, template index, prompt with empty slots, number of slots)`` of every template."""
    for kind in kinds:
        style = styles.reflection if kind == "reflection" else styles.judge
        if kind == "pointwise":
            for vocab in templates.POINTWISE_VERDICTS:
                for t in range(templates.NUM_POINTWISE_TEMPLATES):
                    yield kind, t, templates.pointwise_prompt(question, "", vocab, t, style), 1
        elif kind == "pairwise":
            for t in range(templates.NUM_PAIRWISE_TEMPLATES):
                yield kind, t, templates.pairwise_prompt(question, "", "", t, style), 2
        else:
            for tone in ("neutral", "wrong"):
                for t in range(templates.NUM_REFLECTION_TEMPLATES):
                    yield kind, t, templates.reflection_prompt(question, "", "full", tone, t, style), 1


def _known_problems(task: TaskSource) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems whose lengths are measured (see the module docstring)."""
    n = task.num_train()
    train = [task.train_problem(i) for i in range(SYNTHETIC_SAMPLE if n is None else n)]
    return train, task.held_out()


def _prompt_need(phase: str, problems, lengths: dict[str, int], new: int, knob: str) -> Need:
    p = max(problems, key=lambda p: lengths[p.uid])
    return Need(
        phase, lengths[p.uid] + new, f"the prompt of problem {p.uid} ({lengths[p.uid]} tokens) + {knob}={new}"
    )


def _sft_need(train: Sequence[Problem], lengths: dict[str, int], tokenizer: Tokenizer) -> Need:
    total = {p.uid: lengths[p.uid] + len(tokenizer.encode(p.solution)) + 1 for p in train}
    p = max(train, key=lambda p: total[p.uid])
    return Need(
        "SFT",
        total[p.uid],
        f"problem {p.uid}: prompt ({lengths[p.uid]} tokens) + worked solution and eos "
        f"({total[p.uid] - lengths[p.uid]} tokens)",
    )


def _warm_start_need(train, lengths: dict[str, int], tokenizer: Tokenizer, checks) -> Need:
    """The longest warm-start judge or reflection example among a few draws for each of the
    problems with the longest prompt + solution (the examples are random: an estimate)."""
    from megatron_spark.spark.warmstart import warm_start_example

    solution = {p.uid: len(tokenizer.encode(p.solution)) for p in train}
    longest = sorted(train, key=lambda p: lengths[p.uid] + solution[p.uid])[-LONGEST_QUESTIONS:]
    best = Need("SFT judge and reflection examples", 0, "")
    for p in longest:
        for kind in ("pointwise", "pairwise", "reflection"):
            for draw in range(4):
                example = warm_start_example(p, kind, random.Random(f"lengths:{draw}"), checks)
                if example is None:
                    continue
                prompt, reply = (
                    len(tokenizer.encode_prompt(example[0])),
                    len(tokenizer.encode(example[1])) + 1,
                )
                if prompt + reply > best.positions:
                    best = Need(
                        best.phase,
                        prompt + reply,
                        f"a {kind} example on problem {p.uid}: prompt ({prompt} tokens) + reply and eos ({reply} tokens)",
                    )
    return best
