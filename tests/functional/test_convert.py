"""HF -> Megatron -> HF through the CLI: bit-identical tensors, transformers loads the result."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAMILIES, run_cli
from tests.hf_reference import make_random_hf_model


def read_all_tensors(d):
    index = d / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    out = {}
    for f in files:
        out.update(load_file(d / f))
    return out


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        # Compare bit patterns: equal values with different bits (e.g. -0.0) would fail too.
        assert torch.equal(
            a[k].view(torch.int16 if a[k].element_size() == 2 else torch.int32),
            b[k].view(torch.int16 if b[k].element_size() == 2 else torch.int32),
        ), k


def make_tokenizer(d):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["12 + 34 = 46", "the answer is \\boxed{7}"] * 20,
        trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"]),
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(d)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip_is_bit_identical_and_loads_in_transformers(family, hf_models, megatron_ckpts, tmp_path):
    from transformers import AutoModelForCausalLM

    hf_dir, ref = hf_models[family]
    out = tmp_path / "export"
    run_cli(
        ["convert", "megatron-to-hf", "--ckpt", str(megatron_ckpts[family]), "--out", str(out)], check=True
    )
    assert_bit_identical(read_all_tensors(hf_dir), read_all_tensors(out))
    assert (out / "generation_config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(
        0, FAMILIES[family]["vocab_size"], (2, 21), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref(ids).logits)


def test_sharded_bf16_with_tokenizer(tmp_path):
    """Sharded input with and without its index, bf16 kept, sharded output, tokenizer carried."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tmp_path / "src"
    model = make_random_hf_model(FAMILIES["llama"], tmp_path / "fp32", seed=5).to(torch.bfloat16)
    model.save_pretrained(src, max_shard_size="100KB")
    make_tokenizer(src)
    assert (src / "model.safetensors.index.json").is_file()
    original = read_all_tensors(src)

    run_cli(["convert", "hf-to-megatron", "--hf", str(src), "--out", str(tmp_path / "ckpt")], check=True)
    (src / "model.safetensors.index.json").unlink()  # the reader must find the shards without it
    run_cli(["convert", "hf-to-megatron", "--hf", str(src), "--out", str(tmp_path / "ckpt2")], check=True)
    for ckpt in ("ckpt", "ckpt2"):
        out = tmp_path / f"{ckpt}_hf"
        run_cli(
            [
                "convert",
                "megatron-to-hf",
                "--ckpt",
                str(tmp_path / ckpt),
                "--out",
                str(out),
                "--max-shard-size",
                "100KB",
            ],
            check=True,
        )
        assert (out / "model.safetensors.index.json").is_file()
        assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
        exported = read_all_tensors(out)
        assert all(t.dtype == torch.bfloat16 for t in exported.values())
        assert_bit_identical(original, exported)
        loaded = AutoModelForCausalLM.from_pretrained(out)
        assert loaded.dtype == torch.bfloat16
        tok = AutoTokenizer.from_pretrained(out)
        assert (
            tok("12 + 34 = 46")["input_ids"]
            == AutoTokenizer.from_pretrained(src)("12 + 34 = 46")["input_ids"]
        )
