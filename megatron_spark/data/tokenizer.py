"""Tokenizers: text <-> ids, and the ids a prompt becomes before the model answers it.

The rollout feeds ``encode_prompt(prompt)`` to the model and trains on the ids it generates after
them; a reference response is tokenized on its own with ``encode`` and appended. Both tokenizers
here keep that split exact: the prompt ids end on a boundary (a newline or the chat template's
generation prompt) that no token crosses.

``builtin:arith`` and ``builtin:countdown`` are 512-piece sentencepiece BPE models trained by
``tools/train_tokenizer.py`` on each task's problems, worked solutions and judge checks and on the
words of the judge and reflection prompts. Its special ids:
``<unk>`` 0, ``<s>`` (bos) 1, ``</s>`` (eos) 2, ``<pad>`` 3; ids 4..259 are the 256 byte
pieces, so any text encodes without ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from megatron_spark.errors import UserError

BUILTIN_ARITH = "builtin:arith"
ARITH_MODEL_PATH = Path(__file__).resolve().parent / "assets" / "arith_sp.model"
BUILTIN_COUNTDOWN = "builtin:countdown"
COUNTDOWN_MODEL_PATH = Path(__file__).resolve().parent / "assets" / "countdown_sp.model"
BUILTIN_MODELS = {BUILTIN_ARITH: ARITH_MODEL_PATH, BUILTIN_COUNTDOWN: COUNTDOWN_MODEL_PATH}
"""Committed sentencepiece models of the built-in tasks, by tokenizer spec."""


class Tokenizer(Protocol):
    """What the rest of the code needs from a tokenizer."""

    vocab_size: int
    """Number of ids; the model's vocabulary must be at least this large."""
    eos_id: int
    """Id that ends a response."""
    bos_id: int | None
    """Id that starts every prompt, or None if the tokenizer has none."""
    pad_id: int
    """A valid id written into padding positions (which are masked out of every loss)."""

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, with no bos or eos added."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, skipping special ids (bos, eos, pad)."""
        ...

    def encode_prompt(self, prompt: str) -> list[int]:
        """Ids fed to the model before its response: bos (if any) then the chat template with
        its generation prompt, or, without a template, the prompt text and a newline."""
        ...


class SentencePieceTokenizer:
    """A sentencepiece ``.model`` file; prompts are the text and a newline (no chat template)."""

    def __init__(self, model_path: str | Path):
        import sentencepiece as spm

        path = Path(model_path)
        if not path.is_file():
            raise UserError(f"{path}: sentencepiece model not found")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{path}: not a sentencepiece model ({e})") from None
        self.path = path
        self.vocab_size = self._sp.GetPieceSize()
        self.eos_id = self._sp.eos_id()
        if self.eos_id < 0:
            raise UserError(f"{path}: the sentencepiece model has no eos piece")
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        # Without a dedicated pad piece, eos fills the padding: padded positions are masked anyway.
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id
        self._special = {
            i for i in (self.bos_id, self.eos_id, self.pad_id, self._sp.unk_id()) if i is not None
        }

    def encode(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids if int(i) not in self._special])

    def encode_prompt(self, prompt: str) -> list[int]:
        bos = [] if self.bos_id is None else [self.bos_id]
        return bos + self.encode(prompt + "\n")


class HFTokenizer:
    """A Hugging Face tokenizer directory (``tokenizer.json`` / ``tokenizer_config.json``).

    Prompts go through the tokenizer's chat template as one user message (after a system message
    when ``system_prompt`` is set) with the generation prompt added; without a template, they are
    the text and a newline. bos is prepended unless the rendered prompt already starts with it
    (many templates write it themselves).
    """

    def __init__(self, directory: str | Path, system_prompt: str | None = None):
        from transformers import AutoTokenizer

        path = Path(directory)
        try:
            self._tok = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot load a Hugging Face tokenizer ({_first_line(e)})") from None
        self.path = path
        self.vocab_size = len(self._tok)
        if self._tok.eos_token_id is None:
            raise UserError(f"{path}: the tokenizer has no eos_token; set it in tokenizer_config.json")
        self.eos_id = int(self._tok.eos_token_id)
        self.bos_id = None if self._tok.bos_token_id is None else int(self._tok.bos_token_id)
        # Without a pad token, eos fills the padding: padded positions are masked anyway.
        self.pad_id = self.eos_id if self._tok.pad_token_id is None else int(self._tok.pad_token_id)
        self.has_chat_template = bool(getattr(self._tok, "chat_template", None))
        self.system_prompt = system_prompt
        if system_prompt is not None:
            if not self.has_chat_template:
                raise UserError(
                    f"task.system_prompt is set but the tokenizer {path} has no chat template to put it in"
                )
            try:
                self.render_prompt("x")
            except Exception as e:  # jinja's TemplateError and whatever a template raises
                raise UserError(
                    f"task.system_prompt: the chat template of {path} refuses a system message "
                    f"({_first_line(e)})"
                ) from None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def render_prompt(self, prompt: str) -> str:
        """The prompt as text, before tokenization (chat template or text and a newline)."""
        if not self.has_chat_template:
            return prompt + "\n"
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.encode(self.render_prompt(prompt))
        if self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def load_tokenizer(spec: str, system_prompt: str | None = None) -> Tokenizer:
    """``builtin:arith``, ``builtin:countdown``, a sentencepiece ``.model`` file, or a Hugging
    Face tokenizer directory; ``system_prompt`` (``task.system_prompt``) needs the latter's chat
    template."""
    path = Path(spec)
    if spec in BUILTIN_MODELS or (path.is_file() and path.suffix == ".model"):
        if system_prompt is not None:
            raise UserError(
                f"task.system_prompt is set but model.tokenizer={spec} is a sentencepiece model "
                f"without a chat template; use a Hugging Face tokenizer directory or drop it"
            )
        return SentencePieceTokenizer(BUILTIN_MODELS.get(spec, path))
    if path.is_dir():
        return HFTokenizer(path, system_prompt)
    raise UserError(
        f"tokenizer '{spec}': expected {' or '.join(map(repr, BUILTIN_MODELS))}, a sentencepiece "
        f".model file or a Hugging Face tokenizer directory"
    )
