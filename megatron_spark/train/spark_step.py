"""SPARK: the GRPO step, plus judge and reflection items recycled from the policy's own rollouts.

Joint schedule (default), one step::

    rollout   task prompts x n                 and   items popped from the queue x m
    verify    task verifier                          boxed verdict vs label / verifier vs truth
    recycle   this step's task groups -> new items -> queue (served from the next step on)
    update    one pass of ``grpo.num_minibatches`` optimizer steps over all groups together,
              each sample weighed by its role (``spark.*_weight``), each step holding its share
              of every role; one weight sync

Alternating schedule (the paper's): a plain GRPO update on the task prompts, recycle, then pop
items, roll them out with the updated policy and take a second update; two syncs per step. An
empty queue (with data parallelism: fewer items than DP ranks, which stay queued) skips the second
phase (counted in ``spark/item_phase_skipped``); it is not an error.

Data parallelism: every rank recycles the whole step's groups (gathered from all replicas) and so
holds the same queue; each step's popped items are split across the replicas like the prompts,
and every sample is drawn as in one process (``SamplingParams.first_row``). A run at DP=N thus
trains on the same samples as the same run in one process.

The optional teacher-forced verdict loss (``spark.judge_ce_weight``) adds, per judge item, the
first sample's response up to its verdict box followed by the correct verdict, with cross-entropy
on the verdict tokens only (``spark.judge_reward: checked``: the first sample whose check is right).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from collections import Counter

import torch

from megatron_spark.reward.extract import boxed_contents
from megatron_spark.spark.checks import checks_for
from megatron_spark.spark.config import ITEM_KINDS
from megatron_spark.spark.recycler import Item, ScoredGroup, recycle
from megatron_spark.spark.verdict import check_matches, parse_verdict
from megatron_spark.train.advantages import group_advantages
from megatron_spark.train.batch import Sample
from megatron_spark.train.grpo import (
    groups_of,
    policy_metrics,
    policy_phase,
    sample_groups,
    score_with,
    throughput,
    to_samples,
    update,
)
from megatron_spark.train.roles import Roles
from megatron_spark.train.seeds import SeedPurpose
from megatron_spark.train.stats import UpdateStats


def recycle_step(r: Roles, problems, completions, rewards: torch.Tensor) -> list[Item]:
    """Items from the task groups of the whole step, every DP replica's gathered in DP-rank order.

    The result is identical on every rank (same groups, same seeded generator), so every rank
    keeps the same queue, and the per-step caps and label balance apply to the step as in one
    process, whatever the data-parallel size."""
    n = r.cfg.rollout.num_samples_per_prompt
    texts = [r.tokenizer.decode(c.token_ids) for c in completions]
    mine = [(p, texts[i * n : (i + 1) * n], rewards[i].tolist()) for i, p in enumerate(problems)]
    groups = [ScoredGroup(*g) for share in r.par.gather_replicas(mine) for g in share]
    rng = random.Random(r.seed(SeedPurpose.RECYCLE))
    checks = checks_for(r.task.name)
    return recycle(
        groups, r.state.step, r.cfg.spark, r.cfg.task.verifier.box, rng, checks.styles, checks.reasoning
    )


def pop_items(r: Roles) -> tuple[list[Item], list[Item], int]:
    """``(popped, mine, first)``: the step's items (the same on every rank), this DP rank's
    contiguous share of them and the index of its first item."""
    popped = r.state.queue.pop(r.cfg.spark.items_per_step, r.state.step)
    return popped, *r.par.my_slice(popped)


def roll_items(r: Roles, items: list[Item], first: int = 0):
    """Rollout and rewards ``[items, m]`` of this rank's ``items`` (judge: verdict vs label;
    reflection: the task verifier vs the ground truth); ``first``: see :func:`pop_items`."""
    m = r.cfg.spark.num_samples_per_item
    with r.timer("item_rollout"):
        prompts = [x.prompt for x in items]
        completions = sample_groups(
            r, prompts, m, r.cfg.spark.max_new_tokens, SeedPurpose.ITEM_ROLLOUT, first
        )
    with r.timer("item_verify"):
        checked = r.cfg.spark.judge_reward == "checked"
        targets = [(x.label, x.choices or None, x.check if checked else "") for x in items for _ in range(m)]
        rewards, timeouts = score_with(r, completions, targets, m)
    return completions, rewards, timeouts


def item_samples(
    r: Roles, items: list[Item], completions, rewards: torch.Tensor
) -> tuple[list[list[Sample]], list[str]]:
    """One group of RL samples per item, weighed by its role, plus the verdict CE samples; and
    each group's kind (the item's, ``verdict_ce`` or ``check_ce``: :func:`judge_ce_copies`) for
    :func:`~megatron_spark.train.grpo.update`."""
    sp, m = r.cfg.spark, r.cfg.spark.num_samples_per_item
    weight = {"pointwise": sp.judge_weight, "pairwise": sp.judge_weight, "reflection": sp.reflection_weight}
    adv = group_advantages(rewards, r.cfg.grpo.advantage)
    groups, kinds = [], []
    for i, item in enumerate(items):
        cs = completions[i * m : (i + 1) * m]
        samples = to_samples(cs, adv[i], rewards[i], weight[item.kind])
        if item.choices and sp.judge_rl_tokens == "verdict":
            samples = [verdict_only(r.tokenizer, x) for x in samples]
        groups.append(samples)
        kinds.append(item.kind)
        if sp.judge_ce_weight > 0 and item.choices:
            ce, kind = judge_ce_copies(r, item, cs)
            if ce:
                groups.append(ce)
                kinds.append(kind)
    return groups, kinds


def judge_ce_copies(r: Roles, item: Item, cs) -> tuple[list[Sample], str]:
    """The cross-entropy copies of one judge item's samples ``cs`` and their kind: the right
    verdict after the first samples that box one (``verdict_ce``; under ``judge_reward: checked``
    only samples whose check is right), or, with ``spark.judge_ce_correct_check`` and no sample
    writing the check, corrections of the first samples from where they leave it (``check_ce``)."""
    sp = r.cfg.spark
    if sp.judge_reward == "checked":  # no verdict target after a wrong check
        right = [c for c in cs if check_matches(r.tokenizer.decode(c.token_ids), item.check)]
        if not right and sp.judge_ce_correct_check and item.check:
            fixes = (check_ce_sample(r, c, item) for c in cs[: sp.judge_ce_samples])
            return [x for x in fixes if x is not None], "check_ce"
        cs = right
    boxed = (x for c in cs if (x := verdict_ce_sample(r, c, item)) is not None)
    return list(itertools.islice(boxed, sp.judge_ce_samples)), "verdict_ce"  # the first that box


def check_ce_sample(r: Roles, completion, item: Item) -> Sample | None:
    r"""``completion`` kept up to where it departs from the item's worked reply (its check, then
    ``\boxed{`` and the right verdict), and the rest of that reply trained by cross-entropy;
    None when nothing of it is left to train.

    The cut is made at a token boundary at or before the first character that differs, and the
    rest is re-encoded, as in :func:`verdict_ce_sample`. A sample that wrote ``59! 99=: equal.``
    where the check says ``59! 99=: different.`` is taught `` different. \boxed{No`` after its own
    ``... 59! 99=:``. The closing brace and eos are left out, as there."""
    tok = r.tokenizer
    ids = list(completion.token_ids)
    target = f"{item.check} \\boxed{{{item.label}"
    text = tok.decode(ids)
    same = 0
    while same < min(len(text), len(target)) and text[same] == target[same]:
        same += 1
    k = tokens_within(tok, ids, same)
    rest = target[len(tok.decode(ids[:k])) :]
    if not rest.strip():
        return None
    return Sample(list(completion.prompt_ids) + ids[:k], tok.encode(rest), objective="ce")


def tokens_within(tok, ids: list[int], chars: int) -> int:
    """How many leading tokens of ``ids`` decode to at most ``chars`` characters."""
    k = 0
    while k < len(ids) and len(tok.decode(ids[: k + 1])) <= chars:
        k += 1
    return k


def verdict_start(tok, ids: list[int]) -> int | None:
    """Index of the first token of ``ids`` whose text reaches into the last ``\\boxed{...}``'s
    content (the verdict), or None when the text has no complete box."""
    text = tok.decode(ids)
    at = text.rfind("\\boxed{")
    if at < 0 or not boxed_contents(text[at:]):
        return None
    content = at + len("\\boxed{")
    for k in range(len(ids)):
        if len(tok.decode(ids[: k + 1])) > content:
            return k
    return None


def verdict_only(tok, sample: Sample) -> Sample:
    """``sample`` with its reply up to the verdict moved into the prompt: only the verdict and
    what follows it carry the advantage (``spark.judge_rl_tokens: verdict``). The tokens are the
    sampled ones, cut at a token boundary, so their rollout log-probs still apply. A reply with
    no box is kept whole (its format error is what the advantage is about)."""
    k = verdict_start(tok, sample.response_ids)
    if k is None:
        return sample
    return dataclasses.replace(
        sample,
        prompt_ids=sample.prompt_ids + sample.response_ids[:k],
        response_ids=sample.response_ids[k:],
        rollout_logprobs=sample.rollout_logprobs[k:],
    )


def verdict_ce_sample(r: Roles, completion, item: Item) -> Sample | None:
    """``completion`` cut before its last box, + the right verdict; None when it boxes nothing.

    The cut is made at a token boundary at or before the box, and the rest is re-encoded with the
    right verdict, so the tokens are split the way the model itself writes them. Only the verdict's
    tokens are trained: the re-encoded ``\\boxed{`` before them is context, and nothing follows
    them (the closing brace and eos would only dilute the verdict's share of the loss)."""
    tok = r.tokenizer
    ids = list(completion.token_ids)
    text = tok.decode(ids)
    at = text.rfind("\\boxed{")
    if at < 0 or not boxed_contents(text[at:]):
        return None
    k = tokens_within(tok, ids, at)  # tokens kept from the sample: their text ends by the box
    rest = text[len(tok.decode(ids[:k])) : at] + "\\boxed{"
    head, full = tok.encode(rest), tok.encode(rest + item.label)
    if full[: len(head)] != head or len(full) == len(head):  # the verdict merged into the brace
        head = []
    return Sample(list(completion.prompt_ids) + ids[:k] + head, full[len(head) :], objective="ce")


VERDICT_STATS = (
    "judge_groups",
    "judge_samples",
    "parsed",
    "unanimous",
    "entropy",
    "checked_samples",
    "checks_right",
    "checked_groups",
    "unwritten_groups",
)
"""The sums :func:`verdict_stats` returns."""
ENTROPY_UNIT = 2.0**-32
"""The entropy sum counts in multiples of this many bits: integers add up exactly in the float64
world sum, in any order, so the metric is the same at any data-parallel size (float sums of the
groups' entropies differed in their last bit between one process and two replicas)."""


def verdict_stats(r: Roles, items: list[Item], completions) -> dict[str, float]:
    """Sums over this rank's judge groups of what decides whether RL can teach the verdict: how
    many samples box a verdict, how many groups say one verdict in every sample (all rewards
    equal: zero advantage, nothing to learn), the entropy of each group's verdicts (in units of
    ``ENTROPY_UNIT`` bits), how many samples of items with a worked check write it out right,
    and how many of those items have no sample that does."""
    m = r.cfg.spark.num_samples_per_item
    out = dict.fromkeys(VERDICT_STATS, 0.0)
    for i, item in enumerate(items):
        if not item.choices:
            continue
        texts = [r.tokenizer.decode(c.token_ids) for c in completions[i * m : (i + 1) * m]]
        verdicts = [parse_verdict(t, item.choices) for t in texts]
        counts = Counter(verdicts)
        out["judge_groups"] += 1
        out["judge_samples"] += len(verdicts)
        if item.check:
            right = sum(check_matches(t, item.check) for t in texts)
            out["checked_samples"] += len(texts)
            out["checks_right"] += right
            out["checked_groups"] += 1
            out["unwritten_groups"] += float(right == 0)
        out["parsed"] += sum(v is not None for v in verdicts)
        out["unanimous"] += float(len(counts) == 1)
        out["entropy"] += round(-sum(c / m * math.log2(c / m) for c in counts.values()) / ENTROPY_UNIT)
    return out


def item_metrics(
    r: Roles, items: list[Item], built: list[Item], rewards: torch.Tensor, completions=()
) -> dict[str, float]:
    """``judge/*``, ``reflection/*`` and ``spark/*`` of this step, summed over the world.
    ``items``, ``rewards`` and ``completions`` are this rank's share; ``built`` and the queue are
    the same on every rank and counted once."""
    verdicts = verdict_stats(r, items, completions) if completions else {}
    per_replica = {key: verdicts.get(key, 0.0) for key in VERDICT_STATS}
    judge_rows = [i for i, x in enumerate(items) if x.choices]
    flat = rewards[judge_rows] if judge_rows else rewards[:0]
    # Groups whose rewards are all equal (zero advantage), whatever the verdicts say.
    per_replica["zero_adv"] = float((flat.max(1).values == flat.min(1).values).sum()) if judge_rows else 0.0
    shared = {}  # the same on every rank: counted once
    for kind in ITEM_KINDS:
        rows = [i for i, x in enumerate(items) if x.kind == kind]
        per_replica[f"reward_{kind}"] = float(rewards[rows].sum()) if rows else 0.0
        per_replica[f"samples_{kind}"] = float(rewards[rows].numel()) if rows else 0.0
        per_replica[f"trained_{kind}"] = float(len(rows))
        shared[f"built_{kind}"] = float(sum(x.kind == kind for x in built))
    point = [x for x in built if x.kind == "pointwise"]
    shared["pos"] = float(sum(x.polarity == "correct" for x in point))
    shared["point"] = float(len(point))
    shared["queue"] = float(len(r.state.queue))
    shared["expired"] = float(r.state.queue.expired)
    t = r.par.sum_replicas(per_replica, shared)
    out = {
        "judge/pointwise_accuracy": t["reward_pointwise"] / max(1.0, t["samples_pointwise"]),
        "judge/pairwise_accuracy": t["reward_pairwise"] / max(1.0, t["samples_pairwise"]),
        "reflection/accuracy": t["reward_reflection"] / max(1.0, t["samples_reflection"]),
        "spark/queue_size": t["queue"],
        "spark/items_expired": t["expired"],
        "spark/label_balance": t["pos"] / t["point"] if t["point"] else 0.5,
    }
    if t["judge_groups"]:
        out["judge/verdict_parse_rate"] = t["parsed"] / t["judge_samples"]
        out["judge/unanimous_groups"] = t["unanimous"] / t["judge_groups"]
        out["judge/zero_advantage_groups"] = t["zero_adv"] / t["judge_groups"]
        out["judge/verdict_entropy_bits"] = t["entropy"] * ENTROPY_UNIT / t["judge_groups"]
    if t["checked_samples"]:
        out["judge/check_right_rate"] = t["checks_right"] / t["checked_samples"]
        out["judge/unwritten_check_groups"] = t["unwritten_groups"] / t["checked_groups"]
    for kind in ITEM_KINDS:
        out[f"spark/items_built/{kind}"] = t[f"built_{kind}"]
        out[f"spark/items_trained/{kind}"] = t[f"trained_{kind}"]
    return out


def optimizer_steps(cfg) -> int:
    """Optimizer steps one SPARK step takes: one per minibatch, twice over under the alternating
    schedule (a policy update, then an item update)."""
    return cfg.grpo.num_minibatches * (2 if cfg.spark.schedule == "alternating" else 1)


def spark_step(r: Roles) -> tuple[dict[str, float], UpdateStats]:
    """One SPARK step (``spark.schedule``): its metrics and the update's statistics."""
    if r.cfg.spark.schedule == "alternating":
        return alternating_step(r)
    start = time.perf_counter()
    _, items, first = pop_items(r)
    problems, completions, rewards, timeouts = policy_phase(r)
    if items:
        item_completions, item_rewards, item_timeouts = roll_items(r, items, first)
    else:
        item_completions, item_rewards, item_timeouts = [], torch.zeros(0, 1, dtype=torch.float64), 0
    r.rollout.sleep()
    with r.timer("recycle"):
        built = recycle_step(r, problems, completions, rewards)
        r.state.queue.push(built)
    with r.timer("advantages"):
        n = r.cfg.rollout.num_samples_per_prompt
        adv = group_advantages(rewards, r.cfg.grpo.advantage)
        groups = groups_of(to_samples(completions, adv, rewards, r.cfg.spark.policy_weight), n)
        kinds = ["policy"] * len(groups)
        if items:
            item_groups, item_kinds = item_samples(r, items, item_completions, item_rewards)
            groups, kinds = groups + item_groups, kinds + item_kinds
    # Each optimizer step takes its share of every kind (policy, each item kind, verdict CE).
    t = update(r, groups, ce_coef=r.cfg.spark.judge_ce_weight, kinds=kinds)
    metrics = {**policy_metrics(r, completions, rewards, timeouts + item_timeouts), **t.metrics()}
    metrics.update(item_metrics(r, items, built, item_rewards, item_completions))
    metrics.update(throughput(r, [x for g in groups for x in g], start))
    return metrics, t


def alternating_step(r: Roles) -> tuple[dict[str, float], UpdateStats]:
    start = time.perf_counter()
    problems, completions, rewards, timeouts = policy_phase(r)
    r.rollout.sleep()
    with r.timer("recycle"):
        built = recycle_step(r, problems, completions, rewards)
        r.state.queue.push(built)
    with r.timer("advantages"):
        adv = group_advantages(rewards, r.cfg.grpo.advantage)
        groups = groups_of(to_samples(completions, adv, rewards), r.cfg.rollout.num_samples_per_prompt)
    t = update(r, groups)  # phase 1: the policy
    metrics = policy_metrics(r, completions, rewards, timeouts)
    samples = [x for g in groups for x in g]
    popped, items, first = pop_items(r)
    # Phase 2 holds collectives: it runs when every DP rank has a share (``popped`` is the same
    # on every rank, so they all decide alike).
    run_items = len(popped) >= r.par.dp_size
    item_rewards = torch.zeros(0, 1, dtype=torch.float64)
    if run_items:
        item_completions, item_rewards, _ = roll_items(r, items, first)
        r.rollout.sleep()
        item_groups, item_kinds = item_samples(r, items, item_completions, item_rewards)
        # phase 2: judge and reflection
        t2 = update(r, item_groups, ce_coef=r.cfg.spark.judge_ce_weight, kinds=item_kinds)
        t = t + t2  # train/* over both phases' optimizer steps (the log-prob gap: phase 1's)
        samples += [x for g in item_groups for x in g]
    else:
        r.state.queue.requeue(popped)  # too few for every rank: kept for the next step
    metrics.update(t.metrics())
    metrics["spark/item_phase_skipped"] = 0.0 if run_items else 1.0
    completions = item_completions if run_items else ()
    metrics.update(item_metrics(r, items if run_items else [], built, item_rewards, completions))
    metrics.update(throughput(r, samples, start))
    return metrics, t
