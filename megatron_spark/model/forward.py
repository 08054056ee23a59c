"""Packed (THD) forward passes through megatron's pipeline schedule, returning token log-probs.

Sequences are concatenated without padding into one row per micro-batch and delimited by
``cu_seqlens``; attention and RoPE restart at every boundary, except where a sequence continues
a shared prefix (``prefix_of``: a GRPO group's prompt packed once, each response attending to it
and numbered on from its end). Every pipeline stage receives the same :class:`PackedBatch`
(middle stages need ``cu_seqlens`` for attention); the last stage turns its vocab-parallel logits
into log-probs of the next token, or of the targets of its head rows (``head_index``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from megatron_spark import platform
from megatron_spark.kernels.fused_head import Objective, TileConfig


@dataclass(eq=False)  # compared by identity: a batch is a specific micro-batch
class PackedBatch:
    """Sequences packed into one row: ``tokens`` is ``[T]``, ``cu_seqlens`` is ``[n + 1]``."""

    tokens: torch.Tensor
    cu_seqlens: torch.Tensor
    prefix_of: list[int] | None = None
    """Per sequence, the index of an earlier sequence it continues, or -1 (None: all -1). A
    continuation attends to its prefix's tokens, then causally to its own, and its positions go on
    from the prefix's length: packing ``[prompt, r1, r2]`` with ``prefix_of = [-1, 0, 0]`` gives
    ``r1`` and ``r2`` the activations they have in ``prompt + r1`` and ``prompt + r2``. Prefixes
    are never continuations themselves. Needs :class:`~megatron_spark.model.attention.SDPACoreAttention`."""
    head_index: torch.Tensor | None = None
    """``[K]``: positions whose hidden states the loss head reads, in order (a shared prompt's
    last position once per continuation); None: every position (``[T]``, next-token targets)."""
    head_targets: torch.Tensor | None = None
    """``[K]``: the token each head row predicts."""

    def __post_init__(self) -> None:
        if self.prefix_of is not None:
            n = len(self.cu_seqlens) - 1
            if len(self.prefix_of) != n or any(
                not (p == -1 or (0 <= p < i and self.prefix_of[p] == -1))
                for i, p in enumerate(self.prefix_of)
            ):
                raise ValueError(
                    f"prefix_of {self.prefix_of}: one entry per sequence, -1 or an earlier plain sequence"
                )
        if (self.head_index is None) != (self.head_targets is None) or (
            self.head_index is not None and self.head_index.shape != self.head_targets.shape
        ):
            raise ValueError("head_index and head_targets come together, of one length")

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())

    @property
    def num_head_rows(self) -> int:
        """Rows of the loss head's per-token arrays: ``K`` with head rows, else ``T``."""
        return self.num_tokens if self.head_index is None else int(self.head_index.numel())

    @property
    def seq_lengths(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    def position_ids(self) -> torch.Tensor:
        """``[T]``: 0..len-1 within every sequence, continuations counting on from their prefix."""
        lengths = self.seq_lengths
        first = self.cu_seqlens[:-1].to(torch.int64, copy=True)
        if self.prefix_of is not None:  # a continuation's first token sits at its prefix's length
            first -= torch.tensor([lengths[p] if p >= 0 else 0 for p in self.prefix_of], dtype=torch.int64)
        return torch.arange(self.num_tokens) - torch.repeat_interleave(first, torch.tensor(lengths))

    def next_token_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``targets[t] = tokens[t + 1]`` inside a sequence; ``valid[t]`` is False at each last token.
        With head rows: ``head_targets`` and all True (``[K]``)."""
        if self.head_index is not None:
            return self.head_targets, torch.ones(self.num_head_rows, dtype=torch.bool)
        targets = torch.roll(self.tokens, -1)
        valid = torch.ones(self.num_tokens, dtype=torch.bool)
        valid[self.cu_seqlens[1:] - 1] = False
        return torch.where(valid, targets, torch.zeros_like(targets)), valid

    def padded_to(self, multiple: int) -> PackedBatch:
        """This batch with one trailing pad sequence (token 0) so that its length is a multiple
        of ``multiple`` (sequence parallelism splits the sequence evenly over the TP group). The
        pad attends only to itself; callers drop its outputs."""
        pad = -self.num_tokens % multiple
        if pad == 0:
            return self
        return PackedBatch(
            tokens=torch.cat([self.tokens, self.tokens.new_zeros(pad)]),
            cu_seqlens=torch.cat([self.cu_seqlens, self.cu_seqlens[-1:] + pad]),
            prefix_of=None if self.prefix_of is None else [*self.prefix_of, -1],
            head_index=self.head_index,
            head_targets=self.head_targets,
        )

    def packed_seq_params(self):
        from megatron.core.packed_seq_params import PackedSeqParams

        cu = self.cu_seqlens.to(platform.device(), torch.int32)
        longest = max(self.seq_lengths)
        params = PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=cu,
            cu_seqlens_kv=cu,
            max_seqlen_q=longest,
            max_seqlen_kv=longest,
        )
        if self.prefix_of is not None:
            # megatron hands the params object to the core attention unchanged; ours reads this.
            params.prefix_of = list(self.prefix_of)
        return params


def pack(sequences: Sequence[Sequence[int]], **fields) -> PackedBatch:
    """Pack token-id sequences (each non-empty) into one :class:`PackedBatch` (``fields``: its
    optional ``prefix_of`` / ``head_index`` / ``head_targets``)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pack() needs at least one sequence and no empty sequences")
    lengths = torch.tensor([len(s) for s in sequences])
    cu = torch.zeros(len(sequences) + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(lengths, 0)
    tokens = torch.tensor([t for s in sequences for t in s], dtype=torch.int64)
    return PackedBatch(tokens=tokens, cu_seqlens=cu, **fields)


def vocab_parallel_logprobs(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log p(target) from TP-sharded logits ``[..., V_padded / tp]`` without gathering them.

    Padded vocabulary rows (ids >= ``vocab_size``) are masked out so the result equals a softmax
    over the real vocabulary. Uses megatron's ``vocab_parallel_cross_entropy`` (one all-reduce of
    max, one of the target logit, one of the sum-exp over the TP group).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    local = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * local
    ids = torch.arange(start, start + local, device=logits.device)
    logits = logits.float()
    if start + local > vocab_size:
        logits = logits.masked_fill(ids >= vocab_size, float("-inf"))
    return -vocab_parallel_cross_entropy(logits, targets)


LossFn = Callable[[torch.Tensor, PackedBatch], torch.Tensor]


@dataclass
class FusedHead:
    """Compute the loss with the fused head from hidden states (the logits never exist)."""

    tiles: TileConfig
    """Tiling (``vocab_size`` is filled in by ``run_packed``)."""
    objective: Callable[[PackedBatch, torch.Tensor], Objective]
    """``objective(batch, keep)``: the objective of a micro-batch's head rows, given ``keep``
    (on the device), false at each row without a target, where it must weigh nothing
    (:func:`megatron_spark.train.loss.packed_head`)."""


def run_packed(
    model,
    vocab_size: int,
    batches: Sequence[PackedBatch],
    loss_fn: LossFn | None = None,
    forward_only: bool = True,
    fused_head: FusedHead | None = None,
    temperature: float = 1.0,
) -> list[dict[str, torch.Tensor]]:
    """Run micro-batches through megatron's schedule (any PP).

    Returns one dict per micro-batch: ``loss`` and ``logprobs`` (plus ``entropy``,
    the objective's extras with the fused head). ``logprobs[t]`` is
    log p(tokens[t+1] | tokens[..t]) within the sequence, 0 at every last token; for a batch with head rows, ``logprobs[k]`` is
    log p(head_targets[k]) at position ``head_index[k]`` (``[K]``). ``loss_fn(logprobs, batch)`` gives the scalar to
    back-propagate (already normalised: the schedule does not average over micro-batches). With
    ``fused_head`` the last stage never forms logits: the fused head computes the loss and
    log-probs from the final hidden states and the output weight (``loss_fn`` is then unused).
    ``temperature`` divides the logits (the sampling distribution of a rollout engine at that
    temperature; with the fused head the hidden states are divided, which is the same since the
    output layer has no bias). Results come back on the last pipeline stage only; other stages get
    an empty list.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_spark.kernels.fused_head import fused_head as head_kernel
    from megatron_spark.mcore_compat import OutputLayerBypass, PositionRotary
    from megatron_spark.model.attention import SDPACoreAttention

    dev = platform.device()
    if any(b.prefix_of is not None for b in batches) and not any(
        isinstance(m, SDPACoreAttention) for m in model.modules()
    ):
        raise ValueError("shared-prefix packing (prefix_of) needs SDPACoreAttention as the core attention")
    # Sequence parallelism splits each packed row evenly over the TP group: pad it to a multiple.
    multiple = parallel_state.get_tensor_model_parallel_world_size() if model.config.sequence_parallel else 1

    def forward_step(data_iterator, model_chunk):
        batch: PackedBatch = next(data_iterator)
        targets, valid = batch.next_token_targets()
        inner = model_chunk
        while hasattr(inner, "module"):  # DDP / mixed-precision wrappers
            inner = inner.module
        bypass = OutputLayerBypass(inner) if fused_head is not None and inner.post_process else None
        run = batch.padded_to(multiple)
        positions = run.position_ids()
        rotary = contextlib.nullcontext()
        if run.prefix_of is not None:
            rotary = PositionRotary(inner, positions.to(dev))
        with bypass or contextlib.nullcontext(), rotary, platform.unpatched_ops():
            output = model_chunk(
                input_ids=run.tokens.view(1, -1).to(dev),
                position_ids=positions.view(1, -1).to(dev),
                attention_mask=None,
                packed_seq_params=run.packed_seq_params(),
            )
        rows = None if batch.head_index is None else batch.head_index.to(dev)

        def loss_func(logits: torch.Tensor):
            # logits [1, T (+ SP padding), V_padded/tp] (vocab-parallel)
            logits = logits[:, : batch.num_tokens] if rows is None else logits[:, rows]
            if temperature != 1.0:
                logits = logits / temperature
            logprobs = vocab_parallel_logprobs(logits[0], targets.to(dev), vocab_size)
            logprobs = logprobs * valid.to(dev)
            loss = loss_fn(logprobs, batch) if loss_fn is not None else logprobs.sum() * 0.0
            num_tokens = valid.sum().to(dev)
            return loss, num_tokens, {"loss": loss.detach(), "logprobs": logprobs.detach()}

        def fused_loss_func(hidden: torch.Tensor):
            # hidden [1, T (+ SP padding), H]; bypass.weight [V_padded/tp, H] (this rank's rows)
            # index_select: its backward sums a shared prompt's last row (the head row of every
            # continuation) with index_add_, in the same order every run (advanced indexing's
            # backward does not, with several threads)
            hidden = hidden[:, : batch.num_tokens] if rows is None else hidden.index_select(1, rows)
            keep = valid.to(dev)
            tp_rank = parallel_state.get_tensor_model_parallel_rank()
            if temperature != 1.0:
                hidden = hidden / temperature
            out = head_kernel(
                hidden[0],
                bypass.weight,
                targets.to(dev),
                fused_head.objective(batch, keep),
                dataclasses.replace(fused_head.tiles, vocab_size=vocab_size),
                vocab_start=tp_rank * bypass.weight.shape[0],
                tp_group=parallel_state.get_tensor_model_parallel_group(),
                sum_dx=not bypass.gathers_sequence,
            )
            stats = {
                "loss": out.loss.detach(),
                "logprobs": out.logprobs * keep,
                "entropy": out.entropy,
                **out.extras,
            }
            return out.loss, valid.sum().to(dev), stats

        return output, fused_loss_func if bypass is not None else loss_func

    longest = max(b.num_tokens for b in batches)
    out = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=longest,
        micro_batch_size=1,
        forward_only=forward_only,
    )
    return out


def split_logprobs(logprobs: torch.Tensor, batch: PackedBatch) -> list[list[float]]:
    """Per-sequence lists of ``len - 1`` log-probs (the first token has none)."""
    cu = batch.cu_seqlens.tolist()
    return [logprobs[s : e - 1].tolist() for s, e in zip(cu[:-1], cu[1:])]
