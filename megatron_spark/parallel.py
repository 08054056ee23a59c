"""Who this process is in the job and how it talks to the others: :class:`ParallelContext`.

Process layout: megatron's TP x PP groups form one model replica; data parallelism (DP) is the
remaining factor of the world size. Work that one replica does once (a rollout on the HF engine,
verifying its samples) runs on the replica's leader (its model-parallel rank 0) and is shared with
the replica's other ranks; a step-wide list is cut into contiguous per-replica shares; statistics
are summed over the world with each replica counted once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from megatron_spark.errors import UserError

T = TypeVar("T")


def on_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, its result (or its :class:`UserError`) on every rank: for decisions
    that read or lock shared files, which only one rank may do."""
    result, message = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except UserError as e:
            message = str(e)
    if dist.get_world_size() > 1:
        box = [None if dist.get_rank() else (result if message is None else None), message]
        dist.broadcast_object_list(box, src=0)  # rank 0's answer to every rank
        _, message = box
        result = box[0] if dist.get_rank() else result
    if message is not None:
        raise UserError(message)
    return result


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in the TP x PP x DP layout and the collectives the loops use."""

    rank: int
    """Global rank."""
    dp_rank: int
    dp_size: int
    mp_leader: int
    """Global rank of this replica's first model-parallel rank (the leader)."""
    is_last_stage: bool
    """Whether this rank holds the last pipeline stage (the loss head)."""
    owns_stats: bool
    """Whether this rank reports the replica's loss-head statistics (last stage, TP rank 0)."""
    tp_group: Any = None
    pp_group: Any = None
    dp_group: Any = None
    mp_group: Any = None

    @classmethod
    def from_megatron(cls) -> ParallelContext:
        """The context of megatron's initialised parallel state (after ``platform.setup``)."""
        from megatron.core import parallel_state as ps

        mp_group = ps.get_model_parallel_group()
        last = ps.is_pipeline_last_stage()
        return cls(
            rank=dist.get_rank(),
            dp_rank=ps.get_data_parallel_rank(),
            dp_size=ps.get_data_parallel_world_size(),
            mp_leader=dist.get_global_rank(mp_group, 0),
            is_last_stage=last,
            owns_stats=last and ps.get_tensor_model_parallel_rank() == 0,
            tp_group=ps.get_tensor_model_parallel_group(),
            pp_group=ps.get_pipeline_model_parallel_group(),
            dp_group=ps.get_data_parallel_group(),
            mp_group=mp_group,
        )

    @property
    def is_leader(self) -> bool:
        """Whether this rank is its replica's leader."""
        return self.rank == self.mp_leader

    def on_leader(self, fn: Callable[[], T]) -> T:
        """``fn()`` run once per model replica (on its leader), the result shared with the
        replica's other TP/PP ranks, so that all of them train on the same samples and rewards."""
        result = [fn() if self.is_leader else None]
        if dist.get_world_size(self.mp_group) > 1:
            # The replica leader's result to its other TP/PP ranks.
            dist.broadcast_object_list(result, src=self.mp_leader, group=self.mp_group)
        return result[0]

    def my_slice(self, items: Sequence) -> tuple[list, int]:
        """This DP rank's contiguous share of a step-wide list and the index of its first entry;
        the shares differ in size by at most one and together cover the whole list."""
        n = len(items)
        start, stop = self.dp_rank * n // self.dp_size, (self.dp_rank + 1) * n // self.dp_size
        return list(items[start:stop]), start

    def my_share(self, items: Sequence) -> list:
        """This DP rank's contiguous share of a step-wide list (see :meth:`my_slice`)."""
        return self.my_slice(items)[0]

    def gather_replicas(self, obj) -> list:
        """``obj`` of every DP replica, in DP-rank order (on every rank; ``[obj]`` without DP)."""
        if self.dp_size == 1:
            return [obj]
        out = [None] * self.dp_size
        dist.all_gather_object(out, obj, group=self.dp_group)
        return out

    def gather_world(self, items: list) -> list:
        """Every rank's ``items`` concatenated in rank order (on every rank)."""
        if dist.get_world_size() == 1:
            return list(items)
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, items)  # each rank's list, to every rank
        return [x for part in out for x in part]

    def min_over_replicas(self, value: int) -> int:
        """The smallest ``value`` over the DP replicas (every rank must call this)."""
        if self.dp_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.dp_group)
        return int(t.item())

    def reduce(self, sums: dict[str, float]) -> dict[str, float]:
        """Every rank's ``sums`` added up over the world, key by key (result on every rank)."""
        keys = sorted(sums)
        vec = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
        if dist.get_world_size() > 1:
            dist.all_reduce(vec)  # every rank's share of each statistic, summed (all ranks)
        return dict(zip(keys, vec.tolist()))

    def sum_replicas(
        self,
        per_replica: dict[str, float],
        shared: dict[str, float] | None = None,
        per_rank: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """World totals, in one collective, of counts that every rank of a replica holds alike
        (``per_replica``: counted once per replica, from its leader), of counts that every rank
        holds alike (``shared``: counted once) and of each rank's own contributions (``per_rank``:
        added as given, e.g. loss-head statistics that only their owner ranks hold). Every rank
        calls it with the same keys."""
        sums = {k: float(v) if self.is_leader else 0.0 for k, v in per_replica.items()}
        first = self.is_leader and self.dp_rank == 0
        sums |= {k: float(v) if first else 0.0 for k, v in (shared or {}).items()}
        sums |= {k: float(v) for k, v in (per_rank or {}).items()}
        return self.reduce(sums)
