"""Can the tiny model learn the judge's verdict at all? A supervised study, outside the trainer.

Trains a fresh transformers Llama of the ``tiny-llama`` preset's shape on judge examples of the
built-in arithmetic task with *correct* verdicts, and prints the teacher-forced accuracy of the
verdict token (argmax over the whole vocabulary, the response before it given) on the held-out
problems. It separates the skill from RL: if supervision cannot teach a verdict format in this
budget, RL on recycled items will not either. Numbers: docs/experiments/tiny_arith.md.

Formats (``--format``):
  judge  the warm start's judge response (re-derivation, ``Mine: 6. Given: 7.``, verdict), half
         pointwise (Yes/No or A/B), half pairwise;
  marks  the same with a match mark per candidate before the verdict (``Check: x.``); phase 1
         teaches the marks with coin-flip verdicts, ``--then-steps`` then trains the verdict;
  bare   only ``Mine: X. Given: Y. \\boxed{Yes|No}``: equality of two numbers, nothing else;
  same   like marks, but every candidate gets the same local check, pointwise and pairwise alike
         (``Mine: 6. Given: 7. Check: x.``, twice for a pair); ``--aux F`` makes a share F of
         each batch bare checks of two numbers (``Mine: X. Given: Y. Check: =.``) to teach the
         comparison densely.
  diff   the judge checks each candidate with one more arithmetic step, its result minus the
         candidate (``6-7=-1.``; pairwise ``A: 6-6=0. B: 6-7=-1.``), as the trainer's warm start
         now does; phase 1 teaches the steps with coin-flip verdicts (``zero``: the teacher-forced
         step says 0 exactly when the candidate is right), ``--then-steps`` trains the verdict.
``--loss response`` trains every response token (as SFT does); ``verdict`` only the verdict.

    python tools/judge_learnability.py --format judge --loss response --steps 600
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time

import torch
import transformers

from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask
from megatron_spark.data.tokenizer import load_tokenizer
from megatron_spark.model.config import PRESETS
from megatron_spark.spark import templates
from megatron_spark.spark.perturb import OFFSETS, perturb_answer
from megatron_spark.spark.warmstart import warm_start_example

TASK = ArithmeticConfig(min_operands=3, max_operands=4, max_digits=1, operators="+-", held_out_size=200)
BATCH = 64
MARK = {True: "=", False: "x"}
DIFF = False
ZERO: list[int] = []
"""The ``marks`` format's mark per candidate: equal to the judge's own result, or not."""


def _compare(steps: str, own: str, shown, verdict: str) -> str:
    """The earlier judge format, results side by side: ``3+5-2=6. Mine: 6. Given: 7. \\boxed{No}``."""
    if len(shown) == 1:
        return f"{steps} Mine: {own}. Given: {shown[0]}. \\boxed{{{verdict}}}"
    return f"{steps} Mine: {own}. A: {shown[0]}. B: {shown[1]}. \\boxed{{{verdict}}}"


@contextlib.contextmanager
def _compare_format():
    """The warm start's examples in the earlier format, which ``judge``, ``marks`` and ``same`` build on."""
    saved, templates.judge_response = templates.judge_response, _compare
    try:
        yield
    finally:
        templates.judge_response = saved


def example(fmt: str, problem, rng: random.Random, verdicts: str, aux: float = 0.0):
    """``(text, kind, shown)``: prompt + response (no eos), its kind and the candidates shown."""
    if fmt == "bare":
        shown = problem.answer if rng.random() < 0.5 else perturb_answer(problem.answer, rng)
        verdict = "Yes" if shown == problem.answer else "No"
        return "Compute.", f"Mine: {problem.answer}. Given: {shown}. \\boxed{{{verdict}}}", "bare"
    if fmt == "same" and rng.random() < aux:
        x = rng.randint(-30, 40)
        y = x if rng.random() < 0.5 else x + rng.choice(OFFSETS)
        return "Compare.", f"Mine: {x}. Given: {y}. Check: {MARK[x == y]}.", "aux"
    kind = rng.choice(("pointwise", "pairwise"))
    if fmt == "diff":  # the package's own judge format (templates.judge_response)
        prompt, response = warm_start_example(problem, kind, rng, verdicts)
        return prompt, response, kind
    with _compare_format():
        prompt, response = warm_start_example(problem, kind, rng, verdicts)
    if fmt == "same":
        head, _, box = response.rpartition(" \\boxed{")
        steps, _, results = head.rpartition(" Mine: ")
        shown = [x.split(": ")[-1] for x in results.rstrip(".").split(". ")[1:]]
        checks = "".join(
            f" Mine: {problem.answer}. Given: {s}. Check: {MARK[s == problem.answer]}." for s in shown
        )
        return prompt, f"{steps}{checks} \\boxed{{{box}", kind
    if fmt == "marks":
        head, _, box = response.rpartition(" \\boxed{")
        results = head.rsplit(" Mine: ", 1)[1]  # "6. Given: 7." or "6. A: 6. B: 7."
        shown = [x.split(": ")[-1] for x in results.rstrip(".").split(". ")[1:]]
        mark = "".join(MARK[s == problem.answer] for s in shown)
        response = f"{head} Check: {mark}. \\boxed{{{box}"
    return prompt, response, kind


def encode(tok, prompt: str, response: str):
    p, r = tok.encode_prompt(prompt), tok.encode(response) + [tok.eos_id]
    ids = p + r
    verdict = len(ids) - 3  # ... { VERDICT } eos
    marks = []
    if DIFF:  # each check's "=" (or "=-") token: "=" then "0" exactly when the candidate is right
        eq = [i for i in range(len(p), verdict) if tok.decode([ids[i]]).startswith("=")]
        n = 2 if " B: " in tok.decode(ids[len(p) : verdict]) else 1
        return ids, len(p), verdict, eq[-n:]
    for c in (i for i in range(len(p), verdict) if tok.decode([ids[i]]) == "Check"):
        end = next(i for i in range(c, len(ids)) if tok.decode([ids[i]]) == ".")
        marks += [i for i in range(c + 1, end) if tok.decode([ids[i]]) in MARK.values()]
    return ids, len(p), verdict, marks


def batch(rows, loss: str):
    width = max(len(r[0]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    weight = torch.zeros(len(rows), width)
    for i, (seq, start, verdict, _marks) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        if loss == "verdict":
            weight[i, verdict] = 1.0
        else:
            weight[i, start : len(seq)] = 1.0
    return ids, weight


def weighted_ce(model, ids, weight):
    logits = model(input_ids=ids).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return (ce * weight[:, 1:]).sum() / weight[:, 1:].sum()


def _is_zero(seq, m: int, shift: int = 0) -> bool:
    """Whether tokens ``m``, ``m + 1`` of ``seq`` (moved back by ``shift``: predictions) are ``=0``."""
    return bool(seq[m - shift] == ZERO[0] and seq[m + 1 - shift] == ZERO[1])


@torch.no_grad()
def accuracy(model, rows, kinds) -> dict[str, float]:
    model.eval()
    ids, _ = batch(rows, "response")
    pred = model(input_ids=ids).logits.argmax(-1)
    model.train()
    out = {}
    for kind in sorted(set(kinds)):
        sel = [i for i, k in enumerate(kinds) if k == kind]
        out[f"{kind}_verdict"] = sum(
            int(pred[i, rows[i][2] - 1] == rows[i][0][rows[i][2]]) for i in sel
        ) / len(sel)
        if rows[sel[0]][3] and DIFF:
            out[f"{kind}_zero"] = sum(
                all(_is_zero(pred[i], m, 1) == _is_zero(rows[i][0], m) for m in rows[i][3]) for i in sel
            ) / len(sel)
        if rows[sel[0]][3] and not DIFF:
            out[f"{kind}_marks"] = sum(
                all(pred[i, m - 1] == rows[i][0][m] for m in rows[i][3]) for i in sel
            ) / len(sel)
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", choices=("judge", "marks", "bare", "same", "diff"), default="judge")
    ap.add_argument("--loss", choices=("response", "verdict"), default="response")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--then-steps", type=int, default=0, help="phase 2: verdict-only, correct verdicts")
    ap.add_argument("--then-lr", type=float, default=5e-5)
    ap.add_argument("--then-batch", type=int, default=BATCH, help="phase 2: examples per step")
    ap.add_argument("--layers", type=int, default=0, help="layers (0: the preset's)")
    ap.add_argument("--width", type=int, default=0, help="hidden size (0: the preset's)")
    ap.add_argument("--aux", type=float, default=0.0, help="format same: share of bare checks")
    ap.add_argument("--eval-every", type=int, default=50)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer("builtin:arith")
    global DIFF
    DIFF = args.format == "diff"
    ZERO[:] = tok.encode("=0")[-2:]
    task = ArithmeticTask(TASK)
    cfg = {k: v for k, v in PRESETS["tiny-llama"].items() if k not in ("architectures", "model_type")}
    if args.width:  # a wider model of the same proportions (head_dim 16, 2 query heads per group)
        heads = args.width // cfg["head_dim"]
        cfg.update(
            hidden_size=args.width,
            intermediate_size=args.width * cfg["intermediate_size"] // cfg["hidden_size"],
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
        )
    cfg["num_hidden_layers"] = args.layers or cfg["num_hidden_layers"]
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    phase1_verdicts = "random" if args.format in ("marks", "same", "diff") else "correct"
    held = [example(args.format, p, random.Random(i), "correct") for i, p in enumerate(task.held_out())]
    held_rows = [encode(tok, p, r) for p, r, _ in held]
    kinds = [k for _, _, k in held]
    rng, start = random.Random(0), time.perf_counter()
    phases = [
        (args.steps, args.lr, args.loss, phase1_verdicts, BATCH),
        (args.then_steps, args.then_lr, "verdict", "correct", args.then_batch),
    ]
    step = 0
    for phase, (steps, lr, loss, verdicts, size) in enumerate(phases):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)  # fresh, like RL's
        for i in range(1, steps + 1):
            step += 1
            problems = [task.train_problem(rng.randrange(10**6)) for _ in range(size)]
            rows = [encode(tok, *example(args.format, p, rng, verdicts, args.aux)[:2]) for p in problems]
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, i / 20) if phase == 0 else lr  # warm-up in phase 1
            value = weighted_ce(model, *batch(rows, loss))
            opt.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if i % args.eval_every == 0:
                elapsed = time.perf_counter() - start
                print(
                    step,
                    f"loss={value.item():.4f}",
                    accuracy(model, held_rows, kinds),
                    f"{elapsed:.0f}s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
