"""Test-time scaling with the policy as its own judge: self-reflection and best-of-n.

Both work on any engine through one callable, ``generate(prompt_texts, params) -> completions``,
and the tokenizer (to read texts and find the verdict tokens).

``self_reflect`` (the paper's test-time loop): answer greedily; for up to ``rounds`` rounds, ask
the model (pointwise, Yes/No, greedily) whether its current final answer is correct; an explicit
Yes accepts it, anything else (No, an unboxed or ambiguous verdict, no final answer) asks it to
solve the problem again, told that its previous response was wrong. The answer that counts is the
last accepted one or, when the rounds run out, the last reflected one. At most ``1 + 2 * rounds``
generations per problem. The new attempt is sampled (``redo_temperature``, default 1.0, the
temperature its reflection items were trained at; seeded per round); 0 decodes it greedily, as
the answer and the verdicts are. A greedy redo mostly returns the rejected answer (the prompt
differs from the question only by the attempt and one sentence, so greedy decoding retraces it;
:func:`redo_outcomes` counts how often), and a greedy second round after an unchanged redo is the
first one again. docs/experiments/tiny_countdown.md measures both. ``redo_prompt="question"`` is
the control: the new attempt is a fresh sample of the bare question, without the attempt or the
sentence that it was wrong (verify, then resample), which separates what the reflection prompt
adds from what resampling does.

``best_of_n``: sample ``n`` answers; score each by the model's own probability that it is correct,
``p(Yes)`` of a greedy pointwise verdict (``1 - p(No)`` when it says No; 0 when no verdict parses);
pick the highest score, ties broken by how many samples share the answer (``vote_key``: the text,
or for Countdown the expression's value), then by sample order.

``styles`` / ``style`` are the task's template styles (:attr:`megatron_spark.spark.checks.TaskChecks.styles`;
best-of-n asks only judge prompts).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from megatron_spark.reward.extract import boxed_spans, extract_boxed
from megatron_spark.rollout.protocol import GREEDY_TOP_P, Completion, SamplingParams
from megatron_spark.spark import templates
from megatron_spark.spark.verdict import parse_verdict

Generate = Callable[[list[str], SamplingParams], list[Completion]]
YES, NO = templates.POINTWISE_VERDICTS["yesno"]


@dataclass
class TTSResult:
    responses: list[str]
    """The response that counts, per problem."""
    generations: list[int]
    """Generations spent per problem."""
    rounds: list[list[dict]] = field(default_factory=list)
    """Per problem, what each self-reflection round did (empty for best-of-n): ``answer`` (the
    final answer judged, None when the response had none), ``verdict`` (``Yes``/``No``, None when
    unjudged or unparseable), ``judge_reply`` (the judge's text, None when unjudged), and, when the
    answer was not accepted, ``reflection`` (the new response)."""


def _greedy(max_new_tokens: int, stop: Sequence[int]) -> SamplingParams:
    return SamplingParams(
        top_p=GREEDY_TOP_P, max_new_tokens=max_new_tokens, stop_token_ids=tuple(stop), seed=0
    )


def self_reflect(
    questions: Sequence[str],
    generate: Generate,
    tokenizer,
    rounds: int,
    max_new_tokens: int,
    judge_max_new_tokens: int,
    box: str = "last",
    styles: templates.Styles = templates.QUESTION_LAST,
    redo_temperature: float = 1.0,
    seed: int = 0,
    first: Sequence[str] | None = None,
    redo_prompt: Literal["reflect", "question"] = "reflect",
) -> TTSResult:
    """``first``: the greedy responses to ``questions`` when the caller already has them (they
    are not generated again). ``redo_prompt``: ``"reflect"`` (the reflection prompt: question,
    attempt, "it was wrong") or ``"question"`` (the bare question again)."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if not (redo_temperature >= 0 and math.isfinite(redo_temperature)):
        raise ValueError(f"redo_temperature must be a finite number >= 0, got {redo_temperature}")
    if redo_prompt not in ("reflect", "question"):
        raise ValueError(f"redo_prompt must be 'reflect' or 'question', got {redo_prompt!r}")
    stop = (tokenizer.eos_id,)
    decode = tokenizer.decode
    if first is None:
        current = [decode(c.token_ids) for c in generate(list(questions), _greedy(max_new_tokens, stop))]
    elif len(first) != len(questions):
        raise ValueError(f"self_reflect: {len(first)} first responses for {len(questions)} questions")
    else:
        current = list(first)
    generations = [1] * len(questions)
    trace: list[list[dict]] = [[] for _ in questions]
    active = list(range(len(questions)))
    for round_index in range(rounds):
        if not active:
            break
        finals = {i: extract_boxed(current[i], box) for i in active}
        judged = [i for i in active if finals[i]]
        prompts = [
            templates.pointwise_prompt(questions[i], finals[i], "yesno", 0, styles.judge) for i in judged
        ]
        verdicts = generate(prompts, _greedy(judge_max_new_tokens, stop)) if prompts else []
        replies = {i: decode(c.token_ids) for i, c in zip(judged, verdicts)}
        accepted = set()
        for i in active:
            reply = replies.get(i)
            verdict = parse_verdict(reply, (YES, NO)) if reply is not None else None
            trace[i].append({"answer": finals[i] or None, "verdict": verdict, "judge_reply": reply})
            if reply is not None:
                generations[i] += 1
            if verdict == YES:
                accepted.add(i)
        active = [i for i in active if i not in accepted]
        if not active:
            break
        prompts = [
            templates.reflection_prompt(questions[i], current[i], "full", "wrong", 0, styles.reflection)
            if redo_prompt == "reflect"
            else questions[i]
            for i in active
        ]
        redo = (
            SamplingParams(
                temperature=redo_temperature,
                max_new_tokens=max_new_tokens,
                stop_token_ids=stop,
                seed=seed + round_index,
            )
            if redo_temperature > 0
            else _greedy(max_new_tokens, stop)
        )
        for i, c in zip(active, generate(prompts, redo)):
            current[i] = decode(c.token_ids)
            trace[i][-1]["reflection"] = current[i]
            generations[i] += 1
    return TTSResult(current, generations, trace)


def redo_outcomes(
    result: TTSResult, first_right: Sequence[bool], final_right: Sequence[bool], box: str = "last"
) -> dict[str, int]:
    """Where self-reflection's gain comes from, as counts: problems whose first (greedy) answer was
    wrong (``first_wrong``) and of those the ones right at the end (``fixed``); first answers that
    were right (``first_right``) and of those the ones wrong at the end (``broken``); redos of a
    judged answer (``redos``) and of those the ones whose final answer is the rejected one again
    (``repeats``). Accuracy gain = (fixed - broken) / problems."""
    if not (len(first_right) == len(final_right) == len(result.rounds)):
        raise ValueError(
            f"redo_outcomes: {len(result.rounds)} traces, {len(first_right)} first and "
            f"{len(final_right)} final scores; expected one of each per problem"
        )
    out = dict.fromkeys(("first_wrong", "fixed", "first_right", "broken", "redos", "repeats"), 0)
    for trace, first, final in zip(result.rounds, first_right, final_right):
        out["first_right" if first else "first_wrong"] += 1
        out["broken"] += bool(first and not final)
        out["fixed"] += bool(final and not first)
        for step in trace:
            if step["answer"] is not None and "reflection" in step:
                out["redos"] += 1
                out["repeats"] += extract_boxed(step["reflection"], box) == step["answer"]
    return out


def verdict_probability(
    completion: Completion, tokenizer, choices: Sequence[str]
) -> tuple[str | None, float]:
    """The parsed verdict of a judge completion and the probability of its tokens (the product of
    the sampled-token probabilities over the last box's content)."""
    text = tokenizer.decode(completion.token_ids)
    verdict = parse_verdict(text, choices)
    if verdict is None:
        return None, 0.0
    # The last balanced box, found by the rule parse_verdict reads boxes with (so ``\fbox{}``,
    # ``\boxed {}`` and a trailing unclosed box of a truncated reply are handled alike).
    start, end = boxed_spans(text)[-1]
    logprob, offset = 0.0, 0
    for k in range(len(completion.token_ids)):
        nxt = len(tokenizer.decode(completion.token_ids[: k + 1]))
        if nxt > start and offset < end:  # this token overlaps the verdict's characters
            logprob += completion.logprobs[k]
        offset = nxt
        if offset >= end:
            break
    return verdict, math.exp(logprob)


def best_of_n(
    questions: Sequence[str],
    generate: Generate,
    tokenizer,
    n: int,
    max_new_tokens: int,
    judge_max_new_tokens: int,
    seed: int = 0,
    box: str = "last",
    style: templates.Style = "question_last",
    vote_key: Callable[[int, str], Hashable | None] | None = None,
) -> TTSResult:
    """``vote_key(problem_index, final)``: what counts as the same answer in the tie-break
    (default: the final answer's text)."""
    stop = (tokenizer.eos_id,)
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, stop_token_ids=stop, seed=seed)
    samples = generate([q for q in questions for _ in range(n)], params)
    texts = [tokenizer.decode(c.token_ids) for c in samples]
    finals = [extract_boxed(t, box) for t in texts]
    judged = [j for j, f in enumerate(finals) if f]
    prompts = [templates.pointwise_prompt(questions[j // n], finals[j], "yesno", 0, style) for j in judged]
    verdicts = generate(prompts, _greedy(judge_max_new_tokens, stop)) if prompts else []
    score = [0.0] * len(samples)
    for j, c in zip(judged, verdicts):
        verdict, p = verdict_probability(c, tokenizer, (YES, NO))
        score[j] = p if verdict == YES else (1.0 - p if verdict == NO else 0.0)
    out = []
    for i in range(len(questions)):
        rows = range(i * n, (i + 1) * n)
        keys = {j: (vote_key(i, finals[j]) if vote_key else finals[j]) if finals[j] else None for j in rows}
        votes = Counter(k for k in keys.values() if k is not None)
        best = max(rows, key=lambda j: (score[j], votes.get(keys[j], 0), -j))
        out.append(texts[best])
    return TTSResult(out, [n + sum(1 for j in judged if j // n == i) for i in range(len(questions))])
