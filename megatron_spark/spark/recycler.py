"""Recycling: one step's scored prompt groups -> judge and reflection items for the same model.

Rules, per prompt group (built before the policy update that uses the group):

==================  ===========================================================================
group outcome       judge item (at most one per group)
==================  ===========================================================================
all correct         pointwise: one correct answer, label "correct"
all wrong           pointwise: one wrong answer that has a final answer, label "incorrect"
                    (no item when no response boxed an answer)
mixed               pairwise with probability ``pairwise_fraction`` (one correct and one wrong
                    answer, the correct one in slot A or B at random, label = its slot); else
                    pointwise with the polarity the step has fewer of so far (ties at random)
==================  ===========================================================================

Reflection: one wrong response per group that boxed an answer (a group without one gives none),
shown whole or as its final answer only, with a neutral or an "it is wrong" prompt; the label is the ground truth.

A judge sees the question and the final answers only, never the reasoning (as in the paper).
Per step: pointwise labels are balanced by dropping random items of the majority label, then the
judge and reflection caps keep a random subset (pointwise items leave in correct/incorrect pairs,
so the cap does not undo the balance). The items come back shuffled, so that the queue serves a
mix of kinds each step. Every random choice comes from the ``rng`` passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from megatron_spark.data.tasks import Problem
from megatron_spark.reward.extract import BoxChoice, extract_boxed
from megatron_spark.spark import templates
from megatron_spark.spark.config import SparkConfig
from megatron_spark.spark.templates import QUESTION_LAST, Style, Styles

CORRECT, INCORRECT = "correct", "incorrect"


@dataclass(frozen=True)
class Item:
    """A recycled prompt with a verifiable target."""

    kind: str
    """``pointwise``, ``pairwise`` or ``reflection``."""
    prompt: str
    """The rendered prompt text."""
    label: str
    """Judge items: the verdict that earns reward (a member of ``choices``); reflection items:
    the ground-truth answer (checked by the task's verifier)."""
    choices: tuple[str, ...]
    """The verdict vocabulary of a judge item; empty for reflection."""
    step: int
    """The training step whose rollouts the item was built from."""
    source_uid: str
    """The problem it came from."""
    variant: str
    """``yesno`` / ``ab`` (pointwise), ``ab`` (pairwise), ``full`` / ``answer`` (reflection)."""
    polarity: str = ""
    """Pointwise: whether the shown answer is ``correct`` or ``incorrect``; else empty."""
    check: str = ""
    """Judge items: the task's worked check of the shown answer(s), which a judge reply must write
    out under ``spark.judge_reward: checked``; empty where the task has none."""

    def to_dict(self) -> dict:
        return {**asdict(self), "choices": list(self.choices)}

    @staticmethod
    def from_dict(d: dict) -> Item:
        return Item(**{**d, "choices": tuple(d["choices"])})


@dataclass(frozen=True)
class ScoredGroup:
    """One prompt's sampled responses and their rewards."""

    problem: Problem
    responses: Sequence[str]
    rewards: Sequence[float]


Reasoning = Callable[[Problem, Sequence[str]], "str | None"]
"""A task's worked check of one or two candidates (:meth:`TaskChecks.reasoning`)."""


def pointwise_item(
    problem: Problem,
    answer: str,
    correct: bool,
    step: int,
    cfg: SparkConfig,
    rng,
    style: Style,
    reasoning: Reasoning | None = None,
) -> Item:
    vocab = rng.choice(cfg.pointwise_vocabs)
    yes, no = templates.POINTWISE_VERDICTS[vocab]
    t = rng.randrange(templates.NUM_POINTWISE_TEMPLATES)
    return Item(
        kind="pointwise",
        prompt=templates.pointwise_prompt(problem.prompt, answer, vocab, t, style),
        label=yes if correct else no,
        choices=(yes, no),
        step=step,
        source_uid=problem.uid,
        variant=vocab,
        polarity=CORRECT if correct else INCORRECT,
        check=(reasoning(problem, [answer]) or "") if reasoning else "",
    )


def pairwise_item(
    problem: Problem, right: str, wrong: str, step: int, rng, style: Style, reasoning: Reasoning | None = None
) -> Item:
    right_first = rng.random() < 0.5
    a, b = (right, wrong) if right_first else (wrong, right)
    t = rng.randrange(templates.NUM_PAIRWISE_TEMPLATES)
    return Item(
        kind="pairwise",
        prompt=templates.pairwise_prompt(problem.prompt, a, b, t, style),
        label=templates.PAIRWISE_CHOICES[0 if right_first else 1],
        choices=templates.PAIRWISE_CHOICES,
        step=step,
        source_uid=problem.uid,
        variant="ab",
        check=(reasoning(problem, [a, b]) or "") if reasoning else "",
    )


def reflection_item(
    problem: Problem, response: str, final: str, step: int, cfg: SparkConfig, rng, style: Style
) -> Item:
    show = "full" if rng.random() < cfg.reflection_full_fraction else "answer"
    tone = "wrong" if rng.random() < cfg.reflection_wrong_tone_fraction else "neutral"
    t = rng.randrange(templates.NUM_REFLECTION_TEMPLATES)
    attempt = response if show == "full" else final
    return Item(
        kind="reflection",
        prompt=templates.reflection_prompt(problem.prompt, attempt, show, tone, t, style),
        label=problem.answer,
        choices=(),
        step=step,
        source_uid=problem.uid,
        variant=show,
    )


def _judge_item(
    group: ScoredGroup,
    finals,
    step: int,
    cfg: SparkConfig,
    rng,
    counts: dict,
    style: Style,
    reasoning: Reasoning | None,
) -> Item | None:
    right = [f for f, r in zip(finals, group.rewards) if r >= 1.0 and f]
    wrong = [f for f, r in zip(finals, group.rewards) if r < 1.0 and f]
    all_correct = all(r >= 1.0 for r in group.rewards)
    all_wrong = all(r < 1.0 for r in group.rewards)
    if all_correct or all_wrong:
        pool = right if all_correct else wrong
        if not cfg.pointwise or not pool:
            return None
        return pointwise_item(group.problem, rng.choice(pool), all_correct, step, cfg, rng, style, reasoning)
    if not right:  # a reward of 1 without a box (a user verifier): nothing to show
        return None
    want_pairwise = cfg.pairwise and (not cfg.pointwise or rng.random() < cfg.pairwise_fraction)
    if want_pairwise and wrong:
        return pairwise_item(group.problem, rng.choice(right), rng.choice(wrong), step, rng, style, reasoning)
    if not cfg.pointwise:
        return None
    if not wrong or counts[CORRECT] < counts[INCORRECT]:
        correct = True
    elif counts[CORRECT] > counts[INCORRECT]:
        correct = False
    else:
        correct = rng.random() < 0.5
    pick = rng.choice(right if correct else wrong)
    return pointwise_item(group.problem, pick, correct, step, cfg, rng, style, reasoning)


def _balance(items: list[Item], rng) -> list[Item]:
    """Drop random pointwise items of the majority label until both labels are equally many."""
    pos = [i for i, x in enumerate(items) if x.kind == "pointwise" and x.polarity == CORRECT]
    neg = [i for i, x in enumerate(items) if x.kind == "pointwise" and x.polarity == INCORRECT]
    major = pos if len(pos) > len(neg) else neg
    drop = set(rng.sample(major, abs(len(pos) - len(neg))))
    return [x for i, x in enumerate(items) if i not in drop]


def _cap_judge(items: list[Item], cap: int, rng) -> list[Item]:
    """At most ``cap`` judge items; pointwise items go in (correct, incorrect) pairs."""
    if len(items) <= cap:
        return items
    pos = [x for x in items if x.kind == "pointwise" and x.polarity == CORRECT]
    neg = [x for x in items if x.kind == "pointwise" and x.polarity == INCORRECT]
    pairs = list(zip(pos, neg))
    units = [list(p) for p in pairs] + [[x] for x in items if x.kind == "pairwise"]
    units += [[x] for x in (pos[len(pairs) :] + neg[len(pairs) :])]  # only when balancing is off
    rng.shuffle(units)
    kept: list[Item] = []
    for unit in units:
        if len(kept) + len(unit) <= cap:
            kept.extend(unit)
    return kept


def recycle(
    groups: Sequence[ScoredGroup],
    step: int,
    cfg: SparkConfig,
    box: BoxChoice,
    rng: random.Random,
    styles: Styles = QUESTION_LAST,
    reasoning: Reasoning | None = None,
) -> list[Item]:
    """Judge and reflection items from one step's scored groups (rules in the module docstring);
    ``styles``: the task's template styles (:attr:`TaskChecks.styles`); ``reasoning``: the task's
    worked checks, stored in each judge item (:attr:`Item.check`), or None."""
    judge: list[Item] = []
    reflection: list[Item] = []
    counts = {CORRECT: 0, INCORRECT: 0}
    for group in groups:
        if len(group.responses) != len(group.rewards):
            raise ValueError(
                f"group {group.problem.uid}: {len(group.responses)} responses, {len(group.rewards)} rewards"
            )
        finals = [extract_boxed(r, box) for r in group.responses]
        if cfg.pointwise or cfg.pairwise:
            item = _judge_item(group, finals, step, cfg, rng, counts, styles.judge, reasoning)
            if item is not None:
                judge.append(item)
                if item.kind == "pointwise":
                    counts[item.polarity] += 1
        wrong = [i for i, r in enumerate(group.rewards) if r < 1.0 and finals[i]]
        if cfg.reflection and wrong:
            i = rng.choice(wrong)
            reflection.append(
                reflection_item(
                    group.problem, group.responses[i], finals[i], step, cfg, rng, styles.reflection
                )
            )
    if cfg.balance_pointwise:
        judge = _balance(judge, rng)
    judge = _cap_judge(judge, cfg.max_judge_items_per_step, rng)
    if len(reflection) > cfg.max_reflection_items_per_step:
        keep = sorted(rng.sample(range(len(reflection)), cfg.max_reflection_items_per_step))
        reflection = [reflection[i] for i in keep]
    items = judge + reflection
    rng.shuffle(items)  # kinds interleaved in the queue, so every step trains a mix
    return items
