"""VLLMEngine on a real vLLM: its sampling log-probs equal a float64 teacher-forced forward.

Runs wherever vLLM is installed. On these CPU machines that is vLLM's CPU build in its own
virtual environment (`bash tools/vllm_tests.sh`; docs/rollout.md); elsewhere it is skipped.
The CPU build has no sleep mode, so ``sleep`` keeps the weights there; on GPUs sleep mode is on
and is not exercised by this file.
"""

import copy
import os

import pytest
import torch

from megatron_spark.errors import UserError
from megatron_spark.rollout import RolloutEngine, SamplingParams
from megatron_spark.rollout.protocol import GREEDY_TOP_P
from tests.conftest import FAMILIES, sample_sequences
from tests.hf_reference import make_random_hf_model

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (bash tools/vllm_tests.sh runs these tests)")
from vllm.platforms import current_platform  # noqa: E402

from megatron_spark.rollout.vllm_engine import VLLMConfig, VLLMEngine  # noqa: E402

# vLLM's CPU attention kernels take head sizes from 32 up: two query heads of 32 on width 64.
CONFIGS = {
    family: {**cfg, "num_attention_heads": 2, "num_key_value_heads": 1} for family, cfg in FAMILIES.items()
}
TOL = 3e-5
"""float32 against float64. vLLM's CPU kernels sum in another order than transformers' (the HF
engine stays under 1e-5 on these shapes); measured: at most 1.1e-5."""
PROMPT_LENGTHS = (1, 7, 16, 3, 40, 2)


@pytest.fixture(scope="module", autouse=True)
def single_process_world():
    # external_launcher joins the torchrun world; a plain pytest process is a world of one.
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", "29561")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes several


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cfg = CONFIGS["qwen2"]  # qkv bias and tied embeddings: the harder family for the loaders
    return make_random_hf_model(cfg, tmp_path_factory.mktemp("vllm_ref"), seed=7, std=0.2)


@pytest.fixture(scope="module")
def engine(reference):
    # One engine per process: external_launcher binds vLLM's parallel state to this process.
    config = VLLMConfig(dtype="float32", enforce_eager=True, sleep_mode=not current_platform.is_cpu())
    eng = VLLMEngine(CONFIGS["qwen2"], config)
    eng.update_weights(_weights(reference))
    yield eng
    eng.close()  # vLLM's process groups go with it, the default one included
    assert not torch.distributed.is_initialized()
    eng.close()  # a second call does nothing


def _weights(model):
    """HF-named tensors as a bridge streams them: every parameter, the tied lm_head left out."""
    return [(n, t.detach().clone()) for n, t in model.state_dict().items() if n != "lm_head.weight"]


def _prompts(seed=0):
    return sample_sequences(300, lengths=PROMPT_LENGTHS, seed=seed)


@torch.no_grad()
def _max_gap(model, completions, temperature=1.0):
    """Largest |engine - reference| log-prob of a sampled token; the reference is one unpadded
    float64 forward of prompt + completion, at the sampling temperature."""
    model64 = copy.deepcopy(model).double()
    gaps = []
    for c in completions:
        ids = torch.tensor([c.prompt_ids + c.token_ids])
        logits = model64(ids).logits[0, len(c.prompt_ids) - 1 : -1] / temperature
        expected = torch.log_softmax(logits, -1).gather(-1, ids[0, len(c.prompt_ids) :, None])[:, 0]
        gaps.append((torch.tensor(c.logprobs, dtype=torch.float64) - expected).abs().max().item())
    return max(gaps)


def test_engine_satisfies_the_protocol(engine):
    assert isinstance(engine, RolloutEngine)


def test_logprobs_equal_the_teacher_forced_forward(engine, reference):
    prompts = [p for p in _prompts() for _ in range(4)]  # GRPO-like: each prompt 4 times
    completions = engine.generate(prompts, SamplingParams(temperature=0.8, max_new_tokens=12, seed=1))
    assert [c.prompt_ids for c in completions] == prompts
    assert all(len(c.token_ids) == 12 and c.finish_reason == "length" for c in completions)
    assert _max_gap(reference, completions, temperature=0.8) < TOL
    # Equal prompts draw independent samples (per-request seeds).
    assert len({tuple(c.token_ids) for c in completions[:4]}) > 1


def test_same_seed_repeats_and_a_share_samples_its_rows(engine):
    prompts = _prompts(0) + _prompts(1)
    params = SamplingParams(max_new_tokens=10, seed=5)
    whole = engine.generate(prompts, params)
    again = engine.generate(prompts, params)
    assert [c.token_ids for c in whole] == [c.token_ids for c in again]
    share = engine.generate(prompts[5:11], SamplingParams(max_new_tokens=10, seed=5, first_row=5))
    assert [c.token_ids for c in share] == [c.token_ids for c in whole[5:11]]
    other = engine.generate(prompts, SamplingParams(max_new_tokens=10, seed=6))
    assert [c.token_ids for c in other] != [c.token_ids for c in whole]


def test_greedy_decoding_takes_the_most_likely_token(engine, reference):
    """Greedy (the protocol's tiny top_p, as evaluations ask) is vLLM's temperature 0, and its
    log-probs are temperature 1's, which is what a greedy call at temperature 1 expects."""
    params = SamplingParams(top_p=GREEDY_TOP_P, max_new_tokens=10, seed=9)
    completions = engine.generate(_prompts(), params)
    assert _max_gap(reference, completions) < TOL
    with torch.no_grad():
        for c in completions:
            logits = reference(torch.tensor([c.prompt_ids + c.token_ids])).logits[0].double()
            assert logits[len(c.prompt_ids) - 1 : -1].argmax(-1).tolist() == c.token_ids
    with pytest.raises(UserError, match="temperature 1"):
        engine.generate(_prompts(), SamplingParams(top_p=GREEDY_TOP_P, temperature=0.5))


def test_stop_tokens_end_a_sequence_and_are_kept(engine, reference):
    free = engine.generate(_prompts(), SamplingParams(max_new_tokens=10, seed=2))
    stop = free[0].token_ids[3]  # a token the first row draws at its 4th step
    stopped = engine.generate(_prompts(), SamplingParams(max_new_tokens=10, seed=2, stop_token_ids=(stop,)))
    first = stopped[0]
    assert first.finish_reason == "stop" and first.token_ids[-1] == stop
    assert first.token_ids == free[0].token_ids[: free[0].token_ids.index(stop) + 1]
    assert _max_gap(reference, stopped) < TOL


def test_new_weights_replace_the_old_ones(engine, reference, tmp_path):
    """After an update the engine samples from the new weights (stale weights would fail)."""
    changed = make_random_hf_model(CONFIGS["qwen2"], tmp_path, seed=8, std=0.2)
    try:
        engine.update_weights(_weights(changed))
        completions = engine.generate(_prompts(), SamplingParams(max_new_tokens=8, seed=3))
        assert _max_gap(changed, completions) < TOL
        assert _max_gap(reference, completions) > 1e-2
    finally:
        engine.update_weights(_weights(reference))
    assert _max_gap(reference, engine.generate(_prompts(), SamplingParams(max_new_tokens=8, seed=3))) < TOL


def test_sleep_then_wake_keeps_generating(engine, reference):
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(_prompts(), SamplingParams(max_new_tokens=4))
    engine.wake()
    if engine.config.sleep_mode:  # level 2 dropped the weights: the next update brings them
        engine.update_weights(_weights(reference))
    assert _max_gap(reference, engine.generate(_prompts(), SamplingParams(max_new_tokens=6, seed=4))) < TOL


def test_a_missing_tensor_is_named(engine, reference):
    weights = [(n, t) for n, t in _weights(reference) if n != "model.layers.1.mlp.up_proj.weight"]
    try:
        with pytest.raises(UserError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
            engine.update_weights(weights)
        with pytest.raises(RuntimeError, match="no valid weights"):
            engine.generate(_prompts(), SamplingParams(max_new_tokens=4))
    finally:
        engine.update_weights(_weights(reference))
