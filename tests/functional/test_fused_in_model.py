"""The fused head inside the model's forward/backward equals the unfused path (logits ->
log-probs -> the same per-token objective through autograd): loss, log-probs and every gradient,
untied (Llama) and tied (Qwen2) embeddings."""

import pytest
import torch

from megatron_spark import platform
from megatron_spark.checkpoint.convert import load_pretrained
from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.model.forward import pack, run_packed
from megatron_spark.train.loss import LossConfig, TokenInputs
from tests.conftest import sample_sequences
from tests.fused_paths import assert_fused_equals_unfused


@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "megatron-ddp"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fused_head_equals_unfused_path(family, ddp, hf_models):
    """With ``megatron-ddp`` the gradients are read from DDP's main_grad buffers after the sync,
    where the optimizer reads them (tied embeddings: one buffer gets both uses' gradients)."""
    platform.setup(platform.ParallelConfig())
    model, arch = load_pretrained(hf_models[family][0], platform.ParallelConfig())
    if ddp:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False)
        model = DistributedDataParallel(model.config, ddp_config, model)
    seqs = sample_sequences(arch.vocab_size, lengths=(9, 3, 20, 6, 14))
    batches = [pack(seqs[:2]), pack(seqs[2:])]
    current = [r["logprobs"] for r in run_packed(model, arch.vocab_size, batches)]  # before any update
    gen = torch.Generator().manual_seed(4)
    inputs = {}
    for batch, lp in zip(batches, current):
        t = batch.num_tokens
        r = lambda lo, hi, t=t: lo + (hi - lo) * torch.rand(t, generator=gen)  # noqa: E731
        inputs[batch] = TokenInputs(
            targets=torch.zeros(t, dtype=torch.long),  # unused: run_packed gives the batch's own
            old_logprobs=lp + r(-0.4, 0.4),
            ref_logprobs=lp + r(-0.3, 0.3),
            advantages=r(-1.5, 1.5),
            rl_weight=r(0.0, 0.05),
            kl_weight=r(0.0, 0.01),
            entropy_weight=torch.zeros(t),
            ce_weight=torch.where(torch.rand(t, generator=gen) < 0.3, r(0.01, 0.05), torch.zeros(t)),
        )
    tiles = TileConfig(token_chunk=16, vocab_chunk=100)
    fused = assert_fused_equals_unfused(
        model, arch.vocab_size, batches, inputs, LossConfig(dual_clip=3.0), tiles, where=family
    )
    assert all(0 < f["clip_fraction"].item() < 1 for f in fused)
