"""Parsing Hugging Face configs into ModelArch, and the parallel-split checks."""

import pytest

from megatron_spark.errors import UserError
from megatron_spark.model.config import PRESETS, arch_from_hf_config, arch_from_preset
from tests.conftest import FAMILIES, LLAMA31


def test_v4_and_v5_rope_fields_agree():
    v4 = {**FAMILIES["llama"], "rope_theta": 1234.0}
    v5 = {k: v for k, v in FAMILIES["llama"].items() if k != "rope_theta"}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 1234.0}
    assert arch_from_hf_config(v4) == arch_from_hf_config(v5)
    assert arch_from_hf_config(v4).rope_theta == 1234.0


def test_llama31_scaling_and_head_dim():
    arch = arch_from_hf_config(LLAMA31)
    assert arch.rope_llama3_factor == 8.0 and arch.head_dim == 16


def test_unsupported_rope_scaling_is_refused():
    cfg = {**LLAMA31, "rope_scaling": {**LLAMA31["rope_scaling"], "high_freq_factor": 2.0}}
    with pytest.raises(UserError, match="high_freq_factor"):
        arch_from_hf_config(cfg)
    with pytest.raises(UserError, match="rope type 'yarn'"):
        arch_from_hf_config({**FAMILIES["llama"], "rope_scaling": {"rope_type": "yarn", "factor": 4}})


def test_family_specifics():
    llama, qwen = arch_from_hf_config(FAMILIES["llama"]), arch_from_hf_config(FAMILIES["qwen2"])
    assert not llama.qkv_bias and qwen.qkv_bias
    assert not llama.tie_word_embeddings and qwen.tie_word_embeddings
    assert llama.padded_vocab_size == 384 and llama.vocab_size == 300


def test_unsupported_model_type_lists_supported():
    with pytest.raises(UserError) as e:
        arch_from_hf_config({**FAMILIES["llama"], "model_type": "gpt2"}, source="x/config.json")
    assert "x/config.json" in str(e.value) and "llama, qwen2" in str(e.value)


@pytest.mark.parametrize(
    "tp,pp,match",
    [
        (3, 1, "num_attention_heads=8 is not divisible by tensor parallel size 3"),
        (4, 1, "num_key_value_heads=2"),
        (1, 3, "num_hidden_layers=4 is not divisible by pipeline parallel size 3"),
    ],
)
def test_parallel_split_checks(tp, pp, match):
    with pytest.raises(UserError, match=match):
        arch_from_hf_config(FAMILIES["llama"]).check_parallel(tp, pp)


def test_presets_parse():
    for name in PRESETS:
        arch_from_preset(name).check_parallel(2, 2)
    with pytest.raises(UserError, match="presets:"):
        arch_from_preset("nope")
