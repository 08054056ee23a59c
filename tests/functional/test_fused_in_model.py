"""The fused head inside the model's forward/backward equals the unfused path (logits ->
log-probs -> the same per-token objective through autograd): loss, log-probs and every gradient,
untied (Llama) and tied (Qwen2) embeddings."""

import pytest
import torch

from megatron_spark import platform
from megatron_spark.checkpoint.convert import load_pretrained
from megatron_spark.model.forward import FusedHead, pack, run_packed
from megatron_spark.train.kernels.fused_head import HeadConfig, TokenInputs, token_objective
from tests.conftest import sample_sequences


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fused_head_equals_unfused_path(family, hf_models):
    platform.setup(platform.ParallelConfig())
    model, arch = load_pretrained(hf_models[family][0], platform.ParallelConfig())
    seqs = sample_sequences(arch.vocab_size, lengths=(9, 3, 20, 6, 14))
    batches = [pack(seqs[:2]), pack(seqs[2:])]
    current = [r["logprobs"] for r in run_packed(model, arch.vocab_size, batches)]  # before any update
    gen = torch.Generator().manual_seed(4)
    inputs = {}
    for batch, lp in zip(batches, current):
        t = batch.num_tokens
        r = lambda lo, hi, t=t: lo + (hi - lo) * torch.rand(t, generator=gen)  # noqa: E731
        inputs[batch] = TokenInputs(
            targets=torch.zeros(t, dtype=torch.long),  # filled in by run_packed
            old_logprobs=lp + r(-0.4, 0.4),
            ref_logprobs=lp + r(-0.3, 0.3),
            advantages=r(-1.5, 1.5),
            rl_weight=r(0.0, 0.05),
            kl_weight=r(0.0, 0.01),
            entropy_weight=torch.zeros(t),
            ce_weight=torch.where(torch.rand(t, generator=gen) < 0.3, r(0.01, 0.05), torch.zeros(t)),
        )
    cfg = HeadConfig(token_chunk=16, vocab_chunk=100, dual_clip=3.0)

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    model.zero_grad(set_to_none=True)
    fused = run_packed(
        model, arch.vocab_size, batches, forward_only=False, fused_head=FusedHead(cfg, lambda b: inputs[b])
    )
    fused_grads = grads()

    def unfused_loss(logp, batch):
        targets, valid = batch.next_token_targets()
        inp = inputs[batch]
        masked = TokenInputs(
            targets,
            inp.old_logprobs,
            inp.ref_logprobs,
            inp.advantages,
            *(getattr(inp, k) * valid for k in ("rl_weight", "kl_weight", "entropy_weight", "ce_weight")),
        )
        return token_objective(logp, masked, cfg)[0].sum()

    unfused = run_packed(model, arch.vocab_size, batches, loss_fn=unfused_loss, forward_only=False)
    unfused_grads = grads()

    for f, u in zip(fused, unfused):
        assert abs(f["loss"].item() - u["loss"].item()) <= 1e-6 * abs(u["loss"].item())
        assert (f["logprobs"] - u["logprobs"]).abs().max() < 1e-5
        assert 0 < f["clip_fraction"].item() < 1 and "clip_fraction" not in u  # two different paths
    assert fused_grads.keys() == unfused_grads.keys()
    for name, g in unfused_grads.items():
        err = (fused_grads[name] - g).norm() / g.norm()
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
