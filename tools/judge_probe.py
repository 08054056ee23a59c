r"""Where does the tiny task's judge go wrong? Reads its held-out judge replies step by step.

The tiny task's judge replies in the warm start's format (``templates.judge_response``): its own
derivation, then a check step per candidate, its result minus the candidate (``6-7=-1.``; pairwise
``B: 6-7=-1. A: 6-6=0.``), then the verdict. This greedy-decodes the same held-out items as
``megatron-spark eval`` (the frozen pool of the checkpoint, balanced items) and counts, per kind:

* ``format``: replies whose check steps parse;
* ``own_right``: the check's left operand (the judge's own result) is the true answer;
* ``copy_right``: every check step's candidate is the one the prompt shows in its slot (pairwise:
  B's step checks B's answer and A's step A's);
* ``step_right``: every check step's arithmetic is right (``a-b`` really is its result);
* ``zero_right``: every check step is 0 exactly when its candidate is right;
* ``last_right``: the last check step is (the evidence every verdict should follow: pointwise
  its only step, pairwise slot A's, checked last);
* ``follows``: the verdict is the one the judge's own check steps imply (pointwise: correct
  exactly when the step is 0; pairwise: the slot whose step is 0, when exactly one is);
* ``accuracy``: the verdict is right (as ``eval`` scores it).

Shares are of all items of the kind, except ``follows`` (of the items whose checks imply a
verdict)::

    python tools/judge_probe.py examples/tiny_arith/spark.yaml --checkpoint RUN/checkpoints/step_000064
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import string
from functools import cache

from megatron_spark.config import load_config
from megatron_spark.spark.verdict import parse_verdict
from megatron_spark.train.config import RunConfig

STEP = r"(-?\d+)([+-])(\d+)=(-?\d+)\."
POINTWISE = re.compile(STEP + r"\s*\\boxed")
PAIRWISE = re.compile(r"B: " + STEP + r" A: " + STEP + r"\s*\\boxed")


@cache
def _template_patterns(kind: str) -> tuple[re.Pattern, ...]:
    """One regex per prompt template of ``kind``, capturing the candidates by placeholder name."""
    from megatron_spark.spark import templates

    pool = (
        [t for ts in templates._POINTWISE["question_last"].values() for t in ts]
        if kind == "pointwise"
        else templates._PAIRWISE["question_last"]
    )
    out = []
    for text in pool:
        parts = []
        for literal, field, _, _ in string.Formatter().parse(text):
            parts.append(re.escape(literal))
            if field == "question":
                parts.append(".*")
            elif field:
                parts.append(f"(?P<{field}>.+?)")
        out.append(re.compile("".join(parts) + "$", re.S))
    return tuple(out)


def _candidates(prompt: str, kind: str) -> list[int] | None:
    """The prompt's candidates in check order (pointwise: the answer; pairwise: B, then A)."""
    for pattern in _template_patterns(kind):
        m = pattern.match(prompt)
        if m:
            d = m.groupdict()
            shown = [d["answer"]] if kind == "pointwise" else [d["answer_b"], d["answer_a"]]
            try:
                return [int(x) for x in shown]
            except ValueError:  # a pool answer that is not an integer: no check step can copy it
                return None
    return None


def _steps(text: str, kind: str) -> list[tuple[int, int, int]] | None:
    """``(own, candidate, result)`` per check step of the reply, or None if they do not parse."""
    m = (POINTWISE if kind == "pointwise" else PAIRWISE).search(text)
    if m is None:
        return None
    g = m.groups()
    out = []
    for i in range(0, len(g), 4):
        own, op, value, result = int(g[i]), g[i + 1], int(g[i + 2]), int(g[i + 3])
        out.append((own, value if op == "-" else -value, result))
    return out


def probe(items, texts, answers) -> dict[str, dict[str, float]]:
    counts: dict[str, dict[str, int]] = {}
    for h, text, answer in zip(items, texts, answers):
        it = h.item
        if it.kind not in ("pointwise", "pairwise"):
            continue
        c = counts.setdefault(
            it.kind,
            dict.fromkeys(
                (
                    "items",
                    "format",
                    "own_right",
                    "copy_right",
                    "step_right",
                    "zero_right",
                    "last_right",
                    "implied",
                    "follows",
                    "accuracy",
                ),
                0,
            ),
        )
        c["items"] += 1
        verdict = parse_verdict(text, it.choices)
        c["accuracy"] += verdict == it.label
        steps = _steps(text, it.kind)
        if steps is None:
            continue
        c["format"] += 1
        c["own_right"] += steps[0][0] == int(answer)
        shown = _candidates(it.prompt, it.kind)
        c["copy_right"] += shown is not None and [cand for _, cand, _ in steps] == shown
        c["step_right"] += all(own - cand == res for own, cand, res in steps)
        # per check step, whether its candidate is right (a pairwise reply checks slot B first)
        right = [it.polarity == "correct"] if it.kind == "pointwise" else [it.label == "B", it.label == "A"]
        c["zero_right"] += all((res == 0) == r for (_, _, res), r in zip(steps, right))
        c["last_right"] += (steps[-1][2] == 0) == right[-1]
        zeros = [res == 0 for _, _, res in steps]
        if it.kind == "pointwise":
            implied = it.choices[0] if zeros[0] else it.choices[1]
        elif sum(zeros) == 1:
            implied = "A" if zeros[1] else "B"
        else:
            continue
        c["implied"] += 1
        c["follows"] += verdict == implied
    out = {}
    for kind, c in counts.items():
        n = c.pop("items")
        implied = c.pop("implied")
        out[kind] = {k: round(v / (implied if k == "follows" else n), 3) if n else 0.0 for k, v in c.items()}
        out[kind].update(items=n, implied=implied)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--show", type=int, default=0, help="also print this many replies per kind")
    args = ap.parse_args()
    from megatron_spark.checkpoint import steps as ckpt
    from megatron_spark.eval.accuracy import ensure_pool, eval_problems
    from megatron_spark.inference.context import Inference
    from megatron_spark.spark.checks import checks_for
    from megatron_spark.spark.heldout import heldout_items

    cfg = load_config(RunConfig, args.config, args.overrides)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=args.checkpoint))
    s = Inference(cfg)
    try:
        problems = eval_problems(s)
        state = ckpt.read_rank0_state(args.checkpoint)
        pool = ensure_pool(s, problems, state.get("judge_pool") if state is not None else None)
        items = heldout_items(problems, pool, checks_for(s.task.name), seed=s.cfg.seed)
        answers = {p.uid: p.answer for p in problems}
        texts = s.rollout.greedy([h.item.prompt for h in items], s.cfg.spark.max_new_tokens)
        for kind in ("pointwise", "pairwise"):
            shown = [(h, t) for h, t in zip(items, texts) if h.item.kind == kind][: args.show]
            for h, text in shown:
                print(f"[{kind} {h.source} label={h.item.label}] {h.item.prompt}\n    -> {text}")
        print(json.dumps(probe(items, texts, [answers[h.item.source_uid] for h in items]), indent=2))
    finally:
        s.close()


if __name__ == "__main__":
    main()
