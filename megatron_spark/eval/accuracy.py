"""Held-out accuracy of the policy held by a rollout engine and, for SPARK, of its judge and
reflection: what training logs every ``train.eval_every_steps`` and ``megatron-spark eval``
reports. Scorers take the roles of :class:`~megatron_spark.inference.context.Scoring` (a training
session or an :class:`~megatron_spark.inference.context.Inference`).

Each data-parallel replica evaluates its share of the items; counts are summed over the world.
"""

from __future__ import annotations

from megatron_spark.inference.context import Scoring
from megatron_spark.reward.verifiers import verify_batch
from megatron_spark.spark.checks import checks_for
from megatron_spark.spark.heldout import Pool, build_pool, evaluate_items, heldout_items

POOL_SAMPLES = 4
"""Samples per held-out problem from which the frozen pool of the policy's own wrong answers is
taken (temperature 1, before any training step)."""
POOL_SEED = 1234


def eval_problems(s: Scoring) -> list:
    problems = s.task.held_out()[: s.cfg.train.eval_num_problems]
    return problems[: len(problems) // s.par.dp_size * s.par.dp_size]


def verify_texts(s: Scoring, texts: list[str], answers: list[str]) -> list[float]:
    return [v.reward for v in verify_batch(s.verifier, texts, answers)]


def policy_accuracy(s: Scoring) -> dict[str, float]:
    """``eval/accuracy``: greedy, first ``train.eval_num_problems`` held-out problems."""
    problems = eval_problems(s)
    if not problems:
        return {}
    mine = s.par.my_share(problems)
    texts = s.rollout.greedy([p.prompt for p in mine], s.cfg.rollout.max_new_tokens)
    correct = s.par.on_leader(
        lambda: float(sum(r >= 1.0 for r in verify_texts(s, texts, [p.answer for p in mine])))
    )
    totals = s.par.sum_replicas({"correct": correct, "n": len(mine)})
    return {"eval/accuracy": totals["correct"] / max(1.0, totals["n"])}


def ensure_pool(s: Scoring, problems, pool: Pool | None) -> Pool:
    """``pool`` (the frozen pool of the policy's wrong answers, kept in checkpoints), or, when it
    is None, a new one sampled from the current policy."""
    if pool is not None:
        return pool
    from megatron_spark.rollout.protocol import SamplingParams

    params = SamplingParams(
        temperature=1.0,
        max_new_tokens=s.cfg.rollout.max_new_tokens,
        stop_token_ids=(s.tokenizer.eos_id,),
        seed=POOL_SEED + s.cfg.seed,
    )
    ids = [s.tokenizer.encode_prompt(p.prompt) for p in problems for _ in range(POOL_SAMPLES)]
    completions = s.rollout.generate(ids, params)  # every replica samples the whole list: same pool
    texts = [s.tokenizer.decode(c.token_ids) for c in completions]
    rewards = s.par.on_leader(
        lambda: verify_texts(s, texts, [p.answer for p in problems for _ in range(POOL_SAMPLES)])
    )
    k = POOL_SAMPLES
    return build_pool(
        problems,
        [texts[i * k : (i + 1) * k] for i in range(len(problems))],
        [rewards[i * k : (i + 1) * k] for i in range(len(problems))],
        s.cfg.task.verifier.box,
    )


def judge_accuracy(s: Scoring, pool: Pool) -> dict[str, float]:
    """Held-out pointwise/pairwise judge and reflection accuracy (greedy) on balanced items built
    from ``pool`` (:func:`ensure_pool`)."""
    problems = eval_problems(s)
    if not problems:
        return {}
    items = heldout_items(problems, pool, checks_for(s.task.name), seed=s.cfg.seed)
    mine = s.par.my_share(items)
    texts = s.rollout.greedy([h.item.prompt for h in mine], s.cfg.spark.max_new_tokens)
    result = s.par.on_leader(lambda: evaluate_items(mine, texts, lambda t, a: verify_texts(s, t, a)))
    # Turn the replica's rates back into counts so that replicas sum correctly.
    sums = {}
    for key in ("judge_pointwise", "judge_pairwise", "reflection"):
        n = result.get(f"{key}_items", 0.0)
        sums[f"{key}_n"] = n
        sums[f"{key}_ok"] = result.get(f"{key}_accuracy", 0.0) * n
    totals = s.par.sum_replicas(sums)
    return {
        f"eval/{key}_accuracy": totals[f"{key}_ok"] / max(1.0, totals[f"{key}_n"])
        for key in ("judge_pointwise", "judge_pairwise", "reflection")
    }


def evaluate(s: Scoring, pool: Pool | None, judge: bool) -> tuple[dict[str, float], Pool | None]:
    """Greedy held-out accuracy (``eval/accuracy``) and, with ``judge``, held-out judge and
    reflection accuracy (``eval/judge_*``, ``eval/reflection_accuracy``) on items built from
    ``pool`` (sampled now when None). Returns the metrics and the pool."""
    out = policy_accuracy(s)
    problems = eval_problems(s)
    if judge and problems:
        pool = ensure_pool(s, problems, pool)
        out.update(judge_accuracy(s, pool))
    return out, pool
