"""HFEngine: sampling logprobs equal a teacher-forced unpadded forward, and the protocol holds."""

import dataclasses

import pytest
import torch

from megatron_spark.errors import UserError
from megatron_spark.rollout import RolloutEngine, SamplingParams
from megatron_spark.rollout.hf_engine import HFEngine
from tests.conftest import FAMILIES, sample_sequences
from tests.hf_reference import reference_logprobs

PROMPT_LENGTHS = (1, 7, 16, 3, 40, 2)  # very different lengths: heavy left padding
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny shapes gain nothing from intra-op threads; on a shared 2-core machine two threads per
    # op made these tests ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def reference(hf_models, family):
    return hf_models[family][1]


@pytest.fixture(scope="module")
def engine(reference, family):
    eng = HFEngine(FAMILIES[family])
    eng.update_weights(reference.state_dict().items())
    return eng


def _prompts(seed=0):
    return sample_sequences(300, lengths=PROMPT_LENGTHS, seed=seed)


@torch.no_grad()
def _teacher_forced_logits(model, completion):
    """float64 logits predicting each generated token, [new_tokens, vocab], one unpadded row."""
    ids = torch.tensor([completion.prompt_ids + completion.token_ids])
    logits = model(ids).logits[0].double()
    return logits[len(completion.prompt_ids) - 1 : -1]


def _assert_logprobs_match(model, completions):
    refs = reference_logprobs(model, [c.prompt_ids + c.token_ids for c in completions])
    for c, ref in zip(completions, refs):
        got = torch.tensor(c.logprobs, dtype=torch.float64)
        expected = ref[len(c.prompt_ids) - 1 :]
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < TOL


def test_engine_satisfies_the_protocol(engine):
    assert isinstance(engine, RolloutEngine)


def test_logprobs_equal_unpadded_teacher_forced_forward(engine, reference):
    completions = engine.generate(_prompts(), SamplingParams(max_new_tokens=12, seed=1))
    assert [c.prompt_ids for c in completions] == _prompts()
    assert all(len(c.token_ids) == 12 and c.finish_reason == "length" for c in completions)
    _assert_logprobs_match(reference, completions)


def test_repeated_prompts_share_one_prefill_and_still_match(engine, reference):
    """GRPO's n copies of a prompt are prefilled once and their cache rows repeated: every copy's
    log-probs still equal the unpadded forward, also after rows stop and leave the batch."""
    prompts = [p for p in _prompts() for _ in range(3)]
    prompts = prompts[::2] + prompts[1::2]  # copies apart, not side by side
    stop = sorted({t for p in prompts for t in p})[:40]  # frequent enough that rows drop early
    params = SamplingParams(max_new_tokens=12, seed=3, stop_token_ids=stop)
    completions = engine.generate(prompts, params)
    assert [c.prompt_ids for c in completions] == prompts
    assert any(c.finish_reason == "stop" for c in completions)
    assert any(c.finish_reason == "length" for c in completions)
    _assert_logprobs_match(reference, completions)


def test_temperature_is_applied_to_logprobs(engine, reference):
    completions = engine.generate(_prompts(), SamplingParams(temperature=0.7, max_new_tokens=8, seed=2))
    for c in completions:
        expected = torch.log_softmax(_teacher_forced_logits(reference, c) / 0.7, dim=-1)
        expected = expected.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert (torch.tensor(c.logprobs, dtype=torch.float64) - expected).abs().max().item() < TOL


def test_same_seed_repeats_and_other_seed_differs(engine):
    params = SamplingParams(max_new_tokens=10, seed=5)
    first = engine.generate(_prompts(), params)
    again = engine.generate(_prompts(), params)
    other = engine.generate(_prompts(), SamplingParams(max_new_tokens=10, seed=6))
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.logprobs for c in first] == [c.logprobs for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_a_share_of_the_batch_samples_its_rows_as_the_whole_call_does(engine):
    """A data-parallel replica generates its slice with ``first_row``: same tokens and log-probs
    as those rows of one call over the whole batch; without it the rows differ."""
    prompts = _prompts(seed=0) + _prompts(seed=1)  # 12 prompts
    params = SamplingParams(max_new_tokens=10, seed=12)
    whole = engine.generate(prompts, params)
    share = engine.generate(prompts[5:11], dataclasses.replace(params, first_row=5))
    assert len(share) == 6
    assert [c.token_ids for c in share] == [c.token_ids for c in whole[5:11]]
    assert [c.logprobs for c in share] == [c.logprobs for c in whole[5:11]]
    unshifted = engine.generate(prompts[5:11], params)
    assert [c.token_ids for c in unshifted] != [c.token_ids for c in whole[5:11]]


def test_equal_prompts_draw_independent_samples(engine):
    completions = engine.generate([[5, 6, 7]] * 8, SamplingParams(max_new_tokens=10, seed=0))
    assert len({tuple(c.token_ids) for c in completions}) == 8


def test_samples_follow_the_tempered_distribution(engine, reference):
    # E[log p(x)] for x ~ p is -entropy(p): a sampler that favours likely tokens (or ignores the
    # temperature) lands far outside 4 standard errors of it.
    prompt, temperature, n = [5, 17, 42], 0.3, 4000
    completions = engine.generate([prompt] * n, SamplingParams(temperature=temperature, max_new_tokens=1))
    sampled = torch.tensor([c.logprobs[0] for c in completions], dtype=torch.float64)
    with torch.no_grad():
        logits = reference(torch.tensor([prompt])).logits[0, -1].double()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum()
    assert (sampled.mean() + entropy).abs() < 4 * sampled.std() / n**0.5


def test_stop_tokens_end_each_sequence_and_are_kept(engine, reference):
    stop = tuple(range(0, 300, 10))  # a tenth of the vocabulary: rows stop at different steps
    params = SamplingParams(max_new_tokens=16, stop_token_ids=stop, seed=3)
    completions = engine.generate(_prompts() * 3, params)
    reasons = {c.finish_reason for c in completions}
    assert reasons == {"stop", "length"}
    assert len({len(c.token_ids) for c in completions}) > 2
    for c in completions:
        assert not set(c.token_ids[:-1]) & set(stop)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in stop
        else:
            assert len(c.token_ids) == 16 and c.token_ids[-1] not in stop
    # Rows dropped from the batch mid-way must not disturb the rows still decoding.
    _assert_logprobs_match(reference, completions)


def test_tiny_top_p_is_greedy_and_keeps_full_logprobs(engine, reference):
    completions = engine.generate(_prompts(), SamplingParams(top_p=1e-6, max_new_tokens=8, seed=4))
    for c in completions:
        assert c.token_ids == _teacher_forced_logits(reference, c).argmax(-1).tolist()
    _assert_logprobs_match(reference, completions)  # top-p does not renormalise the logprob


def test_top_p_only_draws_from_the_nucleus(engine, reference):
    completions = engine.generate(_prompts(), SamplingParams(top_p=0.3, max_new_tokens=8, seed=7))
    for c in completions:
        probs = torch.softmax(_teacher_forced_logits(reference, c), dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        for step, token in enumerate(c.token_ids):
            rank = (order[step] == token).nonzero().item()
            assert sorted_probs[step, :rank].sum().item() < 0.3 + 1e-6  # mass before it < top_p


def test_chunking_gives_the_same_samples_as_one_batch(engine, family, reference):
    small = HFEngine(FAMILIES[family], max_batch_sequences=2)
    small.update_weights(reference.state_dict().items())
    params = SamplingParams(max_new_tokens=10, stop_token_ids=(1, 2, 3), seed=8)
    one_batch = engine.generate(_prompts(), params)
    chunked = small.generate(_prompts(), params)
    assert [c.token_ids for c in chunked] == [c.token_ids for c in one_batch]
    for a, b in zip(chunked, one_batch):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=TOL)


def test_scoring_matches_the_reference(engine, reference):
    completions = engine.generate(_prompts(), SamplingParams(max_new_tokens=6, seed=9))
    scored = engine.logprobs([c.prompt_ids + c.token_ids for c in completions], PROMPT_LENGTHS)
    for c, lp in zip(completions, scored):
        assert torch.allclose(torch.tensor(lp), torch.tensor(c.logprobs), atol=TOL)


# ---- update_weights -------------------------------------------------------------------------


def _stream(reference, drop=None, replace=None):
    for name, t in reference.state_dict().items():
        if name == drop:
            continue
        yield (name, replace[1]) if replace and name == replace[0] else (name, t)


@pytest.mark.parametrize(
    "case",
    ["missing", "wrong_shape", "wrong_dtype", "unknown", "twice"],
)
def test_bad_weight_streams_name_the_tensor(reference, family, case):
    eng = HFEngine(FAMILIES[family])
    name = "model.layers.1.mlp.up_proj.weight"
    shape = reference.state_dict()[name].shape
    stream = {
        "missing": _stream(reference, drop=name),
        "wrong_shape": _stream(reference, replace=(name, torch.zeros(shape[0] + 1, shape[1]))),
        "wrong_dtype": _stream(reference, replace=(name, torch.zeros(shape, dtype=torch.float64))),
        "unknown": [*_stream(reference), ("model.layers.9.mlp.up_proj.weight", torch.zeros(shape))],
        "twice": [*_stream(reference), (name, torch.zeros(shape))],
    }[case]
    target = "model.layers.9.mlp.up_proj.weight" if case == "unknown" else name
    with pytest.raises(UserError, match=target.replace(".", r"\.")):
        eng.update_weights(stream)
    with pytest.raises(RuntimeError, match="update_weights"):
        eng.generate([[1, 2]], SamplingParams())


def test_output_layer_is_required_only_when_untied(reference, family):
    eng = HFEngine(FAMILIES[family])
    if FAMILIES[family]["tie_word_embeddings"]:
        eng.update_weights(_stream(reference, drop="lm_head.weight"))
        assert len(eng.generate([[1, 2]], SamplingParams(max_new_tokens=2))[0].token_ids) == 2
    else:
        with pytest.raises(UserError, match=r"lm_head\.weight"):
            eng.update_weights(_stream(reference, drop="lm_head.weight"))


def test_sleep_discards_weights_until_the_next_update(reference, family):
    eng = HFEngine(FAMILIES[family])
    with pytest.raises(RuntimeError, match="update_weights"):  # dummy weights at start
        eng.generate([[1, 2]], SamplingParams())
    eng.update_weights(reference.state_dict().items())
    params = SamplingParams(max_new_tokens=5, seed=11)
    before = eng.generate(_prompts(), params)
    eng.sleep()
    assert all(p.numel() == 0 for p in eng.model.parameters())  # storage given back
    with pytest.raises(RuntimeError, match="wake"):
        eng.generate([[1, 2]], params)
    eng.wake()
    with pytest.raises(RuntimeError, match="update_weights"):
        eng.generate([[1, 2]], params)
    eng.update_weights(reference.state_dict().items())
    after = eng.generate(_prompts(), params)
    assert [c.token_ids for c in after] == [c.token_ids for c in before]


def test_weights_written_in_place_after_sleep(reference, family):
    """A bridge may fill ``weight_targets()`` and stream those same tensors back: after a sleep
    the targets are fresh storage, and the engine then samples exactly as after a copied stream."""
    eng = HFEngine(FAMILIES[family])
    eng.update_weights(reference.state_dict().items())
    params = SamplingParams(max_new_tokens=5, seed=11)
    before = eng.generate(_prompts(), params)
    eng.sleep()
    targets = eng.weight_targets()
    assert all(t.numel() > 0 for t in targets.values())
    source = reference.state_dict()
    for name, t in targets.items():
        t.copy_(source[name])
    eng.update_weights(iter(targets.items()))
    eng.wake()
    assert [c.token_ids for c in eng.generate(_prompts(), params)] == [c.token_ids for c in before]
    with pytest.raises(UserError, match="not sent"):  # in place or not, every tensor is streamed
        eng.update_weights(list(targets.items())[1:])


def test_bad_sampling_params_are_rejected():
    for kwargs in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**kwargs)


@pytest.mark.parametrize("masked", [True, False])
def test_decode_attention_equals_sdpa(masked):
    """The engine's one-token decode attention equals transformers' SDPA function (GQA 8 over 4
    heads, left-padded rows masked); longer queries are SDPA's own call."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from megatron_spark.rollout.hf_engine import decode_attention

    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(5, 4, 9, 16, generator=gen), torch.randn(5, 4, 9, 16, generator=gen)
    mask = None
    if masked:
        mask = torch.ones(5, 1, 1, 9, dtype=torch.bool)
        mask[1, ..., :3] = False  # a left-padded row
    q = torch.randn(5, 8, 1, 16, generator=gen)
    ours, _ = decode_attention(module, q, k, v, mask, scaling=0.25)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert ours.shape == ref.shape == (5, 1, 8, 16)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    q3 = torch.randn(5, 8, 3, 16, generator=gen)
    mask3 = None if mask is None else mask.expand(5, 1, 3, 9).tril(6)
    torch.testing.assert_close(
        decode_attention(module, q3, k, v, mask3, scaling=0.25)[0],
        sdpa_attention_forward(module, q3, k, v, mask3, scaling=0.25)[0],
    )
