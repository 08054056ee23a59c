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
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_spark.checkpoint import steps as ckpt
from megatron_spark.errors import UserError
from megatron_spark.eval.accuracy import ensure_pool, eval_problems, verify_texts
from megatron_spark.eval.progress import GenerationProgress
from megatron_spark.inference.context import Inference, Scoring

if TYPE_CHECKING:  # the config tree sits above every component it configures
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
    redo_temperature: float = 1.0
    """Temperature of self-reflection's new attempts (0: greedy); eval also reports greedy redos
    and the verify-then-resample control."""


def _generate_texts(s: Scoring):
    def generate(prompts, params):
        return s.rollout.generate([s.tokenizer.encode_prompt(p) for p in prompts], params)

    return generate


def majority_pick(problem, texts: list[str], checks, box: str) -> str:
    """The sample that majority voting picks: the first one whose answer has the most common
    vote key (:meth:`TaskChecks.vote_key`: the answer text, or a Countdown expression's value);
    empty when no sample has a countable answer."""
    from megatron_spark.reward.extract import extract_boxed

    keys = []
    for text in texts:
        final = extract_boxed(text, box)
        keys.append(checks.vote_key(problem, final) if final else None)
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return ""
    best = votes.most_common(1)[0][0]
    return texts[keys.index(best)]


def reasoning(s: Scoring, problems, k: int) -> tuple[dict, list[str], list[float]]:
    """pass@1 (greedy), the mean accuracy of ``k`` samples at temperature 1 (a random pick),
    pass@k, and maj@j for every j <= k (majority of the first j samples, so that self-reflection
    can be compared at an equal number of generations); also the greedy texts and rewards."""
    from megatron_spark.rollout.protocol import SamplingParams
    from megatron_spark.spark.checks import checks_for

    answers = [p.answer for p in problems]
    greedy = s.rollout.greedy([p.prompt for p in problems], s.cfg.rollout.max_new_tokens)
    pass1 = verify_texts(s, greedy, answers)
    params = SamplingParams(
        max_new_tokens=s.cfg.rollout.max_new_tokens, stop_token_ids=(s.tokenizer.eos_id,), seed=s.cfg.seed
    )
    completions = _generate_texts(s)([p.prompt for p in problems for _ in range(k)], params)
    texts = [s.tokenizer.decode(c.token_ids) for c in completions]
    rewards = verify_texts(s, texts, [a for a in answers for _ in range(k)])
    checks, box = checks_for(s.task.name), s.cfg.task.verifier.box
    n = max(1, len(problems))
    out = {"pass@1": sum(r >= 1 for r in pass1) / n, "k": k}
    out["sample_mean"] = sum(r >= 1 for r in rewards) / max(1, len(rewards))
    out[f"pass@{k}"] = (
        sum(any(r >= 1 for r in rewards[i * k : (i + 1) * k]) for i in range(len(problems))) / n
    )
    for j in range(1, k + 1):
        picks = [majority_pick(p, texts[i * k : i * k + j], checks, box) for i, p in enumerate(problems)]
        out[f"maj@{j}"] = sum(r >= 1 for r in verify_texts(s, picks, answers)) / n
    return out, greedy, pass1


def own_verdicts(s: Scoring, problems, greedy: list[str], rewards: list[float]) -> dict:
    """How the model judges its own greedy answers (the first round of self-reflection): the share
    of its wrong answers it rejects (anything but an explicit Yes) and of its right ones it accepts."""
    from megatron_spark.reward.extract import extract_boxed
    from megatron_spark.spark import templates
    from megatron_spark.spark.checks import checks_for
    from megatron_spark.spark.verdict import parse_verdict

    style, box = checks_for(s.task.name).styles.judge, s.cfg.task.verifier.box
    yes, no = templates.POINTWISE_VERDICTS["yesno"]
    finals = [extract_boxed(t, box) for t in greedy]
    judged = [i for i, f in enumerate(finals) if f]
    prompts = [templates.pointwise_prompt(problems[i].prompt, finals[i], "yesno", 0, style) for i in judged]
    texts = s.rollout.greedy(prompts, s.cfg.spark.max_new_tokens) if prompts else []
    accepted = {i for i, t in zip(judged, texts) if parse_verdict(t, (yes, no)) == yes}
    wrong = [i for i, r in enumerate(rewards) if r < 1]
    right = [i for i, r in enumerate(rewards) if r >= 1]
    return {
        "own_wrong_rejected": sum(i not in accepted for i in wrong) / max(1, len(wrong)),
        "own_right_accepted": sum(i in accepted for i in right) / max(1, len(right)),
        "own_wrong": len(wrong),
        "own_right": len(right),
    }


def tts_accuracy(
    s: Scoring,
    problems,
    rounds: int,
    n: int,
    majority: dict,
    greedy: list[str],
    greedy_right,
    redo_temperature: float = 1.0,
) -> dict:
    """Self-reflection and best-of-n by the model's own verdict, each beside majority voting at
    the same number of generations (``majority``: the maj@j of :func:`reasoning`). Self-reflection
    runs with sampled redos at ``redo_temperature`` (``self-reflect``) and, when that is not 0,
    again with greedy ones (``self-reflect-greedy-redo``) and with the control whose sampled redo
    is the bare question again (``self-reflect-resample``: verify, then resample), each with its
    :func:`redo_outcomes` counts against ``greedy_right``. Every loop starts from ``greedy``, the
    answers that :func:`reasoning` scored (``greedy_right``)."""
    from megatron_spark.spark.checks import checks_for
    from megatron_spark.spark.tts import best_of_n, redo_outcomes, self_reflect

    gen, q = _generate_texts(s), [p.prompt for p in problems]
    answers = [p.answer for p in problems]
    mx, jmx, box = s.cfg.rollout.max_new_tokens, s.cfg.spark.max_new_tokens, s.cfg.task.verifier.box
    checks = checks_for(s.task.name)
    first = [r >= 1 for r in greedy_right]
    out = {}
    modes = [("self-reflect", redo_temperature, "reflect")]
    if redo_temperature:
        modes += [
            ("self-reflect-greedy-redo", 0.0, "reflect"),
            ("self-reflect-resample", redo_temperature, "question"),
        ]
    for name, temperature, redo_prompt in modes:
        r = self_reflect(
            q,
            gen,
            s.tokenizer,
            rounds,
            mx,
            jmx,
            box,
            checks.styles,
            redo_temperature=temperature,
            seed=s.cfg.seed,
            first=greedy,
            redo_prompt=redo_prompt,
        )
        final = [a >= 1 for a in verify_texts(s, r.responses, answers)]
        mean_generations = sum(r.generations) / len(q)
        # Majority voting with at least as many generations (rounded up), as far as samples were drawn.
        k = min(majority["k"], max(1, math.ceil(mean_generations - 1e-9)))
        out[name] = {
            "accuracy": sum(final) / len(q),
            "rounds": rounds,
            "redo_temperature": temperature,
            "redo_prompt": redo_prompt,
            "generations_mean": mean_generations,
            "majority_at_equal_generations": majority[f"maj@{k}"],
            "majority_k": k,
            **redo_outcomes(r, first, final, box),
        }
    r = best_of_n(
        q,
        gen,
        s.tokenizer,
        n,
        mx,
        jmx,
        seed=s.cfg.seed,
        box=box,
        style=checks.styles.judge,
        vote_key=lambda i, final: checks.vote_key(problems[i], final),
    )
    acc = verify_texts(s, r.responses, answers)
    out["best-of-n"] = {"accuracy": sum(a >= 1 for a in acc) / len(q), "n": n}
    if f"maj@{n}" in majority:
        out["best-of-n"][f"maj@{n}"] = majority[f"maj@{n}"]
    return out


def reward_bench(s: Scoring, path: str) -> tuple[dict, list[dict]]:
    """The judge's score on a reward benchmark file and its per-item rows (see
    :func:`~megatron_spark.eval.reward_bench.score_replies`)."""
    from megatron_spark.eval.reward_bench import ITEMS_FILE, JudgeQuery, load_reward_bench, score_replies
    from megatron_spark.spark import templates
    from megatron_spark.spark.checks import checks_for

    items = load_reward_bench(path)
    style = checks_for(s.task.name).styles.judge
    yes, no = templates.POINTWISE_VERDICTS["yesno"]
    queries = []
    for it in items:
        if it.kind == "pointwise":
            prompt = templates.pointwise_prompt(it.question, it.responses[0], "yesno", 0, style)
            queries.append(JudgeQuery(prompt, (yes, no), yes if it.label == "correct" else no))
        else:
            prompt = templates.pairwise_prompt(it.question, it.responses[0], it.responses[1], 0, style)
            queries.append(JudgeQuery(prompt, templates.PAIRWISE_CHOICES, it.label))
    replies = s.rollout.greedy([q.prompt for q in queries], s.cfg.spark.max_new_tokens)
    summary, rows = score_replies(items, queries, replies)
    return {"file": str(path), **summary, "items_file": ITEMS_FILE}, rows


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
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=str(src)))
        _evaluate(cfg, opts, src, tmp)
    return out_dir / "report.md"


def _evaluate(cfg: RunConfig, opts: EvalOptions, src: Path, out_dir: Path) -> None:
    from megatron_spark.config import dump_config
    from megatron_spark.eval.report import write_atomically, write_report
    from megatron_spark.spark.checks import checks_for
    from megatron_spark.spark.heldout import evaluate_items, heldout_items

    start = time.perf_counter()
    s = Inference(cfg)
    progress = GenerationProgress(s.rollout, s.cfg, "eval", "reasoning")
    try:
        problems = eval_problems(s)
        result: dict = {"checkpoint": str(src), "num_problems": len(problems)}
        result["reasoning"], greedy, greedy_rewards = reasoning(s, problems, opts.maj_k)
        progress.phase("judge")
        state = ckpt.read_rank0_state(src)
        pool = ensure_pool(s, problems, state.get("judge_pool") if state is not None else None)
        items = heldout_items(problems, pool, checks_for(s.task.name), seed=s.cfg.seed)
        texts = s.rollout.greedy([h.item.prompt for h in items], s.cfg.spark.max_new_tokens)
        m = evaluate_items(items, texts, lambda t, a: verify_texts(s, t, a))
        result["judge"] = {
            "pointwise_accuracy": m["judge_pointwise_accuracy"],
            "pairwise_accuracy": m["judge_pairwise_accuracy"],
            "pointwise_items": int(m["judge_pointwise_items"]),
            "pairwise_items": int(m["judge_pairwise_items"]),
            **{
                f"{kind}_by_source": {
                    k.removeprefix(f"judge_{kind}_accuracy_"): v
                    for k, v in m.items()
                    if k.startswith(f"judge_{kind}_accuracy_")
                }
                for kind in ("pointwise", "pairwise")
            },
            "verdict_parse_rate": m["judge_verdict_parse_rate"],
        }
        result["reflection"] = {
            "accuracy": m.get("reflection_accuracy", 0.0),
            "items": int(m.get("reflection_items", 0)),
        }
        progress.phase("test-time scaling")
        if s.judge_trained:
            result["judge"].update(own_verdicts(s, problems, greedy, greedy_rewards))
            result["tts"] = tts_accuracy(
                s,
                problems,
                opts.tts_rounds,
                opts.best_of_n,
                result["reasoning"],
                greedy,
                greedy_rewards,
                opts.redo_temperature,
            )
        else:
            result["tts_skipped"] = "weights never trained on judge prompts"
        progress.phase("reward bench")
        bench_rows = None
        if opts.reward_bench:
            result["reward_bench"], bench_rows = reward_bench(s, opts.reward_bench)
        result["wall_time_s"] = time.perf_counter() - start
        if s.par.rank == 0:
            if bench_rows is not None:
                write_atomically(
                    out_dir / result["reward_bench"]["items_file"],
                    lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in bench_rows)),
                )
            write_atomically(
                out_dir / "eval.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n")
            )
            dump_config(cfg, out_dir / "config.yaml")
            metrics = src.parent.parent / "metrics.jsonl"
            write_report(out_dir, result, metrics if metrics.is_file() else None)
    finally:
        progress.close()
        s.close()


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    checkpoint: str
    prompts: tuple[str, ...]
    tts: str = "none"
    rounds: int = 2
    n: int = 8
    redo_temperature: float = 1.0


def run_generate(cfg: RunConfig, opts: GenerateOptions) -> list[dict]:
    """Responses to ``opts.prompts``, plain greedy or with a test-time mode."""
    from megatron_spark.spark.checks import checks_for
    from megatron_spark.spark.tts import best_of_n, self_reflect

    src = Path(opts.checkpoint)
    if not (src / "model").is_dir() and not (src / "config.json").is_file():
        raise UserError(f"--checkpoint {src}: not a checkpoint directory (no model/ or config.json)")
    if opts.tts != "none" and not ckpt.judge_trained(src):
        raise UserError(
            f"--tts {opts.tts}: {src} was never trained on judge prompts (no SPARK run or judge warm "
            f"start wrote it), so its verdicts mean nothing; use a SPARK checkpoint or --tts none"
        )
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, init=str(src)),
        train=dataclasses.replace(cfg.train, eval_num_problems=0),
    )
    s = Inference(cfg)
    progress = GenerationProgress(
        s.rollout, s.cfg, "generate", None if opts.tts == "none" else opts.tts, stderr=True
    )
    try:
        gen, q = _generate_texts(s), list(opts.prompts)
        mx, jmx, box = s.cfg.rollout.max_new_tokens, s.cfg.spark.max_new_tokens, s.cfg.task.verifier.box
        checks = checks_for(s.task.name)
        rounds = None
        if opts.tts == "self-reflect":
            r = self_reflect(
                q,
                gen,
                s.tokenizer,
                opts.rounds,
                mx,
                jmx,
                box,
                checks.styles,
                redo_temperature=opts.redo_temperature,
                seed=s.cfg.seed,
            )
            responses, gens, rounds = r.responses, r.generations, r.rounds
        elif opts.tts == "best-of-n":
            r = best_of_n(
                q, gen, s.tokenizer, opts.n, mx, jmx, seed=s.cfg.seed, box=box, style=checks.styles.judge
            )
            responses, gens = r.responses, r.generations
        else:
            responses, gens = s.rollout.greedy(q, mx), [1] * len(q)
        rows = [{"prompt": p, "response": t, "generations": g} for p, t, g in zip(q, responses, gens)]
        for row, trace in zip(rows, rounds or []):
            row["rounds"] = trace  # each round's judged answer, verdict and reflection
        return rows
    finally:
        progress.close()
        s.close()
