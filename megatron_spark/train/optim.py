"""AdamW on float32 master weights, global-norm gradient clipping, warm-up + cosine schedule.

Gradients are read from megatron DDP's ``main_grad`` buffers (float32, already summed over the
data-parallel group and, for tied embeddings, over the first and last pipeline stages). The global
norm counts each parameter element once: TP-replicated parameters (norms, biases of row-parallel
layers) only on TP rank 0 and the last stage's tied output-layer copy not at all; the partial sums
are then all-reduced over the model-parallel (TP x PP) group. megatron's own
``clip_grad_by_total_norm_fp32`` needs CUDA tensor types, hence this small version that runs on
both devices.

A step whose gradient norm is not finite is skipped (no parameter or optimizer-state change) and
reported; the trainer decides when too many in a row is an error.

``distributed: true`` shards the optimizer over the data-parallel ranks (ZeRO-1, what megatron's
DistributedOptimizer does): megatron DDP is built with ``use_distributed_optimizer``, so its
gradient sync reduce-scatters each bucket and every DP rank owns one contiguous shard of it. A rank
keeps float32 masters and Adam moments for the parameter elements of its shards only, updates
them, and megatron's parameter all-gather (``start_param_sync``) hands the updated shards to the
other replicas. The arithmetic is elementwise, so the result equals the replicated optimizer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_spark import platform


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 1e-5
    """Peak learning rate (after warm-up)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to ``lr``."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW), applied to matrices only (not norms or biases)."""
    beta1: float = 0.9
    """Adam first-moment decay."""
    beta2: float = 0.999
    """Adam second-moment decay."""
    eps: float = 1e-8
    """Adam denominator epsilon."""
    clip_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still
    reported)."""
    distributed: bool = False
    """Shard the master weights and Adam moments over the data-parallel ranks (ZeRO-1): each
    rank holds 1/DP of the optimizer state. Same updates as unsharded; a checkpoint resumes only
    with the same setting and world size."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.clip_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps, clip_grad_norm and weight_decay must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; expected in [0, 1)")
        if not self.eps > 0:
            raise ValueError(f"eps={self.eps} is invalid; expected > 0")


def lr_at(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total_steps``.

    Linear warm-up over ``warmup_steps`` then cosine from ``lr`` to ``lr * min_lr_ratio`` at the
    last step.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _counts_for_norm(param) -> bool:
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    return param_is_not_shared(param) and param_is_not_tensor_parallel_duplicate(param)


def _shard_slices(model) -> list[tuple[torch.nn.Parameter, int, int]]:
    """``(param, lo, hi)``: the flat element ranges of parameters inside this rank's shard of
    every gradient bucket of a DDP model built with ``use_distributed_optimizer``."""
    slices = []
    for group in model.bucket_groups:
        rank, size = (
            group.intra_distributed_optimizer_instance_rank,
            group.intra_distributed_optimizer_instance_size,
        )
        for bucket in group.buckets:
            n = bucket.grad_data.numel()  # padded by megatron to a multiple of the group size
            s0, s1 = rank * n // size, (rank + 1) * n // size
            for param in bucket.params_list:
                start, end = bucket.param_to_index[param]
                lo, hi = max(start, s0), min(end, s1)
                if lo < hi:
                    slices.append((param, lo - start, hi - start))
    return slices


class Optimizer:
    """AdamW over this rank's parameters of a megatron-DDP-wrapped model (or over this rank's
    shards of them, with ``cfg.distributed``)."""

    def __init__(self, model, cfg: OptimConfig, total_steps: int, model_parallel_group=None):
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        self.group = model_parallel_group
        self.shard_group = None
        if cfg.distributed:
            if not model.ddp_config.use_distributed_optimizer:
                raise ValueError("optim.distributed needs megatron DDP built with use_distributed_optimizer")
            slices = [(p, lo, hi) for p, lo, hi in _shard_slices(model) if p.requires_grad]
            self.params = [p for p, _, _ in slices]
            self.ranges = [(lo, hi) for _, lo, hi in slices]
            self.shard_group = model.bucket_groups[0].intra_distributed_optimizer_instance_group
        else:
            self.params = [p for p in model.parameters() if p.requires_grad]
            self.ranges = [None] * len(self.params)
        # What the masters update: whole parameters, or this rank's flat slices of them.
        self.views = [
            p if r is None else p.data.view(-1)[r[0] : r[1]] for p, r in zip(self.params, self.ranges)
        ]
        # float32 master copies only where the model computes in lower precision.
        self.masters = [v if v.dtype == torch.float32 else v.detach().float() for v in self.views]
        decay = [m for p, m in zip(self.params, self.masters) if p.dim() >= 2]
        no_decay = [m for p, m in zip(self.params, self.masters) if p.dim() < 2]
        self.adam = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            foreach=False,  # same arithmetic order on every device: resume is bitwise
        )
        self.num_steps = 0
        """Optimizer steps taken (skipped ones excluded): drives the schedule."""

    def zero_grad(self) -> None:
        self.model.zero_grad_buffer()
        for p in self.params:
            p.grad = None

    def _grads(self) -> list[torch.Tensor]:
        grads = [p.main_grad if getattr(p, "main_grad", None) is not None else p.grad for p in self.params]
        # With shards, only this rank's slice of each gradient is reduced: use nothing else.
        return [g if r is None or g is None else g.view(-1)[r[0] : r[1]] for g, r in zip(grads, self.ranges)]

    def grad_norm(self) -> float:
        """Global L2 norm of the gradients (collective over the model-parallel group)."""
        local = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
        for p, g in zip(self.params, self._grads()):
            if g is not None and _counts_for_norm(p):
                local += g.detach().double().pow(2).sum()
        if self.shard_group is not None and dist.get_world_size(self.shard_group) > 1:
            # Each DP rank holds the reduced gradient of its shards only: sum the shards.
            dist.all_reduce(local, group=self.shard_group)
        if self.group is not None and dist.get_world_size(self.group) > 1:
            # Sum of squares over every TP and PP rank of this replica (model-parallel group).
            dist.all_reduce(local, group=self.group)
        return float(local.sqrt())

    def step(self) -> tuple[float, bool]:
        """Clip and apply the gradients. Returns ``(grad_norm, applied)``; a non-finite norm skips
        the update."""
        norm = self.grad_norm()
        if not math.isfinite(norm):
            self.zero_grad()
            return norm, False
        scale = 1.0
        if self.cfg.clip_grad_norm > 0 and norm > self.cfg.clip_grad_norm:
            scale = self.cfg.clip_grad_norm / (norm + 1e-6)
        lr = lr_at(self.cfg, self.num_steps, self.total_steps)
        for group in self.adam.param_groups:
            group["lr"] = lr
        with platform.unpatched_ops():  # plain tensor arithmetic on the parameters' own device
            for m, g in zip(self.masters, self._grads()):
                m.grad = None if g is None else (g.float() * scale if scale != 1.0 else g.float())
            self.adam.step()
            with torch.no_grad():
                for v, m in zip(self.views, self.masters):
                    if m is not v:
                        v.copy_(m)
                    m.grad = None
        if self.shard_group is not None:
            self.model.start_param_sync(force_sync=True)  # all-gather the updated shards
        self.num_steps += 1
        self.zero_grad()
        return norm, True

    @property
    def lr(self) -> float:
        return lr_at(self.cfg, self.num_steps, self.total_steps)

    def state_dict(self) -> dict:
        return {
            "adam": self.adam.state_dict(),
            # float32 parameters are their own masters (saved with the model).
            "masters": [m.detach().clone() for v, m in zip(self.views, self.masters) if m is not v],
            "num_steps": self.num_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state["adam"])
        with torch.no_grad():
            lowp = [(v, m) for v, m in zip(self.views, self.masters) if m is not v]
            for (v, m), saved in zip(lowp, state["masters"]):
                m.copy_(saved)
                v.copy_(m)
        self.num_steps = int(state["num_steps"])
