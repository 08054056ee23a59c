"""Prompt sharing (train.share_prompts), one process: a group's prompt packed once gives what
packing every sample whole gives; TP/PP/SP run in tests/distributed/test_fused_head_tp.py."""

import pytest

from megatron_spark import platform
from megatron_spark.checkpoint.convert import load_pretrained
from tests.shared_prompt_paths import assert_shared_equals_whole

SINGLE = platform.ParallelConfig()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_shared_prompt_packing_equals_whole_samples(family, hf_models):
    platform.setup(SINGLE)
    model, arch = load_pretrained(hf_models[family][0], SINGLE)
    assert_shared_equals_whole(model, arch.vocab_size, where=family)
