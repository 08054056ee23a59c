"""Tokenizers: exact round trips, the prompt/response split, special ids, HF chat templates."""

import pytest

from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask
from megatron_spark.data.tokenizer import (
    ARITH_MODEL_PATH,
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
)
from megatron_spark.errors import UserError

ODD_TEXTS = [
    "",
    " leading space",
    "trailing space ",
    "two  spaces\n\nand\ttabs\n",
    "Is this answer correct? Verdict: \\boxed{Yes}",
    "\\boxed{\\frac{1}{2}} (B) \\text{A}",
    "unicode: é ∑ 😀 — ok",
]


@pytest.fixture(scope="module")
def arith():
    return load_tokenizer("builtin:arith")


def _arith_texts(num_per_config: int = 100):
    configs = [ArithmeticConfig(), ArithmeticConfig(max_operands=4, max_digits=4, operators="+-*")]
    for cfg in configs:
        task = ArithmeticTask(cfg)
        for p in [task.train_problem(i) for i in range(num_per_config)] + task.held_out()[:20]:
            yield p.prompt, p.solution


def test_builtin_special_ids_and_size(arith):
    assert (arith.bos_id, arith.eos_id, arith.pad_id, arith.vocab_size) == (1, 2, 3, 512)
    assert ARITH_MODEL_PATH.stat().st_size < 64 * 1024


def test_round_trips_are_exact(arith):
    for prompt, solution in _arith_texts():
        for text in (prompt, solution, prompt + "\n" + solution):
            assert arith.decode(arith.encode(text)) == text
    for text in ODD_TEXTS:
        ids = arith.encode(text)
        assert arith.decode(ids) == text and 0 not in ids  # byte fallback: never <unk>


def test_digits_are_single_pieces(arith):
    for d in "0123456789":
        assert len(arith.encode(d)) == 1
    ids = arith.encode("Compute 9081726354+1.")
    digit_pieces = [arith.decode([i]) for i in ids if any(c.isdigit() for c in arith.decode([i]))]
    assert digit_pieces == list("90817263541")
    # the same digit is the same id wherever it stands
    assert len({i for i in ids if arith.decode([i]) == "1"}) == 1


def test_box_and_words_are_few_tokens(arith):
    assert len(arith.encode(" \\boxed{41}")) <= 6
    for word in ["Compute", "Problem", " answer", " correct", " Yes", " No", " Verdict", " wrong", " step"]:
        assert len(arith.encode(word)) == 1, word


def test_prompt_then_response_equals_joint_encoding(arith):
    """The response ids the model must produce are those of the response encoded on its own."""
    for prompt, solution in _arith_texts():
        prompt_ids = arith.encode_prompt(prompt)
        assert prompt_ids[0] == arith.bos_id and arith.decode(prompt_ids) == prompt + "\n"
        assert prompt_ids + arith.encode(solution) == [arith.bos_id] + arith.encode(prompt + "\n" + solution)


def test_decode_skips_special_ids(arith):
    ids = arith.encode("12+3=15.")
    assert arith.decode([arith.bos_id, *ids, arith.eos_id, arith.pad_id, arith.pad_id]) == "12+3=15."


def test_load_tokenizer_specs(tmp_path):
    assert isinstance(load_tokenizer(str(ARITH_MODEL_PATH)), SentencePieceTokenizer)
    with pytest.raises(UserError, match="tokenizer 'nope/missing'"):
        load_tokenizer("nope/missing")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="junk.model"):
        load_tokenizer(str(junk))
    with pytest.raises(UserError, match=str(tmp_path)):
        load_tokenizer(str(tmp_path))  # an empty directory is no HF tokenizer


# --- Hugging Face -------------------------------------------------------------------------------

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"]
WORDS = ["Compute", "1", "2", "+", ".", "\n", "hello"]
TEMPLATE_WITH_BOS = (
    "{{ bos_token }}{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEMPLATE_NO_BOS = TEMPLATE_WITH_BOS.removeprefix("{{ bos_token }}")


def _ids(*tokens):
    vocab = SPECIALS + WORDS
    return [vocab.index(t) for t in tokens]


def _save_hf_tokenizer(directory, chat_template=None, pad=True):
    """A tiny word-level tokenizer built in-process (no hub access), saved like a real one."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # drop spaces; split digits, punctuation and newlines off words
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="removed"),
            pre_tokenizers.Split(Regex(r"\w+|\W"), behavior="isolated"),
        ]
    )
    backend.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>" if pad else None,
    )
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(directory)
    return directory


def test_hf_prompt_uses_the_chat_template(tmp_path):
    tok = load_tokenizer(str(_save_hf_tokenizer(tmp_path, TEMPLATE_WITH_BOS)))
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, len(SPECIALS + WORDS))
    expected = _ids("<s>", "<|user|>", "Compute", "1", "+", "2", ".", "<|assistant|>")
    assert tok.encode_prompt("Compute 1+2.") == expected  # bos once, though the template writes it
    assert tok.decode(expected + [tok.eos_id, tok.pad_id]) == tok.decode(tok.encode("Compute 1+2."))


def test_hf_bos_is_added_when_the_template_omits_it(tmp_path):
    tok = HFTokenizer(_save_hf_tokenizer(tmp_path, TEMPLATE_NO_BOS))
    assert tok.encode_prompt("hello") == _ids("<s>", "<|user|>", "hello", "<|assistant|>")


def test_hf_without_template_is_text_and_newline(tmp_path):
    tok = HFTokenizer(_save_hf_tokenizer(tmp_path, chat_template=None, pad=False))
    assert not tok.has_chat_template
    assert tok.encode_prompt("hello") == _ids("<s>", "hello", "\n")
    assert tok.pad_id == tok.eos_id  # no pad token: eos fills padding
