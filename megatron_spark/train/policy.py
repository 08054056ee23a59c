"""The trainable policy on one rank: :class:`PolicyTrainer`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.model.config import ModelArch
from megatron_spark.model.forward import run_packed
from megatron_spark.parallel import ParallelContext
from megatron_spark.train.batch import MicroBatch, Sample, build_micro_batches
from megatron_spark.train.loss import (
    LossCoefficients,
    LossConfig,
    describe_nonfinite,
    head_sums,
    packed_head,
    token_counts,
    token_inputs,
)
from megatron_spark.train.optim import Optimizer
from megatron_spark.train.stats import UpdateStats


class PolicyTrainer:
    """The policy's model (megatron DDP), its optimizer and the loss head's settings: packs
    samples into micro-batches, computes their log-probs and takes optimizer steps on them."""

    def __init__(
        self,
        model,
        arch: ModelArch,
        optimizer: Optimizer,
        par: ParallelContext,
        loss: LossConfig,
        tiles: TileConfig,
        *,
        micro_batch_tokens: int,
        share_prompts: bool,
        temperature: float,
        ref_model=None,
    ):
        """``loss``: the objective's constants; ``tiles``: the fused head's tiling;
        ``temperature``: the rollout's, which the log-probs must match; ``ref_model``: the frozen
        initial weights for the KL penalty, or None."""
        self.model, self.arch, self.optimizer, self.par = model, arch, optimizer, par
        self.loss, self.tiles = loss, tiles
        self.micro_batch_tokens, self.share_prompts = micro_batch_tokens, share_prompts
        self.temperature, self.ref_model = temperature, ref_model
        self.updates_in_step = 0
        """Optimizer steps (``train_on`` calls) taken since the last :meth:`pop_nonfinite_notes`."""
        self.nonfinite_notes: list[str] = []
        """Micro-batches (on this rank) whose loss head saw a non-finite input or term, one phrase
        each, since the last :meth:`pop_nonfinite_notes`."""

    def micro_batches(self, samples: Sequence[Sample]) -> list[MicroBatch]:
        """``samples`` packed into this run's micro-batches (budget, prompt sharing)."""
        return build_micro_batches(samples, self.micro_batch_tokens, self.share_prompts)

    def forward_logprobs(
        self, micro_batches: Sequence[MicroBatch], reference: bool = False
    ) -> list[torch.Tensor] | None:
        """Teacher-forced ``[K]`` log-probs of each micro-batch's head rows under the policy (or,
        with ``reference``, the frozen reference model): last stage; None elsewhere."""
        out = run_packed(
            self.ref_model if reference else self.model,
            self.arch.vocab_size,
            [mb.batch for mb in micro_batches],
            temperature=self.temperature,
        )
        return [o["logprobs"].cpu() for o in out] if self.par.is_last_stage else None

    def train_on(
        self, mbs: Sequence[MicroBatch], coef: LossCoefficients, counts: torch.Tensor | None = None
    ) -> UpdateStats:
        """One optimizer step on packed micro-batches (this DP rank's share). ``counts``: this
        rank's (RL, CE) response tokens of the step, the loss normaliser, when it holds more than
        ``mbs`` do (samples left out because they add nothing, :func:`~megatron_spark.train.loss.adds_nothing`);
        default: those of ``mbs``. Returns this rank's statistics (the loss head's sums are non-zero on
        the statistics owner only: :meth:`UpdateStats.reduced` adds them up)."""
        counts = token_counts(mbs) if counts is None else counts.clone()
        if self.par.dp_size > 1:
            # Response tokens of the whole step, over every DP rank: the loss normaliser.
            dist.all_reduce(counts, group=self.par.dp_group)
        inputs = {mb.batch: token_inputs(mb, coef, counts) for mb in mbs}
        out = run_packed(
            self.model,
            self.arch.vocab_size,
            [mb.batch for mb in mbs],
            forward_only=False,
            fused_head=packed_head(inputs.__getitem__, self.loss, self.tiles),
            temperature=self.temperature,
        )
        lr = self.optimizer.lr  # the rate this update uses
        grad_norm, applied = self.optimizer.step()
        self.updates_in_step += 1
        sums = dict.fromkeys(("loss", "rl_tokens", "entropy_sum", "clipped", "kl_sum", "gap_sum"), 0.0)
        if self.par.owns_stats:
            for j, (mb, o) in enumerate(zip(mbs, out)):
                self.note_nonfinite(o["nonfinite"], j, len(mbs))
                part = head_sums(mb, o, self.loss)
                sums = {k: sums[k] + part[k] for k in sums}
        return UpdateStats(
            **sums,
            gap_tokens=sums["rl_tokens"],
            grad_norm=grad_norm,
            lr=lr,
            steps=1.0,
            applied=float(applied),
        )

    def note_nonfinite(self, counts: torch.Tensor, index: int, num_micro_batches: int) -> None:
        """Keep a phrase naming micro-batch ``index``'s non-finite inputs and terms, if any
        (``counts``: the loss head's ``nonfinite``)."""
        what = describe_nonfinite(counts.cpu())
        if what:
            rank = f"DP rank {self.par.dp_rank} " if self.par.dp_size > 1 else ""
            where = f"{rank}update {self.updates_in_step} micro-batch {index + 1}/{num_micro_batches}"
            self.nonfinite_notes.append(f"{where}: {what}")

    def pop_nonfinite_notes(self) -> list[str]:
        """This step's non-finite phrases (:meth:`note_nonfinite`); starts the next step."""
        notes, self.nonfinite_notes, self.updates_in_step = self.nonfinite_notes, [], 0
        return notes
