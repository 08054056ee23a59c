"""The HF <-> Megatron name/layout mapping, checked against layouts written out by hand."""

import pytest
import torch

from megatron_spark.checkpoint.mapping import (
    expected_hf_names,
    full_to_hf,
    globalize,
    hf_to_full,
    rule_for,
    shard,
    unshard,
)
from megatron_spark.model.config import arch_from_hf_config
from tests.conftest import FAMILIES


@pytest.fixture(params=sorted(FAMILIES))
def arch(request):
    return arch_from_hf_config(FAMILIES[request.param])


def _random_hf(arch, names):
    from megatron_spark.checkpoint.mapping import expected_hf_shapes

    shapes = expected_hf_shapes(arch)
    return {n: torch.randn(shapes[n]) for n in names}


def test_qkv_is_interleaved_per_query_group(arch):
    rule = rule_for("decoder.layers.2.self_attention.linear_qkv.weight")
    hf = _random_hf(arch, rule.hf_names)
    full = hf_to_full(arch, rule, hf.__getitem__)
    q, k, v = (hf[n] for n in rule.hf_names)
    hd, ng = arch.head_dim, arch.num_query_groups
    qpg = arch.num_attention_heads // ng
    expected = []
    for g in range(ng):  # megatron: [q heads of group g; k_g; v_g] for each group
        expected += [q[g * qpg * hd : (g + 1) * qpg * hd], k[g * hd : (g + 1) * hd], v[g * hd : (g + 1) * hd]]
    assert torch.equal(full, torch.cat(expected))
    back = dict(full_to_hf(arch, rule, full))
    assert all(torch.equal(back[n], hf[n]) for n in rule.hf_names)


@pytest.mark.parametrize(
    "name",
    [
        "embedding.word_embeddings.weight",
        "output_layer.weight",
        "decoder.final_layernorm.weight",
        "decoder.layers.3.input_layernorm.weight",
        "decoder.layers.3.self_attention.linear_proj.weight",
        "decoder.layers.0.mlp.linear_fc1.weight",
        "decoder.layers.0.mlp.linear_fc2.weight",
        "decoder.layers.1.pre_mlp_layernorm.weight",
    ],
)
def test_full_layout_round_trips(arch, name):
    if arch.tie_word_embeddings and name == "output_layer.weight":
        pytest.skip("tied: the output layer is the embedding")
    rule = rule_for(name)
    hf = _random_hf(arch, rule.hf_names)
    full = hf_to_full(arch, rule, hf.__getitem__)
    if rule.kind == "vocab":
        assert full.shape[0] == arch.padded_vocab_size and not full[arch.vocab_size :].any()
    back = dict(full_to_hf(arch, rule, full))
    assert back.keys() == set(rule.hf_names)
    assert all(torch.equal(back[n], hf[n]) for n in rule.hf_names)


def test_te_and_local_norm_names_map_to_the_same_hf_tensor():
    assert (
        rule_for("decoder.layers.5.input_layernorm.weight").hf_names
        == rule_for("decoder.layers.5.self_attention.linear_qkv.layer_norm_weight").hf_names
        == ("model.layers.5.input_layernorm.weight",)
    )
    assert (
        rule_for("decoder.layers.5.pre_mlp_layernorm.weight").hf_names
        == rule_for("decoder.layers.5.mlp.linear_fc1.layer_norm_weight").hf_names
    )


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shards_reassemble(tp):
    full = torch.randn(8 * 4, 8)
    for name in (
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.0.self_attention.linear_proj.weight",
        "decoder.layers.0.mlp.linear_fc1.weight",
        "decoder.layers.0.input_layernorm.weight",
    ):
        rule = rule_for(name)
        shards = [shard(rule, full, r, tp) for r in range(tp)]
        assert torch.equal(unshard(rule, shards), full)


def test_swiglu_shard_is_gate_chunk_then_up_chunk():
    rule = rule_for("decoder.layers.0.mlp.linear_fc1.weight")
    gate, up = torch.randn(8, 3), torch.randn(8, 3)
    s1 = shard(rule, torch.cat([gate, up]), tp_rank=1, tp_size=2)
    assert torch.equal(s1, torch.cat([gate[4:], up[4:]]))


def test_global_layer_index_and_expected_names(arch):
    assert globalize("decoder.layers.1.mlp.linear_fc2.weight", 2) == "decoder.layers.3.mlp.linear_fc2.weight"
    assert globalize("embedding.word_embeddings.weight", 2) == "embedding.word_embeddings.weight"
    names = expected_hf_names(arch)
    assert ("lm_head.weight" in names) != arch.tie_word_embeddings
    assert any(n.endswith("q_proj.bias") for n in names) == arch.qkv_bias
    assert len(names) == len(set(names))


def test_unknown_parameter_is_an_error():
    with pytest.raises(KeyError, match="no Hugging Face mapping"):
        rule_for("decoder.layers.0.self_attention.q_layernorm.weight")
