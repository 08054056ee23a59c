"""Shared by the prompt-sharing tests: the same samples packed whole and with each group's prompt
once (``build_micro_batches(share_prompts=...)``) give the same per-sample log-probs, loss and
parameter gradients through the model, forward-only and with the fused head."""

import torch
import torch.distributed as dist

from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.model.forward import run_packed
from megatron_spark.train.batch import Sample, build_micro_batches
from megatron_spark.train.loss import LossCoefficients, LossConfig, packed_head, token_counts, token_inputs
from tests.fused_paths import _grads

BUDGET = 48
"""Token budget per micro-batch: either layout of the samples below needs several."""


def grouped_samples(vocab: int, seed: int = 5) -> list[Sample]:
    """Groups of 5, 1 and 3 samples with prompts of 9, 4 and 6 tokens (responses of 1..12 tokens),
    RL samples with advantages and rollout log-probs, and a teacher-forced (``ce``) sample."""
    gen = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(1, vocab, (n,), generator=gen).tolist()  # noqa: E731
    out = []
    for prompt_len, resp_lens in ((9, (7, 1, 12, 4, 9)), (4, (5,)), (6, (3, 11, 2))):
        prompt = ids(prompt_len)
        for n in resp_lens:
            adv = float(torch.randn((), generator=gen))
            rollout = (-4 * torch.rand(n, generator=gen)).tolist()
            out.append(Sample(prompt, ids(n), rollout_logprobs=rollout, advantage=adv))
    out.append(Sample(ids(5), ids(6), objective="ce"))
    return out


def run_layout(model, vocab, samples, share: bool, tiles: TileConfig):
    """Per-sample log-probs (forward-only, then with the fused head), summed loss and gradients of
    ``samples`` packed one way; log-probs and loss on the last pipeline stage only (else None)."""
    mbs = build_micro_batches(samples, BUDGET, share_prompts=share)
    counts = token_counts(mbs)
    inputs = {
        mb.batch: token_inputs(mb, LossCoefficients(kl=0.0, entropy=0.01, ce=0.5), counts) for mb in mbs
    }
    batches = [mb.batch for mb in mbs]
    plain = run_packed(model, vocab, batches)
    _grads(model)  # start from zero
    head = packed_head(inputs.__getitem__, LossConfig(), tiles)
    fused = run_packed(model, vocab, batches, forward_only=False, fused_head=head)
    grads = _grads(model)
    if model.config.sequence_parallel:
        # Under SP a norm weight's gradient is each rank's partial sum over its share of the
        # sequence (megatron all-reduces it over TP before the optimizer step); the two layouts
        # split the sequence differently, so compare the sums.
        from megatron.core import parallel_state

        for name, param in model.named_parameters():
            if getattr(param, "sequence_parallel", False):
                dist.all_reduce(grads[name], group=parallel_state.get_tensor_model_parallel_group())
    if not fused:
        return None, None, None, grads, sum(b.num_tokens for b in batches)

    def per_sample(outs):
        got = {}
        for mb, o in zip(mbs, outs):
            for i, (lo, hi) in zip(mb.sample_ids, mb.spans):
                got[i] = o["logprobs"][lo:hi].double().cpu()
        return [got[i] for i in range(len(samples))]

    loss = sum(float(o["loss"]) for o in fused)
    return per_sample(plain), per_sample(fused), loss, grads, sum(b.num_tokens for b in batches)


def assert_shared_equals_whole(model, vocab, where=""):
    samples = grouped_samples(vocab)
    tiles = TileConfig(token_chunk=16, vocab_chunk=64)
    whole = run_layout(model, vocab, samples, False, tiles)
    shared = run_layout(model, vocab, samples, True, tiles)
    # Prompts 9 x 5 + 6 x 3 tokens, packed once per group: 9 x 4 + 6 x 2 = 48 fewer.
    assert whole[4] - shared[4] == 48, (where, whole[4], shared[4])
    if whole[0] is not None:
        for kind, a, b in (("forward", whole[0], shared[0]), ("fused", whole[1], shared[1])):
            assert [len(x) for x in a] == [len(s.response_ids) for s in samples]
            err = max((x - y).abs().max().item() for x, y in zip(a, b))
            assert err < 1e-5, f"{where} {kind} log-probs differ by {err:.2e}"
        assert abs(whole[2] - shared[2]) <= 1e-5 * abs(whole[2]), (where, whole[2], shared[2])
    assert whole[3].keys() == shared[3].keys()
    for name, g in whole[3].items():
        assert g.abs().sum() > 0, f"{where} {name}: no gradient reached it"
        err = ((shared[3][name] - g).norm() / g.norm()).item()
        assert err < 1e-5, f"{where} {name}: relative error {err:.2e}"
