"""TRL's side of the throughput comparison: a ``GRPOTrainer`` run, timed over its training steps.

Runs only where TRL is installed, which megatron_spark does not require: ``bash
tools/trl_tests.sh`` makes that venv (``.venv-trl``: TRL, this package and the tested versions), then

    .venv-trl/bin/python tools/trl_side.py [--model-dir DIR] [--num-prompts 8]
        [--num-generations 8] [--max-new-tokens 16] [--num-steps 2] [--threads 1]

Without ``--model-dir`` it builds a tiny random Llama (hidden 128, 4 layers, vocab 512) with a
word-level tokenizer. ``run_trl_grpo`` is the reusable part (tools/bench_vs_trl.py calls it).

One training step = every prompt once, ``num_generations`` completions each, sampled with
``transformers.generate`` (no vLLM), scored by ``boxed_reward``, one optimizer step
(``gradient_accumulation_steps=1``). The clock runs from ``on_step_begin`` to ``on_step_end`` of each
step (generation, scoring, forward/backward, optimizer), not over model loading or logging.
On a shared CPU give both sides of a comparison the same ``torch.set_num_threads``: an OpenMP team
larger than the idle cores spin-waits (2 threads with one core busy elsewhere ran 15x slower).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch
import trl
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (no nested braces), or None."""
    found = BOXED.findall(text)
    return found[-1].strip() if found else None


def boxed_reward(completions: list[str], answer: list[str], **_) -> list[float]:
    """1.0 where the completion's last ``\\boxed{}`` equals the prompt's answer, else 0.0."""
    return [float(boxed_answer(c) == a.strip()) for c, a in zip(completions, answer, strict=True)]


class _StepClock(TrainerCallback):
    """Wall seconds of each optimizer step, begin to end."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self._t0)


def _time_method(obj, name: str) -> list[float]:
    """Wrap ``obj.name`` to append the seconds of each call to the returned list."""
    seconds: list[float] = []
    method = getattr(obj, name, None)
    if method is None:
        return seconds

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)

    setattr(obj, name, timed)
    return seconds


def run_trl_grpo(
    model_dir: str,
    tokenizer_dir: str,
    prompts: list[str],
    answers: list[str],
    num_generations: int,
    max_new_tokens: int,
    num_steps: int,
    seed: int,
    prompts_per_step: int | None = None,
    **grpo_overrides,
) -> dict:
    """Train ``num_steps`` GRPO steps with TRL and time them.

    Each step takes ``prompts_per_step`` of ``prompts`` (default: all of them) in TRL's shuffled
    order, ``num_generations`` completions each.
    ``grpo_overrides`` go to ``GRPOConfig`` (e.g. ``beta=0.04``, ``loss_type="grpo"``, ``bf16=True``).
    Defaults: dapo loss, beta 0 (no reference model), float32 on the CPU, bf16 autocast on CUDA, and
    TRL's own ``gradient_checkpointing=True`` (about 20% of the step on the tiny CPU model).

    Returns ``samples`` (completions trained on), ``completion_tokens`` (their tokens, EOS
    included, as TRL's loss counts them), ``seconds`` (sum over the steps), ``step_seconds``,
    ``setup_seconds`` (trainer construction), ``generate_seconds`` (inside TRL's sampling call, 0
    when this TRL has no ``_generate_single_turn``) and ``trl_version``.
    """
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need as many answers as prompts (>0), got {len(prompts)} and {len(answers)}")
    per_step = prompts_per_step or len(prompts)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    completion_tokens = 0

    def reward(completions, answer, completion_ids, **kwargs):
        nonlocal completion_tokens
        completion_tokens += sum(len(ids) for ids in completion_ids)
        return boxed_reward(completions, answer)

    reward.__name__ = "boxed_reward"  # TRL logs rewards by function name
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as out_dir:
        config = {
            "output_dir": out_dir,
            "report_to": [],
            "use_cpu": not cuda,
            "bf16": cuda,
            "seed": seed,
            "max_steps": num_steps,
            "per_device_train_batch_size": per_step * num_generations,  # completions per step
            "gradient_accumulation_steps": 1,
            "num_generations": num_generations,
            "max_completion_length": max_new_tokens,
            "save_strategy": "no",
            "logging_strategy": "no",
            "disable_tqdm": True,
            **grpo_overrides,
        }
        t0 = time.perf_counter()
        trainer = GRPOTrainer(
            model=model_dir,
            reward_funcs=reward,
            args=GRPOConfig(**config),
            train_dataset=Dataset.from_dict({"prompt": list(prompts), "answer": list(answers)}),
            processing_class=tokenizer,
        )
        setup_seconds = time.perf_counter() - t0
        clock = _StepClock()
        trainer.add_callback(clock)
        generate_seconds = _time_method(trainer, "_generate_single_turn")  # a TRL internal: may vanish
        trainer.train()

    return {
        "samples": num_steps * per_step * num_generations,
        "completion_tokens": completion_tokens,
        "seconds": sum(clock.step_seconds),
        "step_seconds": clock.step_seconds,
        "setup_seconds": setup_seconds,
        "generate_seconds": sum(generate_seconds),
        "trl_version": trl.__version__,
    }


def make_tiny_llama(
    path: str, vocab_size: int = 512, hidden_size: int = 128, num_layers: int = 4, seed: int = 0
) -> str:
    """A random Llama and a word-level tokenizer (``<pad>``, ``<eos>``, ``<unk>``, ``w3``.. and
    ``\\boxed{`` / ``}`` / digits as words) saved to ``path``; returns ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "\\boxed{", "}", *map(str, range(10))]
    words += [f"w{i}" for i in range(len(words), vocab_size)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model-dir", help="HF model (and tokenizer) dir; default: a tiny random Llama")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (more than idle cores thrashes)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or make_tiny_llama(str(Path(tmp) / "tiny_llama"))
        prompts = [f"w{20 + i} + w{40 + i} = ? answer in \\boxed{{ }}" for i in range(args.num_prompts)]
        answers = [str(i % 10) for i in range(args.num_prompts)]
        res = run_trl_grpo(
            model_dir,
            model_dir,
            prompts,
            answers,
            args.num_generations,
            args.max_new_tokens,
            args.num_steps,
            args.seed,
        )
    print(f"TRL {res['trl_version']}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"{'setup s':>8} {'steps s':>8} {'of which generate s':>20} {'samples':>8} {'tokens':>8} "
        f"{'samples/s':>10} {'tokens/s':>9}"
    )
    s = res["seconds"]
    print(
        f"{res['setup_seconds']:8.2f} {s:8.2f} {res['generate_seconds']:20.2f} {res['samples']:8d} "
        f"{res['completion_tokens']:8d} {res['samples'] / s:10.2f} {res['completion_tokens'] / s:9.1f}"
    )
    print("per step s: " + " ".join(f"{t:.2f}" for t in res["step_seconds"]))


if __name__ == "__main__":
    main()
