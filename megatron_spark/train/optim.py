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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist


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

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.clip_grad_norm < 0:
            raise ValueError("warmup_steps and clip_grad_norm must be >= 0")


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


class Optimizer:
    """AdamW over this rank's parameters of a megatron-DDP-wrapped model."""

    def __init__(self, model, cfg: OptimConfig, total_steps: int, model_parallel_group=None):
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        self.group = model_parallel_group
        self.params = [p for p in model.parameters() if p.requires_grad]
        # float32 master copies only where the model computes in lower precision.
        self.masters = [p if p.dtype == torch.float32 else p.detach().float() for p in self.params]
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
        return [p.main_grad if getattr(p, "main_grad", None) is not None else p.grad for p in self.params]

    def grad_norm(self) -> float:
        """Global L2 norm of the gradients (collective over the model-parallel group)."""
        local = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
        for p, g in zip(self.params, self._grads()):
            if g is not None and _counts_for_norm(p):
                local += g.detach().double().pow(2).sum()
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
        for m, g in zip(self.masters, self._grads()):
            m.grad = None if g is None else (g.float() * scale if scale != 1.0 else g.float())
        self.adam.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                if m is not p:
                    p.copy_(m)
                m.grad = None
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
            "masters": [m.detach().clone() for p, m in zip(self.params, self.masters) if m is not p],
            "num_steps": self.num_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state["adam"])
        with torch.no_grad():
            lowp = [(p, m) for p, m in zip(self.params, self.masters) if m is not p]
            for (p, m), saved in zip(lowp, state["masters"]):
                m.copy_(saved)
                p.copy_(m)
        self.num_steps = int(state["num_steps"])
