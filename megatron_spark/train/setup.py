"""Builders behind :class:`~megatron_spark.train.session.Session` on top of
:mod:`megatron_spark.inference.build`: the trainable policy in megatron DDP and the frozen
reference."""

from __future__ import annotations

import functools

from megatron_spark import platform
from megatron_spark.inference.build import load_model, tokenizer_files
from megatron_spark.train.config import RunConfig


def build_policy(cfg: RunConfig, tokenizer, parallel: platform.ParallelConfig):
    """The trainable policy wrapped in megatron DDP; also returns the arch and tokenizer files."""
    model, arch = load_model(cfg, tokenizer, parallel)
    return (
        wrap_ddp(model, distributed_optimizer=cfg.optim.distributed),
        arch,
        tokenizer_files(cfg.model.tokenizer),
    )


def wrap_ddp(model, distributed_optimizer: bool = False):
    """Megatron DDP (float32 ``main_grad`` buffers) with the gradient finalisation we need. With
    ``distributed_optimizer`` the gradient sync reduce-scatters each bucket over the DP ranks
    (each keeps the shard its optimizer owns) and parameters live in buffers that
    ``start_param_sync`` all-gathers."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=distributed_optimizer
    )
    model = DistributedDataParallel(model.config, ddp_config, model)
    # After the last backward: DP all-reduce (a sum: calculate_per_token_loss) and the tied
    # embedding's first/last-stage all-reduce. No division by megatron's token count: our
    # per-token weights already carry the global normaliser.
    model.config.finalize_model_grads_func = functools.partial(
        _finalize_without_token_scaling, finalize_model_grads
    )
    return model


def _finalize_without_token_scaling(finalize, model, num_tokens=None, **kwargs):
    finalize(model, None, **kwargs)


def build_reference(cfg: RunConfig, tokenizer, parallel: platform.ParallelConfig):
    """A frozen copy of the initial weights for the KL penalty (same layout as the policy)."""
    model, _ = load_model(cfg, tokenizer, parallel)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
