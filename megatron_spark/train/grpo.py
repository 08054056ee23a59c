"""GRPO: sample a group per prompt, verify, group-normalise, update with the clipped surrogate.

One step, as the stages read below: ``rollout`` (this DP rank's prompts x n samples from the
engine) -> ``verify`` -> ``advantages`` -> ``logprobs`` (old log-probs recomputed by the trainer,
reference log-probs for KL) -> ``train`` (``grpo.num_minibatches`` optimizer steps through the
fused loss head on packed micro-batches) -> ``sync`` (weight bridge into the engine).

Departures from the GRPO paper, and why:

* the loss is token-level, normalised by the step's response-token count over all micro-batches
  and DP ranks (DAPO's choice), so long and short responses weigh the same per token;
* the clip range can be asymmetric (``clip_high > clip_low``) to keep exploration alive;
* the KL penalty is optional and off by default: with verifiable rewards it mostly slows learning.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence

import torch

from megatron_spark.reward.verifiers import verify_batch
from megatron_spark.rollout.protocol import SamplingParams
from megatron_spark.train.advantages import group_advantages
from megatron_spark.train.batch import Sample
from megatron_spark.train.loss import LossCoefficients, adds_nothing, sample_token_counts
from megatron_spark.train.roles import Roles
from megatron_spark.train.seeds import SeedPurpose
from megatron_spark.train.stats import UpdateStats


def sample_groups(
    r: Roles,
    prompts: Sequence[str],
    n: int,
    max_new_tokens: int,
    purpose: SeedPurpose = SeedPurpose.POLICY_ROLLOUT,
    first: int = 0,
):
    """Completions of this rank's ``prompts`` (texts), ``n`` samples each, prompt-major.
    ``first``: the index of ``prompts[0]`` in the step-wide list this rank's share was cut from,
    so that every sample is drawn as in a one-process run."""
    ids = [r.tokenizer.encode_prompt(p) for p in prompts]
    params = SamplingParams(
        temperature=r.cfg.rollout.temperature,
        top_p=r.cfg.rollout.top_p,
        max_new_tokens=max_new_tokens,
        stop_token_ids=(r.tokenizer.eos_id,),
        seed=r.seed(purpose),
        first_row=first * n,
    )
    return r.rollout.generate([p for p in ids for _ in range(n)], params)


def rollout(r: Roles, problems, first: int = 0):
    """``completions`` for this rank's problems (``first``: see :func:`sample_groups`), n samples
    each, prompt-major."""
    ro = r.cfg.rollout
    return sample_groups(
        r, [p.prompt for p in problems], ro.num_samples_per_prompt, ro.max_new_tokens, first=first
    )


def score(r: Roles, problems, completions) -> tuple[torch.Tensor, int]:
    """Rewards ``[prompts, n]`` and the number of verifier timeouts."""
    n = r.cfg.rollout.num_samples_per_prompt
    return score_with(r, completions, [(p.answer, None, "") for p in problems for _ in range(n)], n)


def score_with(r: Roles, completions, targets, n: int) -> tuple[torch.Tensor, int]:
    """Rewards ``[groups, n]`` of ``completions`` against per-sample ``(label, choices, check)``:
    a verdict vocabulary scores the boxed verdict (and, with a non-empty ``check``, requires the
    reply to write that check before it: :func:`~megatron_spark.spark.verdict.judge_reward`),
    None runs the task's verifier on the answer.

    The replica leader verifies and shares: a timeout on one rank only must not give the ranks
    different advantages."""
    from megatron_spark.spark.verdict import judge_reward

    def verify():
        texts = [r.tokenizer.decode(c.token_ids) for c in completions]
        rewards = [0.0] * len(texts)
        plain = [i for i, (_, choices, _) in enumerate(targets) if choices is None]
        verdicts = verify_batch(r.verifier, [texts[i] for i in plain], [targets[i][0] for i in plain])
        for i, v in zip(plain, verdicts):
            rewards[i] = v.reward
        for i, (label, choices, check) in enumerate(targets):
            if choices is not None:
                rewards[i] = judge_reward(texts[i], label, choices, check)
        return rewards, sum(v.timed_out for v in verdicts)

    rewards, timeouts = r.par.on_leader(verify)
    return torch.tensor(rewards, dtype=torch.float64).view(-1, n), timeouts


def to_samples(
    completions, advantages: torch.Tensor, rewards: torch.Tensor, weight: float = 1.0
) -> list[Sample]:
    return [
        Sample(
            prompt_ids=list(c.prompt_ids),
            response_ids=list(c.token_ids),
            rollout_logprobs=list(c.logprobs),
            advantage=float(a),
            reward=float(r),
            weight=weight,
        )
        for c, a, r in zip(completions, advantages.flatten(), rewards.flatten())
    ]


def fill_logprobs(r: Roles, micro_batches) -> None:
    """Old (recomputed) and reference log-probs of the micro-batches, in place (last stage)."""
    if r.cfg.grpo.old_logprobs == "recompute":
        old = r.policy.forward_logprobs(micro_batches)
        for mb, lp in zip(micro_batches, old or [None] * len(micro_batches)):
            mb.old_logprobs = lp
    if r.policy.ref_model is not None:
        ref = r.policy.forward_logprobs(micro_batches, reference=True)
        for mb, lp in zip(micro_batches, ref or [None] * len(micro_batches)):
            mb.ref_logprobs = lp


def minibatches(groups: list[list[Sample]], k: int, kinds: Sequence[str] | None = None) -> list[list[Sample]]:
    """Split whole groups into ``k`` near-equal chunks, in order.

    With ``kinds`` (one per group), the groups are first interleaved so that each kind is spread
    evenly over the order (a group at position ``i`` of ``n`` in its kind goes to ``(i + 0.5) / n``),
    so every optimizer step sees its share of each kind. The loss normalises each objective by its
    token count in the step: a chunk holding all the policy groups and two verdict cross-entropy
    samples would give those two samples' few tokens the whole cross-entropy weight of that step.
    Either way there are ``min(k, len(groups))`` chunks, which data-parallel ranks rely on.
    """
    if kinds is not None:
        if len(kinds) != len(groups):
            raise ValueError(f"minibatches: {len(kinds)} kinds for {len(groups)} groups")
        total = Counter(kinds)
        seen: dict[str, int] = {}
        where = []
        for kind in kinds:
            i = seen[kind] = seen.get(kind, -1) + 1
            where.append((i + 0.5) / total[kind])
        groups = [groups[j] for j in sorted(range(len(groups)), key=lambda j: where[j])]
    bounds = [round(j * len(groups) / k) for j in range(k + 1)]
    return [[x for g in groups[a:b] for x in g] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def to_train(chunk: list[Sample], coef: LossCoefficients, skip: bool) -> list[Sample]:
    """The samples of ``chunk`` that go through the model: with ``skip``, all but those that add
    nothing to the loss or its gradient (``grpo.skip_zero_advantage``); at least one is kept, so
    that every rank takes part in the optimizer step's gradient reduction."""
    if not skip:
        return chunk
    kept = [x for x in chunk if not adds_nothing(x, coef)]
    return kept or [min(chunk, key=lambda x: x.num_tokens)]


def groups_of(samples: list[Sample], group_size: int) -> list[list[Sample]]:
    return [samples[i : i + group_size] for i in range(0, len(samples), group_size)]


def update(
    r: Roles, groups: list[list[Sample]], ce_coef: float = 0.0, kinds: Sequence[str] | None = None
) -> UpdateStats:
    """``grpo.num_minibatches`` optimizer steps on the groups' samples, then the weight sync.
    ``ce`` samples (teacher-forced) are weighed by ``ce_coef`` over their own token count.
    ``kinds`` (one per group) spreads each kind of group evenly over the optimizer steps
    (:func:`minibatches`). Returns the steps' statistics, summed over the world."""
    cfg = r.cfg
    coef = cfg.grpo.coefficients(ce=ce_coef)
    # Every DP rank must take the same number of optimizer steps (each one all-reduces the
    # gradients): as many as the rank with the fewest groups can fill, at most num_minibatches.
    k = r.par.min_over_replicas(min(cfg.grpo.num_minibatches, len(groups)))
    if k < 1:
        raise RuntimeError("update: a data-parallel rank has no samples (callers must give each one)")
    chunks = minibatches(groups, k, kinds)
    # Normalisers of every chunk's loss: all its response tokens, trained or not.
    counts = [sample_token_counts(chunk) for chunk in chunks]
    trained = [to_train(chunk, coef, cfg.grpo.skip_zero_advantage) for chunk in chunks]
    plans = [r.policy.micro_batches(chunk) for chunk in trained]
    with r.timer("logprobs"):  # every chunk's old log-probs before the first update
        for mbs in plans:
            fill_logprobs(r, mbs)
    stats = UpdateStats()
    for i, mbs in enumerate(plans):
        with r.timer("train"):
            stats = stats + r.policy.train_on(mbs, coef, counts[i])
    # All RL response tokens, trained or left out by the skip (counted by the statistics owner).
    all_rl = float(sum(c[0] for c in counts)) if r.par.owns_stats else 0.0
    with r.timer("sync"):
        r.rollout.sync()
    return dataclasses.replace(stats, all_rl_tokens=all_rl).reduced(r.par)


def policy_metrics(r: Roles, completions, rewards: torch.Tensor, timeouts: int) -> dict[str, float]:
    """``policy/*`` and ``reward/timeouts`` of this step's task prompts, over the world."""
    totals = r.par.sum_replicas(
        {
            "samples": len(completions),
            "reward": float(rewards.sum()),
            "correct": float((rewards >= 1.0).sum()),
            "resp_tokens": float(sum(len(c.token_ids) for c in completions)),
            "truncated": float(sum(c.finish_reason == "length" for c in completions)),
            "timeouts": float(timeouts),
            "zero_adv_groups": float((rewards.amax(1) == rewards.amin(1)).sum()),
            "groups": float(rewards.shape[0]),
        }
    )
    n = max(1.0, totals["samples"])
    return {
        "policy/reward_mean": totals["reward"] / n,
        "policy/accuracy": totals["correct"] / n,
        "policy/response_tokens_mean": totals["resp_tokens"] / n,
        "policy/truncated_fraction": totals["truncated"] / n,
        "policy/zero_advantage_groups": totals["zero_adv_groups"] / max(1.0, totals["groups"]),
        "reward/timeouts": totals["timeouts"],
    }


def throughput(r: Roles, samples: list[Sample], start: float) -> dict[str, float]:
    totals = r.par.sum_replicas({"tokens": float(sum(x.num_tokens for x in samples)), "n": len(samples)})
    elapsed = time.perf_counter() - start
    return {"perf/tokens_per_s": totals["tokens"] / elapsed, "perf/samples_per_s": totals["n"] / elapsed}


def policy_phase(r: Roles):
    """Rollout, verify and group advantages of this step's task prompts."""
    cfg = r.cfg
    problems, first = r.par.my_slice(r.state.sampler.next_batch(cfg.train.num_prompts_per_step))
    with r.timer("rollout"):
        completions = rollout(r, problems, first)
    with r.timer("verify"):
        rewards, timeouts = score(r, problems, completions)
    return problems, completions, rewards, timeouts


def optimizer_steps(cfg) -> int:
    """Optimizer steps one GRPO step takes: one per minibatch."""
    return cfg.grpo.num_minibatches


def grpo_step(r: Roles) -> tuple[dict[str, float], UpdateStats]:
    """One GRPO step: its metrics and the update's statistics (the loop counts the step)."""
    start = time.perf_counter()
    problems, completions, rewards, timeouts = policy_phase(r)
    r.rollout.sleep()
    with r.timer("advantages"):
        samples = to_samples(completions, group_advantages(rewards, r.cfg.grpo.advantage), rewards)
    t = update(r, groups_of(samples, r.cfg.rollout.num_samples_per_prompt))
    metrics = {**policy_metrics(r, completions, rewards, timeouts), **t.metrics()}
    metrics.update(throughput(r, samples, start))
    return metrics, t
