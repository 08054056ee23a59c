"""Training samples, packed into micro-batches by a token budget.

A :class:`Sample` is a prompt and a response. Packed whole, sample i occupies ``len(prompt) +
len(response)`` consecutive tokens of a micro-batch row. With ``share_prompts``, consecutive
samples with the same prompt (a GRPO group) are packed as that prompt once followed by each
response, every response attending to the one copy (``PackedBatch.prefix_of``): the same
activations, loss and gradients as packing each sample whole, up to float rounding, with the
prompt's tokens run once per group instead of once per sample.

Either way the loss head reads only the positions that *predict* response tokens
(``PackedBatch.head_index``: the prompt's last position, then the response's own positions but its
last), and every per-token array below has one row per response token, sample after sample in
``sample_ids`` order (``spans``). Prompt tokens are never trained on. A response's last token
predicts nothing, so it is not packed at all (one token per sample less to run).

What the loss makes of these arrays (weights, normalisers, terms) is :mod:`megatron_spark.train.loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from megatron_spark.errors import UserError
from megatron_spark.model.forward import PackedBatch, pack


@dataclass
class Sample:
    """One sequence to train on."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float] = field(default_factory=list)
    """Per response token, from the rollout engine (empty for teacher-forced samples)."""
    advantage: float = 0.0
    """Advantage of every response token (policy-gradient samples)."""
    reward: float = 0.0
    """Verifier reward of the response."""
    objective: str = "rl"
    """``rl``: clipped surrogate with the advantage; ``ce``: teacher-forced cross-entropy."""
    weight: float = 1.0
    """Loss weight of the sample's RL tokens (SPARK weighs policy, judge and reflection samples)."""

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass(eq=False)
class MicroBatch:
    """A packed row of samples and the per-token arrays of its head rows (``[K]``: one per
    response token)."""

    batch: PackedBatch
    sample_ids: list[int]
    """Indices of the packed samples in the step's sample list, in row order."""
    spans: list[tuple[int, int]]
    """Per packed sample (``sample_ids`` order), its response's rows ``[lo, hi)`` in the arrays."""
    rl_mask: torch.Tensor
    """True where the row's response belongs to an ``rl`` sample (the others are ``ce``)."""
    advantages: torch.Tensor
    rollout_logprobs: torch.Tensor
    rl_scale: torch.Tensor
    """Per-token loss weight of RL tokens (the sample's ``weight``)."""
    old_logprobs: torch.Tensor | None = None
    """log p under the policy before this step's updates (filled by the trainer)."""
    ref_logprobs: torch.Tensor | None = None
    """log p under the frozen reference (filled by the trainer when KL is on)."""


def plan_micro_batches(lengths: Sequence[int], micro_batch_tokens: int) -> list[list[int]]:
    """Bins of sample indices, each summing to at most ``micro_batch_tokens``.

    First-fit decreasing (ties by index): deterministic, and few, well-filled bins. Bins come back
    in order of their first (longest) member; members inside a bin keep ascending index order.
    """
    too_long = [i for i, n in enumerate(lengths) if n > micro_batch_tokens]
    if too_long:
        i = too_long[0]
        raise UserError(
            f"a sample of {lengths[i]} tokens exceeds train.micro_batch_tokens={micro_batch_tokens}; "
            f"raise micro_batch_tokens or lower the prompt length / rollout.max_new_tokens"
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(micro_batch_tokens - lengths[i])
    return [sorted(b) for b in bins]


def prompt_units(samples: Sequence[Sample], micro_batch_tokens: int, share_prompts: bool) -> list[list[int]]:
    """Runs of consecutive sample indices packed together: with ``share_prompts``, samples with
    the same prompt, cut where the prompt and their responses would exceed ``micro_batch_tokens``;
    otherwise one sample each."""
    units: list[list[int]] = []
    size = 0
    for i, s in enumerate(samples):
        last = units[-1] if units else None
        if (
            share_prompts
            and last is not None
            and samples[last[0]].prompt_ids == s.prompt_ids
            and size + len(s.response_ids) <= micro_batch_tokens
        ):
            last.append(i)
            size += len(s.response_ids)
        else:
            units.append([i])
            size = s.num_tokens
    return units


def build_micro_batches(
    samples: Sequence[Sample], micro_batch_tokens: int, share_prompts: bool = False
) -> list[MicroBatch]:
    """Pack ``samples`` into micro-batches of at most ``micro_batch_tokens`` tokens; with
    ``share_prompts``, a run of samples with one prompt holds that prompt once (module doc)."""
    units = prompt_units(samples, micro_batch_tokens, share_prompts)
    sizes = [len(samples[u[0]].prompt_ids) + sum(len(samples[i].response_ids) for i in u) for u in units]
    out = []
    for bin_units in plan_micro_batches(sizes, micro_batch_tokens):
        seqs: list[list[int]] = []
        prefix_of: list[int] = []
        head_index: list[int] = []
        ids: list[int] = []
        pos = 0
        for u in (units[j] for j in bin_units):
            prompt = samples[u[0]].prompt_ids
            if len(u) == 1:  # packed whole
                s = samples[u[0]]
                seqs.append(prompt + s.response_ids[:-1])
                prefix_of.append(-1)
                head_index += range(pos + len(prompt) - 1, pos + s.num_tokens - 1)
                pos += len(seqs[-1])
                ids.append(u[0])
                continue
            shared = len(seqs)
            seqs.append(list(prompt))
            prefix_of.append(-1)
            last = pos + len(prompt) - 1  # predicts every response's first token
            pos += len(prompt)
            for i in u:
                r = samples[i].response_ids
                if r:
                    head_index += [last, *range(pos, pos + len(r) - 1)]
                if len(r) > 1:
                    seqs.append(list(r[:-1]))
                    prefix_of.append(shared)
                    pos += len(r) - 1
                ids.append(i)
        picked = [samples[i] for i in ids]
        targets = [t for s in picked for t in s.response_ids]
        batch = pack(
            seqs,
            prefix_of=prefix_of if any(p >= 0 for p in prefix_of) else None,
            head_index=torch.tensor(head_index, dtype=torch.int64),
            head_targets=torch.tensor(targets, dtype=torch.int64),
        )
        spans, lo = [], 0
        for s in picked:
            spans.append((lo, lo + len(s.response_ids)))
            lo += len(s.response_ids)
        k = len(targets)
        rl = torch.zeros(k, dtype=torch.bool)
        adv, rollout, scale = torch.zeros(k), torch.zeros(k), torch.zeros(k)
        for s, (lo, hi) in zip(picked, spans):
            if s.objective == "rl":
                rl[lo:hi] = True
                adv[lo:hi] = s.advantage
                scale[lo:hi] = s.weight
                if s.rollout_logprobs:
                    rollout[lo:hi] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
        out.append(MicroBatch(batch, ids, spans, rl, adv, rollout, scale))
    return out
