"""``megatron-spark eval``: score a checkpoint as policy, judge and self-corrector.

Reports, on the task's held-out problems:

* reasoning: pass@1 (greedy) and maj@k (majority of k samples at temperature 1);
* judge: pointwise and pairwise accuracy on balanced held-out items built from a frozen answer
  pool (the pool stored in the checkpoint when it has one, so checkpoints of one experiment are
  scored on the same items; else sampled from this checkpoint), by wrong-answer source, and the
  verdict parse rate;
* reflection accuracy, and accuracy with each test-time mode (self-reflection, best-of-n);
* a user reward benchmark (jsonl), if given.

Writes ``OUT/eval.json`` and ``OUT/report.md`` (with ``curves.png`` when the checkpoint's run has
a metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from megatron_spark.errors import UserError
from megatron_spark.train.config import RunConfig


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    checkpoint: str
    out_dir: str | None = None
    maj_k: int = 8
    tts_rounds: int = 2
    best_of_n: int = 8
    reward_bench: str | None = None
    overwrite: bool = False
    """Replace an existing output directory (else it is refused)."""


def _generate_texts(s):
    def generate(prompts, params):
        return s.generate([s.tokenizer.encode_prompt(p) for p in prompts], params)

    return generate


def reasoning(s, problems, k: int) -> dict:
    from megatron_spark.reward.extract import extract_boxed
    from megatron_spark.rollout.protocol import SamplingParams
    from megatron_spark.train.evaluation import verify_texts

    greedy = s.greedy([p.prompt for p in problems], s.cfg.rollout.max_new_tokens)
    pass1 = verify_texts(s, greedy, [p.answer for p in problems])
    params = SamplingParams(
        max_new_tokens=s.cfg.rollout.max_new_tokens, stop_token_ids=(s.tokenizer.eos_id,), seed=s.cfg.seed
    )
    samples = _generate_texts(s)([p.prompt for p in problems for _ in range(k)], params)
    box = s.cfg.task.verifier.box
    majority = []
    for i in range(len(problems)):
        votes = Counter(
            f
            for c in samples[i * k : (i + 1) * k]
            if (f := extract_boxed(s.tokenizer.decode(c.token_ids), box))
        )
        majority.append(f"\\boxed{{{votes.most_common(1)[0][0]}}}" if votes else "")
    maj = verify_texts(s, majority, [p.answer for p in problems])
    n = max(1, len(problems))
    return {"pass@1": sum(r >= 1 for r in pass1) / n, f"maj@{k}": sum(r >= 1 for r in maj) / n, "k": k}


def tts_accuracy(s, problems, rounds: int, n: int) -> dict:
    from megatron_spark.spark.tts import best_of_n, self_reflect
    from megatron_spark.train.evaluation import verify_texts

    gen, q = _generate_texts(s), [p.prompt for p in problems]
    answers = [p.answer for p in problems]
    mx, jmx, box = s.cfg.rollout.max_new_tokens, s.cfg.spark.max_new_tokens, s.cfg.task.verifier.box
    out = {}
    r = self_reflect(q, gen, s.tokenizer, rounds, mx, jmx, box)
    acc = verify_texts(s, r.responses, answers)
    out["self-reflect"] = {
        "accuracy": sum(a >= 1 for a in acc) / len(q),
        "rounds": rounds,
        "generations_mean": sum(r.generations) / len(q),
    }
    r = best_of_n(q, gen, s.tokenizer, n, mx, jmx, seed=s.cfg.seed, box=box)
    acc = verify_texts(s, r.responses, answers)
    out["best-of-n"] = {"accuracy": sum(a >= 1 for a in acc) / len(q), "n": n}
    return out


def reward_bench(s, path: str) -> dict:
    from megatron_spark.eval.reward_bench import load_reward_bench
    from megatron_spark.spark import templates
    from megatron_spark.spark.verdict import parse_verdict

    items = load_reward_bench(path)
    yes, no = templates.POINTWISE_VERDICTS["yesno"]
    prompts, labels, choices = [], [], []
    for it in items:
        if it.kind == "pointwise":
            prompts.append(templates.pointwise_prompt(it.question, it.responses[0], "yesno", 0))
            labels.append(yes if it.label == "correct" else no)
            choices.append((yes, no))
        else:
            prompts.append(templates.pairwise_prompt(it.question, it.responses[0], it.responses[1], 0))
            labels.append(it.label)
            choices.append(templates.PAIRWISE_CHOICES)
    texts = s.greedy(prompts, s.cfg.spark.max_new_tokens)
    ok = [parse_verdict(t, c) == lab for t, c, lab in zip(texts, choices, labels)]
    out = {"file": str(path), "items": len(items)}
    for kind in ("pointwise", "pairwise"):
        rows = [o for o, it in zip(ok, items) if it.kind == kind]
        if rows:
            out[f"{kind}_accuracy"] = sum(rows) / len(rows)
    return out


def run_eval(cfg: RunConfig, opts: EvalOptions) -> Path:
    from megatron_spark.checkpoint.io import atomic_output_dir

    src = Path(opts.checkpoint)
    if not (src / "model").is_dir() and not (src / "config.json").is_file():
        raise UserError(f"--checkpoint {src}: not a checkpoint directory (no model/ or config.json)")
    if opts.reward_bench:
        from megatron_spark.eval.reward_bench import load_reward_bench

        load_reward_bench(opts.reward_bench)  # refuse a bad file before loading the model
    out_dir = Path(opts.out_dir or src / "eval")
    # Everything goes to a temporary sibling renamed into place at the end: an earlier report is
    # replaced only with --overwrite, and only by a complete one.
    writer = os.environ.get("RANK", "0") == "0"
    with atomic_output_dir(out_dir, opts.overwrite, [("--checkpoint", src)], writer, "eval --out") as tmp:
        cfg = dataclasses.replace(cfg, run_dir=str(tmp), model=dataclasses.replace(cfg.model, init=str(src)))
        _evaluate(cfg, opts, src, tmp)
    return out_dir / "report.md"


def _evaluate(cfg: RunConfig, opts: EvalOptions, src: Path, out_dir: Path) -> None:
    from megatron_spark.eval.heldout import evaluate_items, heldout_items
    from megatron_spark.eval.report import write_atomically, write_report
    from megatron_spark.train import checkpoint as ckpt
    from megatron_spark.train.evaluation import ensure_pool, eval_problems, verify_texts
    from megatron_spark.train.session import Session

    start = time.perf_counter()
    s = Session(cfg, "eval")
    try:
        problems = eval_problems(s)
        result: dict = {"checkpoint": str(src), "num_problems": len(problems)}
        result["reasoning"] = reasoning(s, problems, opts.maj_k)
        state = ckpt.read_rank0_state(src)
        if state is not None and state.get("judge_pool") is not None:
            s.judge_pool = state["judge_pool"]
        ensure_pool(s, problems)
        items = heldout_items(problems, s.judge_pool, seed=s.cfg.seed)
        texts = s.greedy([h.item.prompt for h in items], s.cfg.spark.max_new_tokens)
        m = evaluate_items(items, texts, lambda t, a: verify_texts(s, t, a))
        result["judge"] = {
            "pointwise_accuracy": m["judge_pointwise_accuracy"],
            "pairwise_accuracy": m["judge_pairwise_accuracy"],
            "pointwise_items": int(m["judge_pointwise_items"]),
            "pairwise_items": int(m["judge_pairwise_items"]),
            "pointwise_by_source": {
                k.removeprefix("judge_pointwise_accuracy_"): v
                for k, v in m.items()
                if k.startswith("judge_pointwise_accuracy_")
            },
            "verdict_parse_rate": m["judge_verdict_parse_rate"],
        }
        result["reflection"] = {
            "accuracy": m.get("reflection_accuracy", 0.0),
            "items": int(m.get("reflection_items", 0)),
        }
        if s.judge_trained:
            result["tts"] = tts_accuracy(s, problems, opts.tts_rounds, opts.best_of_n)
        else:
            result["tts_skipped"] = "weights never trained on judge prompts"
        if opts.reward_bench:
            result["reward_bench"] = reward_bench(s, opts.reward_bench)
        result["wall_time_s"] = time.perf_counter() - start
        if s.rank == 0:
            write_atomically(
                out_dir / "eval.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n")
            )
            metrics = src.parent.parent / "metrics.jsonl"
            write_report(out_dir, result, metrics if metrics.is_file() else None)
    finally:
        s.close()


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    checkpoint: str
    prompts: tuple[str, ...]
    tts: str = "none"
    rounds: int = 2
    n: int = 8


def run_generate(cfg: RunConfig, opts: GenerateOptions) -> list[dict]:
    """Responses to ``opts.prompts``, plain greedy or with a test-time mode."""
    from megatron_spark.spark.tts import best_of_n, self_reflect
    from megatron_spark.train import checkpoint as ckpt
    from megatron_spark.train.session import Session

    src = Path(opts.checkpoint)
    if not (src / "model").is_dir() and not (src / "config.json").is_file():
        raise UserError(f"--checkpoint {src}: not a checkpoint directory (no model/ or config.json)")
    if opts.tts != "none" and not ckpt.read_meta(src).get("judge_trained", False):
        raise UserError(
            f"--tts {opts.tts}: {src} was never trained on judge prompts (no SPARK run or judge warm "
            f"start wrote it), so its verdicts mean nothing; use a SPARK checkpoint or --tts none"
        )
    # The session writes its config and summary into run_dir: a scratch one, gone afterwards.
    with tempfile.TemporaryDirectory(prefix="megatron-spark-generate-") as scratch:
        cfg = dataclasses.replace(
            cfg,
            run_dir=scratch,
            model=dataclasses.replace(cfg.model, init=str(src)),
            train=dataclasses.replace(cfg.train, eval_num_problems=0),
        )
        s = Session(cfg, "eval")
        try:
            gen, q = _generate_texts(s), list(opts.prompts)
            mx, jmx, box = s.cfg.rollout.max_new_tokens, s.cfg.spark.max_new_tokens, s.cfg.task.verifier.box
            if opts.tts == "self-reflect":
                r = self_reflect(q, gen, s.tokenizer, opts.rounds, mx, jmx, box)
                responses, gens = r.responses, r.generations
            elif opts.tts == "best-of-n":
                r = best_of_n(q, gen, s.tokenizer, opts.n, mx, jmx, seed=s.cfg.seed, box=box)
                responses, gens = r.responses, r.generations
            else:
                responses, gens = s.greedy(q, mx), [1] * len(q)
            return [{"prompt": p, "response": t, "generations": g} for p, t, g in zip(q, responses, gens)]
        finally:
            s.close()
