"""The fused head's clipped surrogate, k3 KL and entropy bonus agree with TRL's GRPO loss.

TRL is not a dependency of megatron_spark; it lives in a virtual environment of its own, made and
run by ``bash tools/trl_tests.sh`` (CI runs it after the main suite). Under an interpreter without
TRL the module is skipped. Each case builds a real ``GRPOTrainer`` on a tiny
random Llama, hands ``trainer._compute_loss`` a batch of per-token inputs (left-padded prompts,
right-padded completions of unequal lengths, old/ref log-probs perturbed so that ratios leave the
clip range, advantages of both signs) and compares loss and every parameter gradient with
``train.loss.fused_loss`` on the same model's final hidden states and ``lm_head`` weight.

TRL's aggregation maps to our per-token weights ``w`` (mask m, B sequences, L_i = tokens of i):

    grpo      w_it = 1 / (B * L_i)                      mean over sequences of the token mean
    bnpo      w_it = 1 / sum(m)                         tokens of the micro-batch
    dapo      w_it = 1 / num_items_in_batch             tokens of the whole generation batch
    dr_grpo   w_it = 1 / (B * max_completion_length)
    rl_weight = w, kl_weight = beta * w (k3), entropy_weight = entropy_coef / sum(m) for every
    loss type, TRL ``delta`` (INTELLECT-2 two-sided clip) = our ``dual_clip``.

Exact agreement needs two TRL settings off: ``bf16`` (default True, it autocasts on CPU too) and
``use_bias_correction_kl`` (default True: TRL's KL term is r_t * k3_t, pinned by the last test).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

trl = pytest.importorskip(
    "trl",
    reason="TRL is not installed here; bash tools/trl_tests.sh runs this module in TRL's own venv",
)

from datasets import Dataset  # noqa: E402  (TRL's own dependency)
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from megatron_spark.kernels.fused_head import TileConfig  # noqa: E402
from megatron_spark.train.loss import HeadOutput, LossConfig, TokenInputs, fused_loss  # noqa: E402

VOCAB = 64
PROMPT_LEN = 5
COMPLETION_LEN = 7
ATOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Case:
    loss_type: str
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    entropy_coef: float = 0.0
    extra_items: int = 0
    """dapo: tokens of other micro-batches of the same generation batch, added to num_items_in_batch."""
    bias_correction_kl: bool = False
    """TRL's ``use_bias_correction_kl`` (its default is True: KL term r_t * k3_t; ours is k3_t)."""


CASES = {
    "grpo-kl": Case("grpo", beta=0.04),
    "grpo-asym-nokl": Case("grpo", epsilon=0.2, epsilon_high=0.28),
    "bnpo-asym-kl": Case("bnpo", beta=0.1, epsilon=0.1, epsilon_high=0.3),
    "dapo-kl-global-tokens": Case("dapo", beta=0.04, epsilon_high=0.28, extra_items=13),
    "dapo-nokl": Case("dapo"),
    "dr_grpo-kl": Case("dr_grpo", beta=0.02),
    "dapo-entropy": Case("dapo", beta=0.04, entropy_coef=0.01),
    "dapo-delta-is-dual-clip": Case("dapo", beta=0.04, epsilon_high=0.28, delta=1.5),
}


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama saved to disk (GRPOTrainer loads policy and reference from a path)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return str(path)


def _trainer(model_dir: str, case: Case, tmp_path) -> trl.GRPOTrainer:
    args = trl.GRPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast, on CPU too: float32 for an exact comparison
        save_strategy="no",
        disable_dropout=True,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=COMPLETION_LEN,
        loss_type=case.loss_type,
        beta=case.beta,
        epsilon=case.epsilon,
        epsilon_high=case.epsilon_high,
        delta=case.delta,
        entropy_coef=case.entropy_coef,
        use_bias_correction_kl=case.bias_correction_kl,
    )
    trainer = trl.GRPOTrainer(
        model=model_dir,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["t3 t4 t5"] * 4}),
        processing_class=_tokenizer(),
    )
    # As inside Trainer's loop: training mode, one micro-batch per optimizer step.
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


RATIO_GRID = torch.tensor([0.5, 0.75, 0.95, 1.05, 1.25, 1.4, 1.8, 2.2])
"""pi/pi_old given to the tokens: both sides of every clip range tried, none nearer than 0.03 to a bound."""


def _batch(model, seed: int, extra_items: int) -> dict[str, torch.Tensor]:
    """The dict ``_generate_and_score_completions`` would hand to ``_compute_loss``.

    Token t of sequence i gets ratio ``RATIO_GRID[(5 i + t) % 8]``: the positive-advantage sequences
    0 and 2 and the negative ones 1 and 3 all hold ratios below and above the clip range, and the
    negative ones ratios above 1.5 (TRL's ``delta`` / our dual clip).
    """
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.tensor([5, 3, 4, 5])
    completion_lens = torch.tensor([7, 2, 5, 4])
    b = len(prompt_lens)
    prompt_mask = (torch.arange(PROMPT_LEN) >= PROMPT_LEN - prompt_lens[:, None]).long()  # left padding
    completion_mask = (torch.arange(COMPLETION_LEN) < completion_lens[:, None]).long()  # right padding
    prompt_ids = torch.randint(3, VOCAB, (b, PROMPT_LEN), generator=g) * prompt_mask
    completion_ids = torch.randint(3, VOCAB, (b, COMPLETION_LEN), generator=g) * completion_mask
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.3, -0.8, 0.5, -1.6]),
        "num_items_in_batch": completion_mask.sum() + extra_items,
    }
    with torch.no_grad():
        logp = _logp(model, batch)
    ratio = RATIO_GRID[(5 * torch.arange(b)[:, None] + torch.arange(COMPLETION_LEN)) % len(RATIO_GRID)]
    ref_shift = -0.4 + 0.8 * torch.rand(b, COMPLETION_LEN, generator=g)
    batch["old_per_token_logps"] = (logp - ratio.log()) * completion_mask
    batch["ref_per_token_logps"] = (logp + ref_shift) * completion_mask
    return batch


def _logp(model, batch) -> torch.Tensor:
    """log p of the completion tokens ``[B, C]`` from full logits (the model's unpatched forward)."""
    logits = model(
        input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
        attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
    ).logits[:, PROMPT_LEN - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"][..., None])[..., 0]


def trl_token_weights(case: Case, batch: dict[str, torch.Tensor], max_completion_length: int) -> torch.Tensor:
    """Per-token weight ``[B, C]`` that reproduces TRL's aggregation for ``case.loss_type``."""
    mask = batch["completion_mask"].float()
    b = mask.shape[0]
    if case.loss_type == "grpo":
        return mask / (b * mask.sum(1, keepdim=True).clamp(min=1))
    if case.loss_type == "bnpo":
        return mask / mask.sum().clamp(min=1)
    if case.loss_type == "dapo":
        return mask / batch["num_items_in_batch"].float().clamp(min=1)
    if case.loss_type == "dr_grpo":
        return mask / (b * max_completion_length)
    raise ValueError(case.loss_type)


def _ours(model, case: Case, batch: dict[str, torch.Tensor]) -> tuple[HeadOutput, TokenInputs]:
    """Our loss head on the policy's final hidden states of the completion tokens."""
    mask = batch["completion_mask"].bool()
    out = model.base_model(
        input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
        attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
        use_cache=False,
    )
    hidden = out.last_hidden_state[:, PROMPT_LEN - 1 : -1][mask]  # [T, H]: states predicting completions
    w = trl_token_weights(case, batch, COMPLETION_LEN)[mask]
    inputs = TokenInputs(
        targets=batch["completion_ids"][mask],
        old_logprobs=batch["old_per_token_logps"][mask],
        ref_logprobs=batch["ref_per_token_logps"][mask],
        advantages=batch["advantages"][:, None].expand_as(mask)[mask],
        rl_weight=w,
        kl_weight=case.beta * w,
        entropy_weight=torch.full_like(w, case.entropy_coef / mask.sum().item()),
        ce_weight=torch.zeros_like(w),
    )
    cfg = LossConfig(
        clip_low=case.epsilon,
        clip_high=case.epsilon if case.epsilon_high is None else case.epsilon_high,
        dual_clip=case.delta,
        kl_estimator="k3",
    )
    tiles = TileConfig(vocab_chunk=24)  # several vocabulary tiles
    return fused_loss(hidden, model.lm_head.weight, inputs, cfg, tiles), inputs


def _loss_and_grads(model, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def max_differences(name: str, model_dir: str, tmp_path) -> tuple[float, float, float]:
    """(|loss|, max |loss diff|, max |grad diff| over every parameter) between TRL and ours."""
    case = CASES[name]
    trainer = _trainer(model_dir, case, tmp_path)
    model = trainer.model
    batch = _batch(model, seed=0, extra_items=case.extra_items)
    trl_loss, trl_grads = _loss_and_grads(model, lambda: trainer._compute_loss(model, batch))
    our_loss, our_grads = _loss_and_grads(model, lambda: _ours(model, case, batch)[0].loss)
    assert all(g.abs().max() > 0 for g in trl_grads.values())
    grad_diff = max((our_grads[n] - g).abs().max().item() for n, g in trl_grads.items())
    return trl_loss.abs().item(), (our_loss - trl_loss).abs().item(), grad_diff


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradients_match_trl(name, model_dir, tmp_path):
    loss, loss_diff, grad_diff = max_differences(name, model_dir, tmp_path)
    assert loss > 1e-3
    assert loss_diff < ATOL and grad_diff < ATOL, (loss_diff, grad_diff)


def test_trl_default_kl_is_ratio_weighted(model_dir, tmp_path):
    """TRL's default ``use_bias_correction_kl=True`` adds beta * r_t * k3_t, ours beta * k3_t: the
    loss gap is exactly sum_t w_t beta (r_t - 1) k3_t (and the gradients differ even at r = 1)."""
    case = dataclasses.replace(CASES["dapo-kl-global-tokens"], beta=1.0, bias_correction_kl=True)
    trainer = _trainer(model_dir, case, tmp_path)
    batch = _batch(trainer.model, seed=0, extra_items=case.extra_items)
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, batch)
        ours, inp = _ours(trainer.model, case, batch)
    d = inp.ref_logprobs - ours.logprobs
    ratio = torch.exp(ours.logprobs - inp.old_logprobs)
    gap = (inp.kl_weight * (ratio - 1) * (d.exp() - d - 1)).sum()
    assert gap.abs() > 100 * ATOL
    torch.testing.assert_close(trl_loss - ours.loss, gap, atol=ATOL, rtol=0)


def test_head_logprobs_are_the_models_log_softmax(model_dir, tmp_path):
    """The per-token log-probs our head computes from the final hidden states and ``lm_head`` are
    the model's own float32 log-softmax of its logits, at every completion token."""
    case = CASES["grpo-asym-nokl"]
    trainer = _trainer(model_dir, case, tmp_path)
    batch = _batch(trainer.model, seed=1, extra_items=0)
    with torch.no_grad():
        ours, _ = _ours(trainer.model, case, batch)
        reference = _logp(trainer.model, batch)[batch["completion_mask"].bool()]
    torch.testing.assert_close(ours.logprobs, reference, atol=ATOL, rtol=0)


def test_the_batch_reaches_every_clip_region_that_acts(model_dir, tmp_path):
    """The comparison above means something only if the batch holds tokens wherever the clip acts:
    both advantage signs below, inside and above the clip range; positive advantages between the
    symmetric and the raised upper bound (where clip-higher differs from a symmetric clip); negative
    advantages above the dual clip's bound."""
    case = CASES["dapo-delta-is-dual-clip"]
    trainer = _trainer(model_dir, case, tmp_path)
    batch = _batch(trainer.model, seed=0, extra_items=0)
    mask = batch["completion_mask"].bool()
    with torch.no_grad():
        ratio = (_logp(trainer.model, batch) - batch["old_per_token_logps"]).exp()[mask]
    sign = batch["advantages"][:, None].expand_as(mask)[mask].sign()
    low, high = 1 - case.epsilon, 1 + case.epsilon_high
    for name, region in {
        "below": ratio < low,
        "inside": (ratio > low) & (ratio < 1 + case.epsilon),
        "above": ratio > high,
    }.items():
        for s in (1.0, -1.0):
            assert (region & (sign == s)).any(), (name, s)
    assert ((ratio > 1 + case.epsilon) & (ratio < high) & (sign > 0)).any()
    assert ((ratio > case.delta) & (sign < 0)).any()
