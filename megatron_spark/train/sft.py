"""Supervised warm start: teacher-forced cross-entropy on worked solutions of task problems.

Each step draws ``train.num_prompts_per_step`` problems, trains on ``prompt -> solution + eos``
(loss on the solution tokens only, averaged over every solution token of the step) and takes one
optimizer step. Used as the cold start of the tiny demo before GRPO.
"""

from __future__ import annotations

import random
import time

from megatron_spark.errors import UserError
from megatron_spark.spark.checks import checks_for
from megatron_spark.spark.warmstart import warm_start_example
from megatron_spark.train.batch import Sample
from megatron_spark.train.loss import LossCoefficients
from megatron_spark.train.roles import Roles
from megatron_spark.train.seeds import SeedPurpose
from megatron_spark.train.stats import UpdateStats


def own_wrong_answers(r: Roles, problems) -> dict[str, str]:
    """uid -> the model's own wrong final answer to that problem: one temperature-1 sample each
    from the current weights, kept when it boxes an answer the verifier rejects."""
    from megatron_spark.reward.verifiers import verify_batch
    from megatron_spark.rollout.protocol import SamplingParams

    with r.timer("sync"):
        r.rollout.sync()
    params = SamplingParams(
        temperature=1.0,
        max_new_tokens=r.cfg.rollout.max_new_tokens,
        stop_token_ids=(r.tokenizer.eos_id,),
        seed=r.seed(SeedPurpose.OWN_ANSWERS),
    )
    # Every replica samples the whole step's problems alike (the batch is built on every rank).
    completions = r.rollout.generate([r.tokenizer.encode_prompt(p.prompt) for p in problems], params)
    texts = [r.tokenizer.decode(c.token_ids) for c in completions]
    verdicts = r.par.on_leader(lambda: verify_batch(r.verifier, texts, [p.answer for p in problems]))
    return {p.uid: v.extracted for p, v in zip(problems, verdicts) if v.extracted and v.reward < 1.0}


SHOWS_CANDIDATE = ("pointwise", "pairwise", "reflection")
"""Example kinds whose prompt shows a wrong candidate (the model's own, where it has one)."""


def example_kinds(mix, rng: random.Random, n: int) -> list[str | None]:
    """What each of ``n`` problems becomes: ``pointwise`` / ``pairwise`` (a ``mix.judge_fraction``
    share, half each), ``reflection``, ``practice`` (an exercise of the check's skill), or None
    (its worked solution). Drawn before anything else of the step, so the model's own answers are
    sampled only for the problems whose example shows a candidate."""
    kinds: list[str | None] = []
    for _ in range(n):
        u = rng.random()
        if u < mix.judge_fraction:
            kinds.append("pointwise" if rng.random() < 0.5 else "pairwise")
        elif u < mix.judge_fraction + mix.reflection_fraction:
            kinds.append("reflection")
        elif u < mix.judge_fraction + mix.reflection_fraction + mix.practice_fraction:
            kinds.append("practice")
        else:
            kinds.append(None)
    return kinds


def sft_samples(
    r: Roles,
    problems,
    own_wrong: dict[str, str] | None = None,
    rng: random.Random | None = None,
    kinds: list[str | None] | None = None,
) -> tuple[list[Sample], int]:
    """Worked solutions, with a ``sft.judge_fraction`` / ``sft.reflection_fraction`` share of
    judge and reflection examples (:mod:`megatron_spark.spark.warmstart`; a problem's wrong
    candidate is the task's perturbation or another problem's answer) and a
    ``sft.practice_fraction`` share of exercises of the check; and how many problems drawn for a
    judge or reflection example had no wrong candidate (they train on their solution).
    ``own_wrong``: the model's own wrong answers by uid, shown where a problem has one; ``rng`` and
    ``kinds``: the step's generator and its :func:`example_kinds`, drawn here when not given."""
    missing = [p.uid for p in problems if not p.solution]
    if missing:
        raise UserError(f"sft: problem {missing[0]} has no worked solution (set task.file.solution_key)")
    tok, mix = r.tokenizer, r.cfg.sft
    checks = checks_for(r.task.name)
    rng = rng or random.Random(r.seed(SeedPurpose.WARM_START_MIX))
    kinds = kinds if kinds is not None else example_kinds(mix, rng, len(problems))
    answers = [p.right_answer for p in problems]
    samples, without = [], 0
    for p, kind in zip(problems, kinds):
        example = None
        if kind == "practice":
            example = checks.practice(p, rng, mix.practice_compare_fraction)
        elif kind is not None:
            wrong = (own_wrong or {}).get(p.uid)
            example = warm_start_example(
                p, kind, rng, checks, mix.judge_verdicts, distractors=answers, wrong=wrong
            )
            without += example is None
        prompt, response = example or (p.prompt, p.solution)
        samples.append(Sample(tok.encode_prompt(prompt), tok.encode(response) + [tok.eos_id], objective="ce"))
    return samples, without


def samples_own_answers(sft, step: int) -> bool:
    """Whether warm-start step ``step`` (0-based) samples the model's own answers."""
    start, every = sft.own_wrong_answers_from_step, sft.own_wrong_answers_every_steps
    return bool(
        start
        and step >= start
        and (step - start) % every == 0
        and (sft.judge_fraction or sft.reflection_fraction)
    )


def optimizer_steps(cfg) -> int:
    """Optimizer steps one SFT step takes."""
    return 1


def sft_step(r: Roles) -> tuple[dict[str, float], UpdateStats]:
    """One warm-start step: its metrics and the update's statistics (the loop counts the step)."""
    start = time.perf_counter()
    # Built for the whole step, then shared: the example mix does not depend on the DP size.
    problems = r.state.sampler.next_batch(r.cfg.train.num_prompts_per_step)
    rng = random.Random(r.seed(SeedPurpose.WARM_START_MIX))
    kinds = example_kinds(r.cfg.sft, rng, len(problems))
    own = None
    if samples_own_answers(r.cfg.sft, r.state.step):
        with r.timer("own_answers"):
            shown = [p for p, kind in zip(problems, kinds) if kind in SHOWS_CANDIDATE]
            own = own_wrong_answers(r, shown) if shown else {}
    samples, without = sft_samples(r, problems, own, rng, kinds)
    samples = r.par.my_share(samples)
    with r.timer("train"):
        mbs = r.policy.micro_batches(samples)
        stats = r.policy.train_on(mbs, LossCoefficients(ce=1.0))
    tokens = sum(x.num_tokens for x in samples)
    totals = r.par.sum_replicas({"tokens": tokens}, per_rank={"loss": stats.loss})
    metrics = {
        "train/loss": totals["loss"],
        "train/grad_norm": stats.grad_norm,
        "perf/tokens_per_s": totals["tokens"] / (time.perf_counter() - start),
        # the same on every rank (the whole step's examples are built everywhere)
        "sft/examples_without_wrong_answer": float(without),
    }
    if own is not None:
        metrics["sft/own_wrong_answers"] = float(len(own))
    return metrics, stats
