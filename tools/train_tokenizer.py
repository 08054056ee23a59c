"""Train the tiny sentencepiece models behind ``builtin:arith`` and ``builtin:countdown``.

The arithmetic corpus is arithmetic problems and their worked solutions (from the arithmetic task,
over several operand counts, digit counts and operators) plus short English sentences in the words
the judge and reflection prompts use. The Countdown corpus is Countdown problems, worked
solutions, judge checks of right and perturbed candidates, and every judge and reflection template
filled in. Training is seeded and single-threaded, so the same arguments write the same model.

    python tools/train_tokenizer.py --out megatron_spark/data/assets/arith_sp.model
    python tools/train_tokenizer.py --task countdown --out megatron_spark/data/assets/countdown_sp.model

Pieces: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3, then the 256 byte pieces (byte fallback:
any text encodes without ``<unk>``), then the learned BPE pieces. Digits are split into single
pieces; text is not normalised and no space is prepended, so ``decode(encode(s)) == s``.
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import sentencepiece as spm

from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask

MAX_VOCAB_SIZE = 512
"""The tiny model presets have a 512-row embedding."""

# Short sentences in the vocabulary of the judge and reflection prompts.
SENTENCES = [
    "Is this answer correct?",
    "Is the answer correct? Answer Yes or No.",
    "Yes, the answer is correct.",
    "No, the answer is wrong.",
    "The response is correct.",
    "The response is wrong.",
    "Check the answer step by step.",
    "Check each step of the response.",
    "Which response is better, A or B?",
    "Candidate A is better.",
    "Candidate B is better.",
    "Response A is correct and response B is wrong.",
    "Response B is correct and response A is wrong.",
    "Both candidates give the same answer.",
    "Give your verdict in a box.",
    "Verdict: \\boxed{Yes}",
    "Verdict: \\boxed{No}",
    "Verdict: \\boxed{A}",
    "Verdict: \\boxed{B}",
    "Put the final answer in \\boxed{}.",
    "Problem: Compute the value.",
    "Response: the final answer is in the box.",
    "Answer: the value of the expression.",
    "Your previous answer was wrong. Try again.",
    "The previous response has an error. Try again.",
    "Try again and check every step.",
    "Find the first wrong step.",
    "The first step is correct.",
    "The last step is wrong.",
    "Solve the problem again from the start.",
    "Here is a problem and a candidate response.",
    "Here is a problem and two candidate responses.",
    "Read the problem and the response, then judge it.",
    "Does the response reach the right answer?",
    "Compare the two answers and pick the better one.",
    "The correct answer is different.",
    "Think about it and write the answer.",
    "Review the solution below.",
    "Is this solution right? Reply with Yes or No.",
    "Judge whether the candidate answer matches the problem.",
    "Correct the mistake and give a new answer.",
    "Let us check the work.",
    "Choose (A) or (B); write \\text{A} or \\text{B}.",
]
# Every printable ASCII character gets its own piece (rather than byte pieces), spaced out so that
# these lines add no merges.
ALPHABET = [" ".join(chr(c) for c in range(33, 127))]

JUDGE_LINE = "Problem: {prompt} Response: {solution} Is this answer correct? Verdict: \\boxed{{{verdict}}}"


def arithmetic_lines(num_problems_per_config: int, seed: int) -> list[str]:
    """Prompts, solutions and judge-style lines over a spread of arithmetic configs."""
    configs = [
        ArithmeticConfig(min_operands=2, max_operands=2, max_digits=2, operators="+-", seed=seed),
        ArithmeticConfig(min_operands=2, max_operands=4, max_digits=3, operators="+-*", seed=seed),
        ArithmeticConfig(min_operands=2, max_operands=3, max_digits=4, operators="+-*", seed=seed),
    ]
    rng = random.Random(seed)
    lines = []
    for cfg in configs:
        task = ArithmeticTask(cfg)
        for i in range(num_problems_per_config):
            p = task.train_problem(i)
            lines += [p.prompt, p.solution]
            if i % 10 == 0:
                verdict = rng.choice(["Yes", "No"])
                lines.append(JUDGE_LINE.format(prompt=p.prompt, solution=p.solution, verdict=verdict))
    return lines


def countdown_lines(num_problems_per_config: int, seed: int) -> list[str]:
    """Prompts, solutions, judge checks and every filled-in judge/reflection template."""
    from megatron_spark.data.countdown import CountdownConfig, CountdownTask
    from megatron_spark.spark import templates
    from megatron_spark.spark.checks import CountdownChecks

    configs = [
        CountdownConfig(seed=seed),
        CountdownConfig(min_numbers=3, max_numbers=4, max_value=20, max_target=200, seed=seed),
        CountdownConfig(min_numbers=2, max_numbers=4, operators="+-*/", max_target=500, seed=seed),
    ]
    rng = random.Random(seed)
    checks = CountdownChecks()
    lines = []
    for cfg in configs:
        task = CountdownTask(cfg)
        for i in range(num_problems_per_config):
            p = task.train_problem(i)
            wrong = checks.perturb(p, rng) or p.right_answer
            lines += [
                p.prompt,
                p.solution,
                checks.reasoning(p, [p.right_answer]),
                checks.reasoning(p, [wrong]),
            ]
            if i % 10 == 0:
                lines.append(checks.reasoning(p, [wrong, p.right_answer]) + " \\boxed{B}")
                vocab = rng.choice(("yesno", "ab"))
                t = rng.randrange(templates.NUM_POINTWISE_TEMPLATES)
                lines.append(templates.pointwise_prompt(p.prompt, wrong, vocab, t))
                t = rng.randrange(templates.NUM_PAIRWISE_TEMPLATES)
                lines.append(templates.pairwise_prompt(p.prompt, wrong, p.right_answer, t))
                show, tone = rng.choice(("full", "answer")), rng.choice(("neutral", "wrong"))
                t = rng.randrange(templates.NUM_REFLECTION_TEMPLATES)
                lines.append(templates.reflection_prompt(p.prompt, wrong, show, tone, t))
    return lines


def train(out: Path, vocab_size: int, num_problems_per_config: int, seed: int, task: str = "arith") -> None:
    corpus = countdown_lines if task == "countdown" else arithmetic_lines
    lines = corpus(num_problems_per_config, seed) + SENTENCES + ALPHABET
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        split_digits=True,
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        seed_sentencepiece_size=100000,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the .model file")
    parser.add_argument("--vocab-size", type=int, default=MAX_VOCAB_SIZE, help="number of pieces")
    parser.add_argument("--problems", type=int, default=2000, help="problems per arithmetic config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=["arith", "countdown"], default="arith", help="corpus")
    args = parser.parse_args()
    if not 260 < args.vocab_size <= MAX_VOCAB_SIZE:
        parser.error(f"--vocab-size must be in (260, {MAX_VOCAB_SIZE}]: 4 special and 256 byte pieces")
    train(args.out, args.vocab_size, args.problems, args.seed, args.task)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {args.vocab_size} pieces)")


if __name__ == "__main__":
    main()
