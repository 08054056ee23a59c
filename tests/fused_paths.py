"""Shared by the fused-head-in-model tests: run a model's micro-batches through the fused head and
through the unfused path (logits -> log-probs -> the same per-token objective via autograd) and
check that loss, log-probs and every local parameter gradient agree."""

import torch

from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.model.forward import run_packed
from megatron_spark.train.loss import WEIGHT_FIELDS, LossConfig, TokenInputs, packed_head, token_objective


def _grads(model):
    """Gradients where training reads them: megatron DDP's ``main_grad`` buffers (after the
    gradient sync) when wrapped, else ``.grad``; then cleared."""
    if hasattr(model, "finish_grad_sync"):
        model.finish_grad_sync()
        out = {n: p.main_grad.clone() for n, p in model.named_parameters()}
        model.zero_grad_buffer()
        return out
    out = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def assert_fused_equals_unfused(
    model, vocab_size, batches, inputs, cfg: LossConfig, tiles: TileConfig, where: str = ""
):
    """``inputs[batch]`` holds each micro-batch's TokenInputs (their targets are unused: both
    paths take the batch's own)."""
    _grads(model)  # start from zero
    head = packed_head(inputs.__getitem__, cfg, tiles)
    fused = run_packed(model, vocab_size, batches, forward_only=False, fused_head=head)
    g_fused = _grads(model)

    def unfused_loss(logp, batch):
        targets, valid = batch.next_token_targets()
        inp = inputs[batch]
        masked = TokenInputs(
            targets,
            inp.old_logprobs,
            inp.ref_logprobs,
            inp.advantages,
            *(getattr(inp, k) * valid for k in WEIGHT_FIELDS),
        )
        return token_objective(logp, masked, cfg)[0].sum()

    unfused = run_packed(model, vocab_size, batches, loss_fn=unfused_loss, forward_only=False)
    g_unfused = _grads(model)
    for f, u in zip(fused, unfused):  # the last pipeline stage only
        assert abs(f["loss"].item() - u["loss"].item()) <= 1e-6 * abs(u["loss"].item()), (
            where,
            f["loss"],
            u["loss"],
        )
        assert (f["logprobs"] - u["logprobs"]).abs().max() < 1e-5, where
        assert "clip_fraction" in f and "clip_fraction" not in u  # two different paths ran
    assert g_fused.keys() == g_unfused.keys()
    for name, g in g_unfused.items():
        assert g.abs().sum() > 0, f"{where} {name}: no gradient reached it"
        err = ((g_fused[name] - g).norm() / g.norm()).item()
        assert err < 1e-5, f"{where} {name}: relative error {err:.2e}"
    return fused
