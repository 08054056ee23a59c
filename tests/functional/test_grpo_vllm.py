"""GRPO with the vLLM rollout engine: the weight bridge feeds vLLM after every optimizer step, vLLM's
log-probs of its samples equal the trainer's, and the reward rises; under torchrun also with vLLM
tensor-parallel over the trainer's TP=2 group and with one vLLM replica per data-parallel rank.

Runs where vLLM is installed: here that is vLLM's CPU build in its own virtual environment
(`bash tools/vllm_tests.sh`; docs/rollout.md); elsewhere it is skipped. vLLM's CPU attention
takes head sizes from 32 up, so the model is the tiny Llama preset with 4 heads of 32.
"""

import copy
import os

import pytest

from tests.conftest import FIXED_TASK, REPO, fixed_set_grpo_args, read_metrics, run_cli, run_torchrun

pytest.importorskip("vllm", reason="vLLM is not installed (bash tools/vllm_tests.sh runs these tests)")


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
    """A short SFT of the tiny Llama preset with 4 heads of 32; its checkpoint."""
    from megatron_spark.data.tokenizer import load_tokenizer
    from megatron_spark.model.config import PRESETS
    from tests.hf_reference import make_random_hf_model

    tmp = tmp_path_factory.mktemp("vllm_sft")
    tok = load_tokenizer("builtin:arith")
    cfg = copy.deepcopy(PRESETS["tiny-llama"])
    cfg.update(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id)
    cfg.update(pad_token_id=tok.pad_id, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    make_random_hf_model(cfg, tmp / "init", seed=0, std=0.02)
    run_cli(
        [
            "sft",
            str(REPO / "examples/tiny_arith/sft.yaml"),
            f"run_dir={tmp / 'sft'}",
            f"model.init={tmp / 'init'}",
            "train.num_steps=100",
            "train.eval_every_steps=0",
            "train.eval_num_problems=50",
            *FIXED_TASK,
        ],
        check=True,
        timeout=600,
    )
    return tmp / "sft/checkpoints/step_000100"


@pytest.fixture(scope="module", autouse=True)
def small_kv_cache():
    # The CPU backend reserves its KV cache up front (4 GiB by default); the subprocesses inherit this.
    previous = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    yield
    if previous is None:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE")


VLLM = ["rollout.engine=vllm", "rollout.top_p=1.0"]


def assert_engine_followed_the_trainer(steps):
    # Every step's samples came from the weights the trainer had just updated: a stale or garbled
    # sync puts the engine's log-probs far from the trainer's old ones (0.37 with the sync off).
    gaps = [m["train/logprob_gap_rollout_vs_train"] for m in steps]
    assert max(gaps) < 1e-5, gaps
    assert all(m["train/grad_norm"] > 0 for m in steps[1:])  # the weights did move


def test_grpo_with_vllm_keeps_engine_and_trainer_in_step_and_learns(tmp_path, warm_start):
    grpo = tmp_path / "grpo"
    run_cli([*fixed_set_grpo_args(tmp_path, grpo, warm_start, num_steps=12), *VLLM], check=True, timeout=900)
    steps = [m for m in read_metrics(grpo) if "policy/reward_mean" in m]
    assert len(steps) == 12
    assert_engine_followed_the_trainer(steps)
    rewards = [m["policy/reward_mean"] for m in steps]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards


@pytest.mark.parametrize("layout", [["parallel.tensor_parallel_size=2"], []], ids=["tp2", "dp2"])
def test_grpo_with_vllm_under_torchrun(tmp_path, warm_start, layout):
    """TP=2: one vLLM engine split over both ranks (vLLM's own tensor parallelism, fed full
    tensors by the bridge on every rank). DP=2: an engine per rank, each sampling its half."""
    grpo = tmp_path / "grpo"
    args = [*fixed_set_grpo_args(tmp_path, grpo, warm_start, num_steps=3), *VLLM, *layout]
    proc = run_torchrun(2, ["-m", "megatron_spark.cli", *args])
    if layout:  # the bridge's default transport, shared memory, was the one that deadlocked here
        assert "weight bridge: TP pieces over shared memory" in proc.stdout, proc.stdout[-2000:]
    steps = [m for m in read_metrics(grpo) if "policy/reward_mean" in m]
    assert len(steps) == 3
    assert_engine_followed_the_trainer(steps)
