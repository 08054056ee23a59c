"""Differences between megatron-core versions, and the workarounds we apply to it, in one place.

Supported: megatron-core 0.16.x (Python 3.11, our CPU machines) through 0.19.x (Python 3.12, NGC).
"""

from __future__ import annotations

from pathlib import Path

import torch


def sync_save_strategy():
    """A dist-checkpoint save strategy that writes the ``torch_dist`` format in this process.

    megatron's default strategy writes through forked worker processes fed by a spawned
    multiprocessing Manager, after preloading a second host copy of every tensor. On the CPU that
    doubles peak memory, needs a ``__main__`` guard in every entry point, and hung in our runs
    (megatron-core 0.16.1). The files written here are the same format, with megatron's own save
    planner, so megatron's default load strategy reads them at any TP/PP.
    """
    import os

    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        TorchDistSaveShardedStrategy,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )

    class InProcessTorchDistSave(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir: Path) -> None:
            sd, _, _ = _replace_state_dict_keys_with_sharded_keys(
                sharded_state_dict, self.keep_only_main_replica
            )
            dcp.save(
                mcore_to_pyt_state_dict(sd, False),
                # One writer thread per core (measured: 2 threads write 2.3 GB in 2.1 s vs 4.9 s
                # for one, fsync included, on a 2-core machine).
                storage_writer=dcp.FileSystemWriter(
                    str(checkpoint_dir), thread_count=max(1, min(8, os.cpu_count() or 1))
                ),
                planner=MCoreSavePlanner(
                    dedup_replicated_tensors=not self.keep_only_main_replica, flatten_state_dict=False
                ),
            )

    return InProcessTorchDistSave("torch_dist", 1)


class OutputLayerBypass:
    """While active, ``GPTModel`` returns the final hidden states ``[b, s, H]`` instead of logits,
    and :attr:`weight` holds the output weight it would have used (its own, or the embedding when
    tied), so a loss head can consume both without the logits ever existing.

    megatron-core 0.16-0.19 compute the logits as ``self.output_layer(hidden, weight=...,
    runtime_gather_output=...)`` and return ``logits.transpose(0, 1)`` when no labels are given;
    the bypass replaces that one call on this model instance only. Under sequence parallelism the
    hidden states are gathered over the TP group first (differentiable: its backward
    reduce-scatters, so the head must hand back its partial input gradient: see
    :attr:`gathers_sequence`).
    """

    def __init__(self, model):
        self.layer = model.output_layer
        self.weight = None

    @property
    def gathers_sequence(self) -> bool:
        """True under sequence parallelism: the gather's backward sums the input gradient over
        the TP group."""
        return bool(self.layer.sequence_parallel)

    def _forward(self, hidden_states, weight=None, runtime_gather_output=None):
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        self.weight = self.layer.weight if weight is None else weight
        if self.layer.sequence_parallel:
            hidden_states = gather_from_sequence_parallel_region(hidden_states)
        return hidden_states, None

    def __enter__(self):
        self.layer.forward = self._forward
        return self

    def __exit__(self, *exc):
        del self.layer.forward  # back to the class's forward
        return False


class PositionRotary:
    """While active, ``GPTModel``'s rotary embedding gives every packed token the angle of its own
    position (``positions`` ``[T]``, e.g. :meth:`PackedBatch.position_ids`) instead of restarting
    at every packed sequence, so a continuation of a shared prefix is numbered on from the prefix.

    ``GPTModel`` asks ``self.rotary_pos_emb(seq_len, packed_seq=...)`` for the table of the first
    ``seq_len`` positions; the answer here is that table, from the module's own forward, indexed by
    ``positions`` (``[T, 1, 1, d]``). megatron's unfused packed RoPE (``_apply_rotary_pos_emb_thd``,
    megatron-core 0.16) applies a table whose length equals the packed length token by token at its
    packed offset. Transformer Engine's fused RoPE does not: the builder turns fusion off.

    megatron's function gets there by slicing the table per packed sequence and concatenating the
    slices again, in Python, and takes its cosine and sine anew for every query and key of every
    layer. While active, a call with this table goes to :class:`RotateByTable` instead: the same
    products and sum on the whole packed tensor (the same numbers), with the cosine and sine taken
    once per forward. Any other call (another table, interleaved or partial rotary, ``mscale``,
    context parallelism) goes to megatron's function.
    """

    def __init__(self, model, positions):
        if not hasattr(model, "rotary_pos_emb"):
            raise ValueError("per-token positions need a model with rotary position embeddings")
        self.module = model.rotary_pos_emb
        self.positions = positions
        self.table = None
        self._cos_sin: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}
        self._megatron_thd = None

    def _forward(self, *args, **kwargs):
        table = type(self.module).forward(self.module, int(self.positions.max()) + 1)
        self.table = table[self.positions.to(table.device)]
        self._cos_sin = {}
        return self.table

    def _apply_thd(
        self,
        t,
        cu_seqlens,
        freqs,
        rotary_interleaved=False,
        multi_latent_attention=False,
        mscale=1.0,
        cp_group=None,
    ):
        if (
            freqs is not self.table
            or rotary_interleaved
            or multi_latent_attention
            or mscale != 1.0
            or (cp_group is not None and cp_group.size() > 1)
            or freqs.shape[-1] != t.shape[-1]
            or t.dim() != 3
        ):
            return self._megatron_thd(
                t,
                cu_seqlens,
                freqs,
                rotary_interleaved=rotary_interleaved,
                multi_latent_attention=multi_latent_attention,
                mscale=mscale,
                cp_group=cp_group,
            )
        if t.dtype not in self._cos_sin:  # [T, 1, d], as megatron casts them
            self._cos_sin[t.dtype] = (torch.cos(freqs[:, 0]).to(t.dtype), torch.sin(freqs[:, 0]).to(t.dtype))
        return RotateByTable.apply(t, *self._cos_sin[t.dtype])

    def __enter__(self):
        from megatron.core.models.common.embeddings import rope_utils

        self.module.forward = self._forward
        self._megatron_thd = getattr(rope_utils, "_apply_rotary_pos_emb_thd", None)
        if self._megatron_thd is not None:
            rope_utils._apply_rotary_pos_emb_thd = self._apply_thd
        return self

    def __exit__(self, *exc):
        from megatron.core.models.common.embeddings import rope_utils

        del self.module.forward
        if self._megatron_thd is not None:
            rope_utils._apply_rotary_pos_emb_thd = self._megatron_thd
        self.table = None
        self._cos_sin = {}
        return False


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension (non-interleaved RoPE), as megatron's."""
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotateByTable(torch.autograd.Function):
    """``t * cos + rotate_half(t) * sin`` (megatron's unfused RoPE, in its order of operations);
    ``t`` ``[T, heads, d]``, ``cos``/``sin`` ``[T, 1, d]``. Backward: ``g * cos`` plus the
    transposed rotation of ``g * sin`` (``[y1, y2] -> [y2, -y1]``)."""

    @staticmethod
    def forward(ctx, t, cos, sin):
        ctx.save_for_backward(cos, sin)
        return t * cos + _rotate_half(t) * sin

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        y1, y2 = torch.chunk(grad * sin, 2, dim=-1)
        return grad * cos + torch.cat((y2, -y1), dim=-1), None, None
