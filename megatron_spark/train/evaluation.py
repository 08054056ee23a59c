"""Held-out evaluation during training: policy accuracy and, for SPARK, judge and reflection.

Each data-parallel replica evaluates its share of the items; counts are summed over the world.
"""

from __future__ import annotations

from megatron_spark.reward.verifiers import verify_batch
from megatron_spark.spark.checks import checks_for
from megatron_spark.spark.heldout import build_pool, evaluate_items, heldout_items
from megatron_spark.train.session import Session

POOL_SAMPLES = 4
"""Samples per held-out problem from which the frozen pool of the policy's own wrong answers is
taken (temperature 1, before any training step)."""
POOL_SEED = 1234


def eval_problems(s: Session) -> list:
    problems = s.task.held_out()[: s.cfg.train.eval_num_problems]
    return problems[: len(problems) // s.par.dp_size * s.par.dp_size]


def verify_texts(s: Session, texts: list[str], answers: list[str]) -> list[float]:
    return [v.reward for v in verify_batch(s.verifier, texts, answers)]


def policy_accuracy(s: Session) -> dict[str, float]:
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


def ensure_pool(s: Session, problems) -> None:
    """Sample the frozen pool of the current policy's wrong answers once (kept in checkpoints)."""
    if s.state.judge_pool is not None:
        return
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
    s.state.judge_pool = build_pool(
        problems,
        [texts[i * k : (i + 1) * k] for i in range(len(problems))],
        [rewards[i * k : (i + 1) * k] for i in range(len(problems))],
        s.cfg.task.verifier.box,
    )


def judge_accuracy(s: Session) -> dict[str, float]:
    """Held-out pointwise/pairwise judge and reflection accuracy (greedy) on balanced items."""
    problems = eval_problems(s)
    if not problems:
        return {}
    ensure_pool(s, problems)
    items = heldout_items(problems, s.state.judge_pool, checks_for(s.task.name), seed=s.cfg.seed)
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


def evaluate(s: Session) -> dict[str, float]:
    """Greedy held-out accuracy (``eval/accuracy``) and, with ``train.eval_judge``, held-out
    judge and reflection accuracy (``eval/judge_*``, ``eval/reflection_accuracy``)."""
    with s.timer("eval"):
        out = policy_accuracy(s)
        if s.cfg.train.eval_judge:
            out.update(judge_accuracy(s))
    return out
