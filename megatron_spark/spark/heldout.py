"""Held-out judge and reflection items from a frozen answer pool, and their greedy evaluation.

The pool holds, per held-out problem, the wrong final answers (and responses) that the initial
policy sampled for it; it is built once, before training, and saved with the run, so every
evaluation of a run (and every run started from the same checkpoint with the same seed) scores the
same items. Items are balanced by construction:

* pointwise: even problems show the right answer, odd ones a wrong one; wrong answers alternate
  between the policy's own (when the pool has one) and a perturbation of the right answer;
  the verdict vocabulary alternates between Yes/No and A/B;
* pairwise: the right answer against a wrong one (same alternation of sources), the right one in
  slot A and B alternately;
* reflection: a wrong attempt (the policy's whole response, or a perturbed final answer) with the
  ground truth as the target.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from megatron_spark.data.tasks import Problem
from megatron_spark.reward.extract import extract_boxed
from megatron_spark.spark import templates
from megatron_spark.spark.checks import TaskChecks
from megatron_spark.spark.recycler import CORRECT, INCORRECT, Item
from megatron_spark.spark.verdict import parse_verdict

Pool = dict[str, list[tuple[str, str]]]
"""Problem uid -> the policy's wrong ``(final answer, response)`` pairs."""


@dataclass(frozen=True)
class HeldOutItem:
    item: Item
    source: str
    """Where the wrong answer came from: ``policy``, ``perturbed``, or ``none`` (right answer)."""
    shown: tuple[str, ...] = ()
    """The final answers the item shows (pairwise: slots A, B; reflection: the wrong one)."""


def build_pool(
    problems: Sequence[Problem], responses: Sequence[Sequence[str]], rewards, box: str = "last"
) -> Pool:
    """The wrong, boxed answers among each problem's sampled ``responses`` (deduplicated)."""
    pool: Pool = {}
    for p, texts, rs in zip(problems, responses, rewards):
        seen, wrong = set(), []
        for text, r in zip(texts, rs):
            final = extract_boxed(text, box)
            if r < 1.0 and final and final not in seen:
                seen.add(final)
                wrong.append((final, text))
        pool[p.uid] = wrong
    return pool


def _wrong(
    p: Problem, pool: Pool, want_policy: bool, checks: TaskChecks, rng: random.Random
) -> tuple[str, str, str] | None:
    """``(final, response, source)`` of a wrong answer to ``p``."""
    if want_policy and pool.get(p.uid):
        final, text = pool[p.uid][0]
        return final, text, "policy"
    fake = checks.perturb(p, rng)
    if fake is None:
        if pool.get(p.uid):
            final, text = pool[p.uid][0]
            return final, text, "policy"
        return None
    return fake, fake, "perturbed"


def heldout_items(
    problems: Sequence[Problem], pool: Pool, checks: TaskChecks, seed: int = 0
) -> list[HeldOutItem]:
    """Pointwise, pairwise and reflection items, one of each per problem (rules in the module
    docstring); deterministic in ``problems``, ``pool``, the task's checks and ``seed``."""
    out = []
    for i, p in enumerate(problems):
        rng = random.Random(f"heldout:{seed}:{p.uid}")
        wrong = _wrong(p, pool, want_policy=(i // 2) % 2 == 0, checks=checks, rng=rng)
        if wrong is None:
            continue
        final, text, source = wrong
        vocab = ("yesno", "ab")[(i // 4) % 2]
        yes, no = templates.POINTWISE_VERDICTS[vocab]
        correct = i % 2 == 0
        shown = p.right_answer if correct else final
        style = checks.styles.judge
        prompt = templates.pointwise_prompt(
            p.prompt, shown, vocab, rng.randrange(templates.NUM_POINTWISE_TEMPLATES), style
        )
        out.append(
            HeldOutItem(
                Item(
                    "pointwise",
                    prompt,
                    yes if correct else no,
                    (yes, no),
                    -1,
                    p.uid,
                    vocab,
                    CORRECT if correct else INCORRECT,
                ),
                "none" if correct else source,
                (shown,),
            )
        )
        right_first = (i // 2) % 2 == 1
        a, b = (p.right_answer, final) if right_first else (final, p.right_answer)
        t = rng.randrange(templates.NUM_PAIRWISE_TEMPLATES)
        prompt = templates.pairwise_prompt(p.prompt, a, b, t, style)
        label = templates.PAIRWISE_CHOICES[0 if right_first else 1]
        out.append(
            HeldOutItem(
                Item("pairwise", prompt, label, templates.PAIRWISE_CHOICES, -1, p.uid, "ab"), source, (a, b)
            )
        )
        show = "full" if source == "policy" else "answer"
        tone = ("wrong", "neutral")[i % 2]
        t = rng.randrange(templates.NUM_REFLECTION_TEMPLATES)
        attempt = text if show == "full" else final
        prompt = templates.reflection_prompt(p.prompt, attempt, show, tone, t, checks.styles.reflection)
        out.append(HeldOutItem(Item("reflection", prompt, p.answer, (), -1, p.uid, show), source, (final,)))
    return out


def evaluate_items(
    items: Sequence[HeldOutItem], texts: Sequence[str], verify: Callable[[list[str], list[str]], list[float]]
) -> dict[str, float]:
    """Accuracy per kind (``judge_pointwise_accuracy``, ``judge_pairwise_accuracy``,
    ``reflection_accuracy``) of the greedy responses ``texts`` to ``items``, the verdict parse
    rate, and pointwise accuracy by wrong-answer source."""
    judge = [(h, t) for h, t in zip(items, texts) if h.item.choices]
    refl = [(h, t) for h, t in zip(items, texts) if not h.item.choices]
    parsed = [parse_verdict(t, h.item.choices) for h, t in judge]
    right = [v == h.item.label for (h, _), v in zip(judge, parsed)]
    out: dict[str, float] = {}
    for kind in ("pointwise", "pairwise"):
        rows = [r for (h, _), r in zip(judge, right) if h.item.kind == kind]
        out[f"judge_{kind}_accuracy"] = sum(rows) / max(1, len(rows))
        out[f"judge_{kind}_items"] = float(len(rows))
    for kind in ("pointwise", "pairwise"):
        for source in ("none", "policy", "perturbed"):
            rows = [r for (h, _), r in zip(judge, right) if h.item.kind == kind and h.source == source]
            if rows:
                out[f"judge_{kind}_accuracy_{source}"] = sum(rows) / len(rows)
    out["judge_verdict_parse_rate"] = sum(v is not None for v in parsed) / max(1, len(parsed))
    if refl:
        scores = verify([t for _, t in refl], [h.item.label for h, _ in refl])
        out["reflection_accuracy"] = sum(s >= 1.0 for s in scores) / len(refl)
        out["reflection_items"] = float(len(refl))
    return out
