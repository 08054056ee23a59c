"""VLLMEngine's own logic against a stand-in ``vllm`` module, in the main environment (where vLLM
is not installed) and in the vLLM one.

The stand-in accepts only the keywords listed in ``VLLM_CALLS``, so the engine cannot start using
a vLLM keyword the contract test does not check. It also shows the GPU lifecycle (sleep level 2,
waking the weights before a load and the KV cache after) that vLLM's CPU build, which has no
sleep mode, cannot; what a real vLLM does is tested by test_vllm_engine.py (tools/vllm_tests.sh).
"""

import dataclasses
import json
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from megatron_spark.checkpoint.mapping import expected_hf_names
from megatron_spark.errors import UserError
from megatron_spark.model.config import arch_from_hf_config
from megatron_spark.rollout import RolloutEngine, SamplingParams
from megatron_spark.rollout.vllm_engine import VLLM_CALLS, VLLMConfig, VLLMEngine, request_seed
from tests.conftest import FAMILIES, REPO


def _check_keywords(call: str, kwargs: dict) -> None:
    unknown = set(kwargs) - set(VLLM_CALLS[call])
    assert not unknown, f"{call} called with keywords outside VLLM_CALLS: {sorted(unknown)}"


def _names(family: str) -> list[str]:
    """The Hugging Face tensors a bridge sends for ``family`` (a tied lm_head left out)."""
    return expected_hf_names(arch_from_hf_config(FAMILIES[family]))


class _FakeLLM:
    def __init__(self, model, **kwargs):
        _check_keywords("vllm.LLM", {"model": model, **kwargs})
        self.config = json.loads((Path(model) / "config.json").read_text())
        self.kwargs = kwargs
        self.calls: list[tuple] = []
        self.loaded: list[str] = []

    def generate(self, prompts, sampling_params, **kwargs):
        _check_keywords(
            "vllm.LLM.generate", {"prompts": prompts, "sampling_params": sampling_params, **kwargs}
        )
        self.calls.append(("generate",))
        return [_fake_output(sp) for sp in sampling_params]

    def sleep(self, **kwargs):
        _check_keywords("vllm.LLM.sleep", kwargs)
        self.calls.append(("sleep", kwargs["level"]))

    def wake_up(self, **kwargs):
        _check_keywords("vllm.LLM.wake_up", kwargs)
        self.calls.append(("wake_up", kwargs["tags"]))

    def collective_rpc(self, method, **kwargs):
        """The worker's ``reload_weights``: loads HF names, raises KeyError on others as vLLM's
        loaders do."""
        _check_keywords("vllm.LLM.collective_rpc", {"method": method, **kwargs})
        assert method == "reload_weights"
        _check_keywords("vllm.v1.worker.gpu_model_runner.GPUModelRunner.reload_weights", kwargs["kwargs"])
        self.calls.append(("reload_weights",))
        known = set(_names("llama")) | set(_names("qwen2")) | {"lm_head.weight"}
        self.loaded = []
        for name, _ in kwargs["kwargs"]["weights_iterator"]:
            if name not in known:
                raise KeyError(name)
            self.loaded.append(name)
        return [None]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


class _FakeSamplingParams:
    def __init__(self, **kwargs):
        _check_keywords("vllm.SamplingParams", kwargs)
        self.__dict__.update(kwargs)


def _fake_output(sp):
    """A CompletionOutput-like object: tokens drawn from the request seed, stop ids honoured."""
    rng = random.Random(sp.seed)
    tokens, logprobs, reason = [], [], "length"
    for _ in range(sp.max_tokens):
        tok = rng.randrange(300)
        tokens.append(tok)
        logprobs.append({tok: types.SimpleNamespace(logprob=-tok / 100)})
        if tok in sp.stop_token_ids:
            reason = "stop"
            break
    out = types.SimpleNamespace(token_ids=tokens, logprobs=logprobs, finish_reason=reason)
    return types.SimpleNamespace(outputs=[out])


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = _FakeLLM, _FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")

    def tokens_prompt(**kwargs):
        _check_keywords("vllm.inputs.TokensPrompt", kwargs)
        return dict(kwargs)

    inputs.TokensPrompt = tokens_prompt
    module.inputs = inputs
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine sets it; keep it local
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)


def _weights(family: str = "llama"):
    return [(n, torch.zeros(1)) for n in _names(family)]


def test_lifecycle_wakes_weights_before_loading_and_kv_cache_after(fake_vllm):
    engine = VLLMEngine(FAMILIES["qwen2"], VLLMConfig(tensor_parallel_size=1))
    llm = engine.llm
    assert isinstance(engine, RolloutEngine)
    assert llm.config["architectures"] == ["Qwen2ForCausalLM"]  # filled in for vLLM
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    with pytest.raises(RuntimeError, match="update_weights"):  # dummy weights at start
        engine.generate([[1, 2]], SamplingParams())
    engine.update_weights(_weights("qwen2"))
    # The tied output layer is vLLM's own layer: it gets the embedding, after the stream.
    assert llm.loaded == [*_names("qwen2"), "lm_head.weight"]
    engine.generate([[1, 2]], SamplingParams())
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate([[1, 2]], SamplingParams())
    engine.update_weights(_weights("qwen2"))
    engine.wake()
    engine.generate([[1, 2]], SamplingParams())
    assert llm.calls == [
        ("reload_weights",),
        ("reset_prefix_cache",),  # KV blocks of the old weights must not be reused
        ("generate",),
        ("sleep", 2),
        ("wake_up", ["weights"]),
        ("reload_weights",),
        ("reset_prefix_cache",),
        ("wake_up", ["kv_cache"]),
        ("generate",),
    ]


def test_completions_carry_the_sampled_logprobs_and_stop_reason(fake_vllm):
    engine = VLLMEngine(FAMILIES["llama"])
    engine.update_weights(_weights())
    stop = tuple(range(0, 300, 7))
    params = SamplingParams(max_new_tokens=12, stop_token_ids=stop, seed=3)
    prompts = [[1, 2, 3]] * 16
    completions = engine.generate(prompts, params)
    assert {c.finish_reason for c in completions} == {"stop", "length"}
    assert len({tuple(c.token_ids) for c in completions}) == 16  # equal prompts, own seeds
    for c in completions:
        assert c.prompt_ids == [1, 2, 3]
        assert c.logprobs == [-t / 100 for t in c.token_ids]
        assert (c.token_ids[-1] in stop) == (c.finish_reason == "stop")
    again = engine.generate(prompts, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]
    # A share of the batch (a data-parallel replica's) draws its rows as the whole call did.
    share = engine.generate(prompts[5:11], dataclasses.replace(params, first_row=5))
    assert [c.token_ids for c in share] == [c.token_ids for c in completions[5:11]]


def test_top_p_below_one_is_refused(fake_vllm):
    engine = VLLMEngine(FAMILIES["llama"])
    engine.update_weights(_weights())
    with pytest.raises(UserError, match="top_p"):
        engine.generate([[1]], SamplingParams(top_p=0.9))


def test_rejected_and_missing_weights_name_the_tensor(fake_vllm):
    engine = VLLMEngine(FAMILIES["llama"])
    with pytest.raises(UserError, match=r"model\.bogus\.weight"):
        engine.update_weights([*_weights(), ("model.bogus.weight", torch.zeros(1))])
    with pytest.raises(UserError, match=r"lm_head\.weight"):  # untied: the bridge must send it
        engine.update_weights([w for w in _weights() if w[0] != "lm_head.weight"])
    with pytest.raises(RuntimeError, match="update_weights"):
        engine.generate([[1]], SamplingParams())


def test_request_seeds_differ_per_row_replica_and_call_seed():
    seeds = {request_seed(s, r, row) for s in range(3) for r in range(3) for row in range(100)}
    assert len(seeds) == 900
    assert all(0 <= s < 2**63 for s in seeds)
    assert request_seed(1, 2, 3) == request_seed(1, 2, 3)


def test_importing_the_engine_does_not_import_vllm():
    code = "import sys, megatron_spark.rollout.vllm_engine; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_vllm_engine_on_the_cpu_asks_for_vllms_cpu_build(monkeypatch):
    from megatron_spark import platform
    from megatron_spark.config import load_config
    from megatron_spark.inference.build import build_engine
    from megatron_spark.train.config import RunConfig

    for name in ("vllm", "vllm.platforms"):  # as if not installed (also where it was imported)
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(platform, "use_cuda", lambda: False)
    assert not platform.vllm_cpu_build()
    cfg = load_config(RunConfig, None, ["rollout.engine=vllm", "rollout.top_p=1.0"])
    with pytest.raises(UserError, match="vLLM's CPU build"):
        build_engine(cfg, model=None, arch=None, par=None)
