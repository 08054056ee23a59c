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

import time

import torch

from megatron_spark.reward.verifiers import verify_batch
from megatron_spark.rollout.protocol import SamplingParams
from megatron_spark.train.advantages import group_advantages
from megatron_spark.train.batch import LossCoefficients, Sample, build_micro_batches
from megatron_spark.train.session import Session


def rollout(s: Session, problems):
    """``(prompt_ids, completions)`` for this rank's problems, n samples each, prompt-major."""
    n = s.cfg.rollout.num_samples_per_prompt
    prompts = [s.tokenizer.encode_prompt(p.prompt) for p in problems]
    params = SamplingParams(
        temperature=s.cfg.rollout.temperature,
        top_p=s.cfg.rollout.top_p,
        max_new_tokens=s.cfg.rollout.max_new_tokens,
        stop_token_ids=(s.tokenizer.eos_id,),
        seed=s.sampling_seed(),
    )
    return s.generate([p for p in prompts for _ in range(n)], params)


def score(s: Session, problems, completions) -> tuple[torch.Tensor, int]:
    """Rewards ``[prompts, n]`` and the number of verifier timeouts. The replica leader verifies
    and shares: a timeout on one rank only must not give the ranks different advantages."""
    n = s.cfg.rollout.num_samples_per_prompt

    def verify():
        texts = [s.tokenizer.decode(c.token_ids) for c in completions]
        answers = [p.answer for p in problems for _ in range(n)]
        verdicts = verify_batch(s.verifier, texts, answers)
        return [v.reward for v in verdicts], sum(v.timed_out for v in verdicts)

    rewards, timeouts = s.on_leader(verify)
    return torch.tensor(rewards, dtype=torch.float64).view(len(problems), n), timeouts


def to_samples(completions, advantages: torch.Tensor, rewards: torch.Tensor) -> list[Sample]:
    return [
        Sample(
            prompt_ids=list(c.prompt_ids),
            response_ids=list(c.token_ids),
            rollout_logprobs=list(c.logprobs),
            advantage=float(a),
            reward=float(r),
        )
        for c, a, r in zip(completions, advantages.flatten(), rewards.flatten())
    ]


def fill_logprobs(s: Session, micro_batches) -> None:
    """Old (recomputed) and reference log-probs of the micro-batches, in place (last stage)."""
    if s.cfg.grpo.old_logprobs == "recompute":
        old = s.forward_logprobs(s.model, micro_batches)
        for mb, lp in zip(micro_batches, old or [None] * len(micro_batches)):
            mb.old_logprobs = lp
    if s.ref_model is not None:
        ref = s.forward_logprobs(s.ref_model, micro_batches)
        for mb, lp in zip(micro_batches, ref or [None] * len(micro_batches)):
            mb.ref_logprobs = lp


def minibatches(samples: list[Sample], k: int, group_size: int) -> list[list[Sample]]:
    """Split into ``k`` near-equal chunks of whole prompt groups, in order."""
    groups = [samples[i : i + group_size] for i in range(0, len(samples), group_size)]
    bounds = [round(j * len(groups) / k) for j in range(k + 1)]
    return [[x for g in groups[a:b] for x in g] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def grpo_step(s: Session) -> dict[str, float]:
    cfg = s.cfg
    start = time.perf_counter()
    problems = s.my_share(s.sampler.next_batch(cfg.train.num_prompts_per_step))
    with s.timer("rollout"):
        completions = rollout(s, problems)
    s.release_engine()
    with s.timer("verify"):
        rewards, timeouts = score(s, problems, completions)
    with s.timer("advantages"):
        advantages = group_advantages(rewards, cfg.grpo.advantage)
        samples = to_samples(completions, advantages, rewards)

    coef = LossCoefficients(kl=cfg.grpo.kl_coef, entropy=cfg.grpo.entropy_coef)
    train = {}
    gap, gap_tokens = 0.0, 0.0
    chunks = minibatches(samples, cfg.grpo.num_minibatches, cfg.rollout.num_samples_per_prompt)
    plans = [build_micro_batches(chunk, cfg.train.micro_batch_tokens) for chunk in chunks]
    with s.timer("logprobs"):  # every chunk's old log-probs before the first update
        for mbs in plans:
            fill_logprobs(s, mbs)
    for i, mbs in enumerate(plans):
        with s.timer("train"):
            stats = s.train_on(mbs, coef)
        if i == 0:  # before any update of this step: the engine and the trainer see one policy
            gap, gap_tokens = stats["gap_sum"], stats["rl_tokens"]
        for k, v in stats.items():
            train[k] = train.get(k, 0.0) + v
    s.sync_weights()

    mine = len(samples) if s.rank == s.mp_leader else 0
    resp = [len(x.response_ids) for x in samples] if s.rank == s.mp_leader else []
    totals = s.reduce(
        {
            **{f"t_{k}": v for k, v in train.items() if k not in ("grad_norm", "applied", "lr")},
            "gap": gap,
            "gap_tokens": gap_tokens,
            "samples": mine,
            "reward": float(rewards.sum()) if mine else 0.0,
            "correct": float((rewards >= 1.0).sum()) if mine else 0.0,
            "resp_tokens": float(sum(resp)),
            "all_tokens": float(sum(x.num_tokens for x in samples)) if mine else 0.0,
            "truncated": float(sum(c.finish_reason == "length" for c in completions)) if mine else 0.0,
            "timeouts": float(timeouts) if mine else 0.0,
            "zero_adv_groups": float((rewards.amax(1) == rewards.amin(1)).sum()) if mine else 0.0,
            "groups": float(rewards.shape[0]) if mine else 0.0,
        }
    )
    rl_tokens = max(1.0, totals["t_rl_tokens"])
    n = max(1.0, totals["samples"])
    steps = len(chunks)
    s.step += 1
    metrics = {
        "policy/reward_mean": totals["reward"] / n,
        "policy/accuracy": totals["correct"] / n,
        "policy/response_tokens_mean": totals["resp_tokens"] / n,
        "policy/truncated_fraction": totals["truncated"] / n,
        "policy/zero_advantage_groups": totals["zero_adv_groups"] / max(1.0, totals["groups"]),
        "reward/timeouts": totals["timeouts"],
        "train/loss": totals["t_loss"] / steps,
        "train/entropy": totals["t_entropy_sum"] / rl_tokens,
        "train/clip_fraction": totals["t_clipped"] / rl_tokens,
        "train/kl_ref": totals["t_kl_sum"] / rl_tokens,
        "train/grad_norm": train["grad_norm"] / steps,
        "train/logprob_gap_rollout_vs_train": totals["gap"] / max(1.0, totals["gap_tokens"]),
        "perf/tokens_per_s": totals["all_tokens"] / (time.perf_counter() - start),
        "perf/samples_per_s": totals["samples"] / (time.perf_counter() - start),
    }
    lr = train["lr"] / steps  # mean rate over this step's updates
    metrics.update(s.after_update(train["applied"] == steps, metrics["train/loss"], train["grad_norm"], lr))
    return metrics
