"""Weight bridge: live Megatron shards (any TP x PP) -> Hugging Face-named tensors for an engine.

One model replica (its TP x PP ranks) syncs its own engine ranks; data-parallel replicas hold the
same weights and never talk to each other here. For every pipeline stage, in order:

1. the stage's TP ranks all-gather each parameter and split it into HF tensors with the
   converter's mapping (QKV per query group, gate/up, vocabulary padding stripped, tied output
   copy skipped), so every TP rank of the owner stage holds the full tensors;
2. consecutive tensors are packed into one flat buffer of at most ``bucket_bytes`` in the engine's
   dtype;
3. the buffer goes to every engine rank of other stages that shares the owner's TP index (a
   point-to-point send inside the PP group); engine ranks of the owner stage use it in place.

Engine ranks receive the whole model as a stream of ``(hf_name, tensor)`` that they hand to
``engine.update_weights``; every other rank runs the same loop to take part in the collectives.
The engine reshards full tensors to its own TP layout (vLLM's loaders do), so the engine's TP
need not equal training's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_spark.checkpoint.mapping import (
    export_hf_tensors,
    full_to_hf,
    globalize,
    is_tied_output_copy,
    rule_for,
)
from megatron_spark.model.config import ModelArch


@dataclass(frozen=True)
class BridgeConfig:
    bucket_mb: float = 256.0
    """Largest transfer bucket, MiB (bounds the extra memory of a sync on every rank)."""


def unwrap(model):
    """The GPTModel inside DDP / mixed-precision wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _stage_plan(model, arch: ModelArch, tp_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """``(hf_name, shape)`` in the order :func:`export_hf_tensors` yields them, without data."""
    from megatron_spark.model.builder import layer_offset

    offset = layer_offset(model)
    plan = []
    for name, param in model.named_parameters():
        gname = globalize(name, offset)
        if is_tied_output_copy(arch, gname):
            continue
        rule = rule_for(gname)
        shape = list(param.shape)
        if rule.tp_dim is not None:
            shape[rule.tp_dim] *= tp_size
        meta = torch.empty(shape, device="meta")
        plan += [(n, tuple(t.shape)) for n, t in full_to_hf(arch, rule, meta)]
    return plan


def _buckets(plan, elem_bytes: int, bucket_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    buckets, cur, size = [], [], 0
    for name, shape in plan:
        n = elem_bytes * _numel(shape)
        if cur and size + n > bucket_bytes:
            buckets.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    if cur:
        buckets.append(cur)
    return buckets


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class WeightBridge:
    """Streams one model replica's weights to the engine ranks of that replica.

    Construct on every rank of the replica (collective: exchanges the per-stage plans and which
    ranks receive). ``receive`` marks this rank as hosting an engine.
    """

    def __init__(
        self,
        model,
        arch: ModelArch,
        *,
        receive: bool,
        dtype: torch.dtype = torch.float32,
        config: BridgeConfig = BridgeConfig(),
        tp_group=None,
        pp_group=None,
    ):
        self.model = unwrap(model)
        self.arch = arch
        self.receive = receive
        self.dtype = dtype
        self.tp_group = tp_group
        self.pp_group = pp_group
        self.tp_size = dist.get_world_size(tp_group) if tp_group is not None else 1
        self.pp_size = dist.get_world_size(pp_group) if pp_group is not None else 1
        self.pp_rank = dist.get_rank(pp_group) if pp_group is not None else 0
        bucket_bytes = max(1, int(config.bucket_mb * 2**20))
        mine = (_stage_plan(self.model, arch, self.tp_size), receive)
        if self.pp_size > 1:
            gathered: list = [None] * self.pp_size
            # Every stage learns every stage's tensor plan and which PP peers host an engine.
            dist.all_gather_object(gathered, mine, group=pp_group)
        else:
            gathered = [mine]
        elem = torch.empty((), dtype=dtype).element_size()
        self.stage_buckets = [_buckets(plan, elem, bucket_bytes) for plan, _ in gathered]
        self.receivers = [recv for _, recv in gathered]  # indexed by PP rank

    def _global(self, pp_rank: int) -> int:
        return dist.get_global_rank(self.pp_group, pp_rank) if self.pp_group is not None else pp_rank

    def stream(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield every HF tensor on engine ranks; other ranks must still exhaust the iterator."""
        for stage, buckets in enumerate(self.stage_buckets):
            own = stage == self.pp_rank
            source = None
            if own:
                source = export_hf_tensors(self.model, self.arch, self.tp_group)
            for bucket in buckets:
                sizes = [_numel(shape) for _, shape in bucket]
                if own:
                    flat = torch.empty(sum(sizes), dtype=self.dtype, device=_device(self.model))
                    for (name, shape), chunk in zip(bucket, flat.split(sizes)):
                        got_name, tensor = next(source)
                        assert got_name == name and tuple(tensor.shape) == shape, (got_name, name)
                        chunk.view(shape).copy_(tensor)
                    for peer, recv in enumerate(self.receivers):
                        if recv and peer != stage:
                            # The owner stage's rank with our TP index -> that stage's engine rank.
                            dist.send(flat, dst=self._global(peer), group=self.pp_group)
                elif self.receive:
                    flat = torch.empty(sum(sizes), dtype=self.dtype, device=_device(self.model))
                    dist.recv(flat, src=self._global(stage), group=self.pp_group)
                else:
                    continue
                if self.receive:
                    for (name, shape), chunk in zip(bucket, flat.split(sizes)):
                        yield name, chunk.view(shape)
            if own:
                assert next(source, None) is None, "plan and export disagree"

    def sync(self, engine=None) -> int:
        """Push the current weights into ``engine`` (None on ranks without one). Returns bytes sent
        to this rank's engine (0 elsewhere)."""
        stream = self.stream()
        received = 0

        def counted():
            nonlocal received
            for name, t in stream:
                received += t.numel() * t.element_size()
                yield name, t

        if engine is not None:
            engine.update_weights(counted())
        for _ in stream:  # non-engine ranks (and anything the engine left) still take part
            pass
        return received


def _device(model) -> torch.device:
    return next(model.parameters()).device
