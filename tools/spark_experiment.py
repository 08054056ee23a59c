"""The tiny SPARK experiment on Countdown: GRPO-only against SPARK (joint, alternating, RL-only
judge, and three ablations), each over several seeds.

Each seed has its own warm start (``examples/tiny_countdown/sft_spark.yaml``: worked solutions,
judge prompts answered by a worked check and the verdict it implies, reflection prompts, practice
of the check's arithmetic),
and every configuration of that seed starts from it with the same policy rollouts (steps x
prompts x samples); configurations differ only in what is recycled and how it is trained. The
paper's baseline, ``grpo_only_solve_start``, runs GRPO from a second warm start of the seed with
the same worked solutions and practice and no judge or reflection examples. Each
final checkpoint is scored by ``megatron-spark eval``: held-out policy pass@1, judge accuracy on
balanced held-out items (by the source of the wrong answer), the model's verdicts on its own
answers, reflection, self-reflection TTS beside majority voting at the same number of
generations, and best-of-n by the model's own verdict beside maj@n.

    python tools/spark_experiment.py --out runs/experiment                 # everything (~hours)
    python tools/spark_experiment.py --out runs/exp --runs grpo_only spark_joint --seeds 0 1
    python tools/spark_experiment.py --out runs/experiment --repeat spark_joint   # run-to-run check
    python tools/spark_experiment.py --out runs/experiment --reeval   # the eval changed: evaluate again

Runs are separate ``megatron-spark`` processes, ``--jobs`` at a time (default: one per two
cores), each with ``cores / jobs`` threads; the script resumes where it stopped (a run with an
``eval/eval.json`` is done). Writes OUT/seed<S>/<run>/, OUT/results.json, and regenerates
docs/experiments/tiny_countdown.md (keeping its hand-written "## Analysis" section) with a copy of
results.json and the curves in docs/experiments/tiny_countdown/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "examples" / "tiny_countdown"
DOC = REPO / "docs" / "experiments" / "tiny_countdown.md"

RUNS: dict[str, list[str]] = {
    "grpo_only": ["spark.enabled=false"],
    "spark_joint": [],
    "spark_alternating": ["spark.schedule=alternating"],
    # The judge is then learnt from its RL reward alone (the paper's setting, with the recipe's
    # checked reward: docs/spark.md).
    "rl_only_judge": ["spark.judge_ce_weight=0"],
    "no_pointwise": ["spark.pointwise=false"],
    "no_pairwise": ["spark.pairwise=false"],
    "no_reflection": ["spark.reflection=false"],
    # The paper's baseline, from the seed's solve-only warm start (RUN_WARM_START).
    "grpo_only_solve_start": ["spark.enabled=false"],
}
"""Configuration name -> overrides of ``spark.yaml``."""

WARM_STARTS: dict[str, list[str]] = {
    "warm_start": [],
    # The paper's baseline is RLVR on a model that never practised judging. This warm start keeps
    # the recipe's steps, learning rate and expected number of worked solutions and check
    # practice per step (8 + 8), and drops the judge and reflection examples (and with them the
    # model's own answers): the same solving data, nothing spent on judging.
    "warm_start_solve_only": [
        "sft.judge_fraction=0",
        "sft.reflection_fraction=0",
        "sft.practice_fraction=0.5",
        "train.num_prompts_per_step=16",
    ],
}
"""Warm-start name -> overrides of ``sft_spark.yaml``; each seed writes OUT/seed<S>/<name>."""

RUN_WARM_START = {"grpo_only_solve_start": "warm_start_solve_only"}
"""Configurations that start from another warm start than the recipe's."""


def _ratio(base: tuple[str, ...], num: str, den: str):
    """A metric that is one count of ``eval.json`` over another (None when either is missing or the
    denominator is 0)."""

    def value(result: dict) -> float | None:
        n, d = _get(result, base + (num,)), _get(result, base + (den,))
        return n / d if n is not None and d else None

    return value


SAMPLED, GREEDY_REDO = ("tts", "self-reflect"), ("tts", "self-reflect-greedy-redo")
RESAMPLE = ("tts", "self-reflect-resample")
METRICS: tuple[tuple[str, tuple[str, ...] | Callable[[dict], float | None]], ...] = (
    ("policy pass@1", ("reasoning", "pass@1")),
    ("pointwise judge", ("judge", "pointwise_accuracy")),
    ("pairwise judge", ("judge", "pairwise_accuracy")),
    ("pointwise: right answers", ("judge", "pointwise_by_source", "none")),
    ("pointwise: policy's mistakes", ("judge", "pointwise_by_source", "policy")),
    ("pointwise: perturbations", ("judge", "pointwise_by_source", "perturbed")),
    ("pairwise: vs policy's mistakes", ("judge", "pairwise_by_source", "policy")),
    ("pairwise: vs perturbations", ("judge", "pairwise_by_source", "perturbed")),
    ("own mistakes rejected", ("judge", "own_wrong_rejected")),
    ("own right answers accepted", ("judge", "own_right_accepted")),
    ("reflection", ("reflection", "accuracy")),
    ("self-reflection TTS", ("tts", "self-reflect", "accuracy")),
    ("TTS generations", ("tts", "self-reflect", "generations_mean")),
    ("TTS: own wrong answers fixed", _ratio(SAMPLED, "fixed", "first_wrong")),
    ("TTS: own right answers broken", _ratio(SAMPLED, "broken", "first_right")),
    ("TTS redos repeating the rejected answer", _ratio(SAMPLED, "repeats", "redos")),
    ("self-reflection TTS, greedy redos", GREEDY_REDO + ("accuracy",)),
    ("greedy redos repeating the rejected answer", _ratio(GREEDY_REDO, "repeats", "redos")),
    ("self-reflection TTS, bare question resampled", RESAMPLE + ("accuracy",)),
    ("resampled: own wrong answers fixed", _ratio(RESAMPLE, "fixed", "first_wrong")),
    ("majority vote, same generations", ("tts", "self-reflect", "majority_at_equal_generations")),
    ("best-of-8 by own verdict", ("tts", "best-of-n", "accuracy")),
    ("maj@8", ("reasoning", "maj@8")),
    ("random pick (sample mean)", ("reasoning", "sample_mean")),
)
"""(row label, path in eval.json) of the metrics reported per configuration."""
COUNTS = {"TTS generations"}
"""Rows that are not fractions."""


def _get(d: dict, path):
    """The value at ``path`` (keys) of ``d``, or ``path(d)`` for a computed metric; None if absent."""
    if callable(path):
        return path(d)
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _cli(args: list[str], threads: int, log: Path) -> None:
    """``megatron-spark ARGS`` in its own process; raises with the log's tail on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "megatron_spark.cli", *args], stdout=f, stderr=f, env=env
        )
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(
            f"megatron-spark {' '.join(args[:2])} failed (exit {proc.returncode}); {log}:\n{tail}"
        )


def _latest(run_dir: Path) -> Path:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        raise SystemExit(f"{run_dir}: no complete checkpoint")
    return run_dir / "checkpoints" / pointer.read_text().strip()


def _commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return head.stdout.strip() or "?"


def warm_start(out: Path, seed: int, threads: int, name: str = "warm_start") -> tuple[Path, float]:
    """The seed's warm start ``name`` (written once; its wall time and commit kept beside it)."""
    run_dir = out / f"seed{seed}" / name
    times = run_dir.parent / f"{name}.time.json"
    if not (run_dir / "checkpoints" / "latest").is_file():
        over = ["--overwrite"] if run_dir.exists() else []
        start = time.perf_counter()
        _cli(
            [
                "sft",
                str(RECIPES / "sft_spark.yaml"),
                f"run_dir={run_dir}",
                f"seed={seed}",
                *WARM_STARTS[name],
                *over,
            ],
            threads,
            run_dir.parent / f"{name}.log",
        )
        times.write_text(json.dumps({"wall_s": time.perf_counter() - start, "commit": _commit()}) + "\n")
    wall = json.loads(times.read_text())["wall_s"] if times.is_file() else float("nan")
    return _latest(run_dir), wall


def run_one(
    name: str, out: Path, seed: int, warm: Path, common: list[str], threads: int, tag: str = ""
) -> dict:
    run_dir = out / f"seed{seed}" / (name + tag)
    result_path = run_dir / "eval" / "eval.json"
    if result_path.is_file() and (run_dir / "times.json").is_file():
        return {
            "eval": json.loads(result_path.read_text()),
            **json.loads((run_dir / "times.json").read_text()),
        }
    log = run_dir.parent / f"{name}{tag}.log"
    overrides = [f"run_dir={run_dir}", f"model.init={warm}", f"seed={seed}", *common, *RUNS[name]]
    start = time.perf_counter()
    over = ["--overwrite"] if run_dir.exists() else []
    _cli(["train", str(RECIPES / "spark.yaml"), *overrides, *over], threads, log)
    train_s = time.perf_counter() - start
    times = {"train_s": train_s, "eval_s": evaluate(run_dir, seed, common, threads, log), "commit": _commit()}
    (run_dir / "times.json").write_text(json.dumps(times) + "\n")
    return {"eval": json.loads(result_path.read_text()), **times}


def evaluate(run_dir: Path, seed: int, common: list[str], threads: int, log: Path) -> float:
    """``megatron-spark eval`` of the run's last checkpoint into RUN_DIR/eval; its wall time."""
    start = time.perf_counter()
    _cli(
        [
            "eval",
            str(RECIPES / "spark.yaml"),
            f"seed={seed}",
            *common,
            "--checkpoint",
            str(_latest(run_dir)),
            "--out",
            str(run_dir / "eval"),
            "--overwrite",
        ],
        threads,
        log,
    )
    return time.perf_counter() - start


def reevaluate(name: str, out: Path, seed: int, common: list[str], threads: int) -> dict:
    """Evaluate a finished run's last checkpoint again with this commit's eval (its training and
    train time kept; ``eval_commit`` says which eval wrote the numbers)."""
    run_dir = out / f"seed{seed}" / name
    times = json.loads((run_dir / "times.json").read_text())
    times["eval_s"] = evaluate(run_dir, seed, common, threads, run_dir.parent / f"{name}.log")
    times["eval_commit"] = _commit()
    (run_dir / "times.json").write_text(json.dumps(times) + "\n")
    return {"eval": json.loads((run_dir / "eval" / "eval.json").read_text()), **times}


def _fmt(value, count: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if count else f"{100 * value:.1f}"


def _mean_std(values: list[float], count: bool) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    scale = 1 if count else 100
    return f"**{scale * mean:.{2 if count else 1}f}** ± {scale * std:.{2 if count else 1}f}"


def summary(results: dict, seeds: list[int]) -> dict[str, dict[str, dict]]:
    """run -> metric label -> {"per_seed": [...], "mean": m, "std": s}."""
    out: dict[str, dict[str, dict]] = {}
    for name in RUNS:
        rows = {}
        for label, path in METRICS:
            values = [_get(results.get(f"{name}/seed{s}", {}).get("eval", {}), path) for s in seeds]
            present = [v for v in values if v is not None]
            rows[label] = {
                "per_seed": values,
                "mean": statistics.fmean(present) if present else None,
                "std": statistics.stdev(present) if len(present) > 1 else 0.0 if present else None,
            }
        if any(r["mean"] is not None for r in rows.values()):
            out[name] = rows
    return out


def targets(table: dict, seeds: list[int]) -> list[str]:
    """The SPARK paper's claims as measurable bars (the targets this experiment is held to): one
    table row per bar with each seed's value and whether it holds."""

    def seed_values(run: str, label: str) -> list[float | None]:
        return table.get(run, {}).get(label, {}).get("per_seed", [None] * len(seeds))

    def diff(a: list, b: list) -> list:
        return [x - y if x is not None and y is not None else None for x, y in zip(a, b)]

    def both(a: list, b: list) -> list:
        return [min(x, y) if x is not None and y is not None else None for x, y in zip(a, b)]

    joint, grpo = "spark_joint", "grpo_only"
    point, pair = seed_values(joint, "pointwise judge"), seed_values(joint, "pairwise judge")
    gap = both(
        diff(point, seed_values(grpo, "pointwise judge")), diff(pair, seed_values(grpo, "pairwise judge"))
    )
    tts_gain = diff(seed_values(joint, "self-reflection TTS"), seed_values(joint, "policy pass@1"))
    tts_vs_vote = diff(
        seed_values(joint, "self-reflection TTS"), seed_values(joint, "majority vote, same generations")
    )
    grpo_gain = diff(seed_values(grpo, "self-reflection TTS"), seed_values(grpo, "policy pass@1"))
    best = diff(seed_values(joint, "best-of-8 by own verdict"), seed_values(joint, "maj@8"))
    policy = diff(seed_values(joint, "policy pass@1"), seed_values(grpo, "policy pass@1"))
    rl = both(seed_values("rl_only_judge", "pointwise judge"), seed_values("rl_only_judge", "pairwise judge"))
    solve = "grpo_only_solve_start"
    gap_solve = both(
        diff(point, seed_values(solve, "pointwise judge")), diff(pair, seed_values(solve, "pairwise judge"))
    )
    policy_solve = diff(seed_values(joint, "policy pass@1"), seed_values(solve, "policy pass@1"))
    # (target, per-seed values, test per seed, rule over seeds, values are differences)
    bars = [
        ("SPARK joint: both judges >= 85%", both(point, pair), lambda v: v >= 0.85, "every", False),
        ("SPARK joint: both judges >= 25 points above GRPO-only", gap, lambda v: v >= 0.25, "every", True),
        (
            "SPARK joint: own mistakes rejected >= 80%",
            seed_values(joint, "own mistakes rejected"),
            lambda v: v >= 0.80,
            "every",
            False,
        ),
        (
            "SPARK joint: self-reflection minus greedy pass@1 > 0 (mean >= 3 points)",
            tts_gain,
            lambda v: v > 0,
            "every+mean3",
            True,
        ),
        (
            "SPARK joint: self-reflection minus majority vote at equal generations > 0",
            tts_vs_vote,
            lambda v: v > 0,
            "every",
            True,
        ),
        ("GRPO-only: self-reflection minus greedy pass@1 <= 0", grpo_gain, lambda v: v <= 0, "every", True),
        ("SPARK joint: best-of-8 by own verdict minus maj@8 >= 0", best, lambda v: v >= 0, "every", True),
        (
            "policy pass@1: SPARK joint minus GRPO-only >= -1 point (mean)",
            policy,
            lambda v: True,
            "mean-1",
            True,
        ),
        ("RL-only judge: both judges >= 70%", rl, lambda v: v >= 0.70, "every", False),
        # Against the paper's baseline: GRPO from a warm start that never practised judging.
        (
            "SPARK joint: both judges >= 25 points above GRPO-only from a solve-only warm start",
            gap_solve,
            lambda v: v >= 0.25,
            "every",
            True,
        ),
        (
            "policy pass@1: SPARK joint minus GRPO-only from a solve-only warm start >= -1 point (mean)",
            policy_solve,
            lambda v: True,
            "mean-1",
            True,
        ),
    ]
    lines = [
        "## Against the targets",
        "",
        "The SPARK paper's claims as bars (percent; differences in points).",
        "",
        "| target | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | holds |",
        "|---|" + "---|" * (len(seeds) + 2),
    ]
    for label, values, ok, rule, signed in bars:
        present = [v for v in values if v is not None]
        if not present:
            continue
        mean = statistics.fmean(present)
        every = len(present) == len(seeds) and all(ok(v) for v in present)
        holds = {"every": every, "every+mean3": every and mean >= 0.03, "mean-1": mean >= -0.01 - 1e-9}[rule]
        fmt = "{:+.1f}" if signed else "{:.1f}"
        cells = " | ".join("-" if v is None else fmt.format(100 * v) for v in values)
        lines.append(f"| {label} | {cells} | {fmt.format(100 * mean)} | {'yes' if holds else '**no**'} |")
    return lines + [""]


def _commits_text(commits: dict[str, list[str]]) -> str:
    """``at commit C`` or ``at commits C1 (runs); C2 (runs)``."""
    if len(commits) <= 1:
        return f"at commit {next(iter(commits), '?')}"
    return "at commits " + "; ".join(
        f"{c} ({', '.join(sorted(set(names)))})" for c, names in sorted(commits.items())
    )


def write_doc(results: dict, seeds: list[int], args, warm_times: dict, repeat: dict | None) -> None:
    from megatron_spark.eval.report import plot_comparison, read_curves

    figs = DOC.parent / "tiny_countdown"
    figs.mkdir(parents=True, exist_ok=True)
    kept = json.loads(json.dumps(results).replace(f"{args.out.absolute()}/", ""))
    (figs / "results.json").write_text(json.dumps(kept, indent=2) + "\n")
    table = summary(results, seeds)
    commits: dict[str, list[str]] = {}
    for key, value in results.items():
        commits.setdefault(value.get("commit", "?"), []).append(key.split("/")[0])
    where = _commits_text(commits)
    evaluated: dict[str, list[str]] = {}
    for key, value in results.items():
        if "eval_commit" in value:
            evaluated.setdefault(value["eval_commit"], []).append(key.split("/")[0])
    if evaluated:
        where += ", evaluated again " + _commits_text(evaluated)
    lines = [
        "# Tiny SPARK experiment (built-in Countdown, 2 CPU cores)",
        "",
        "<!-- Generated by tools/spark_experiment.py; the Analysis section below is kept by hand. -->",
        "",
        f"Regenerate: `python tools/spark_experiment.py --out runs/experiment --seeds {' '.join(map(str, seeds))}"
        + (f" --num-steps {args.num_steps}" if args.num_steps else "")
        + f" --jobs {args.jobs}`. "
        + f"Measured {time.strftime('%Y-%m-%d')} {where} on a {os.cpu_count()}-core CPU machine, "
        + f"each run at {max(1, (os.cpu_count() or 2) // args.jobs)} thread(s), {args.jobs} at a time.",
        "",
        "Each seed has its own warm start (`examples/tiny_countdown/sft_spark.yaml`); every",
        "configuration of a seed starts from it (`grpo_only_solve_start` from the seed's solve-only",
        "warm start, the paper's baseline: its section says which) and rolls out the same policy prompts",
        "(`examples/tiny_countdown/spark.yaml`, the overrides below). Numbers are `megatron-spark eval`",
        "on each run's last checkpoint, on the 200 held-out problems: greedy pass@1; judge accuracy on",
        "balanced held-out items (half right answers, half wrong; wrong ones half from the warm",
        "start's own samples, half perturbations: an operator or number changed, a number not",
        "offered, a sub-expression folded into its value, an operand dropped); the model's verdict",
        "on its own greedy answers; reflection on held-out wrong attempts; self-reflection (2 rounds,",
        "each new attempt sampled at temperature 1; the answers it fixes and breaks; the same loop",
        "with greedy redos, and with the bare question sampled again in place of the reflection",
        "prompt) beside majority voting over temperature-1 samples with at least as",
        "many generations; best of 8 samples by the model's own verdict beside maj@8 (votes on the",
        "expression's value).",
        "Percentages; mean ± standard deviation over seeds, then each seed.",
        "",
    ]
    lines += targets(table, seeds)
    for name, overrides in RUNS.items():
        if name not in table:
            continue
        start = RUN_WARM_START.get(name)
        lines += [
            f"## {name}"
            + (f" (`{' '.join(overrides)}`)" if overrides else " (the recipe)")
            + (f", from `{start}` (`{' '.join(WARM_STARTS[start])}`)" if start else ""),
            "",
        ]
        lines += [
            "| metric | mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|---|" + "---|" * len(seeds),
        ]
        for label, _ in METRICS:
            row = table[name][label]
            count = label in COUNTS
            per_seed = " | ".join(_fmt(v, count) for v in row["per_seed"])
            lines.append(
                f"| {label} | {_mean_std([v for v in row['per_seed'] if v is not None], count)} | {per_seed} |"
            )
        walls = [results.get(f"{name}/seed{s}", {}).get("train_s") for s in seeds]
        walls = [w for w in walls if w is not None]
        if walls:
            lines.append(
                f"| train wall time (s) | {statistics.fmean(walls):.0f} | "
                + " | ".join(f"{w:.0f}" for w in walls)
                + " |"
            )
        lines.append("")
    for name in WARM_STARTS:
        walls = {s: t for (n, s), t in warm_times.items() if n == name and t == t}  # not NaN
        if walls:
            lines += [
                f"`{name}` wall time per seed: "
                + ", ".join(f"seed {s}: {t:.0f} s" for s, t in walls.items()),
                "",
            ]
    if repeat:
        lines += ["## Run to run", "", repeat["text"], ""]
    curves = {
        name: read_curves(args.out / f"seed{seeds[0]}" / name / "metrics.jsonl")
        for name in RUNS
        if (args.out / f"seed{seeds[0]}" / name / "metrics.jsonl").is_file()
    }
    for metric, title in (
        ("eval/accuracy", "policy accuracy (held-out, greedy)"),
        ("eval/judge_pointwise_accuracy", "pointwise judge accuracy (held-out)"),
        ("eval/judge_pairwise_accuracy", "pairwise judge accuracy (held-out)"),
    ):
        runs = {n: c for n, c in curves.items() if c.get(metric)}
        if runs:
            png = figs / (metric.split("/")[1] + ".png")
            plot_comparison(runs, metric, png, f"{title}, seed {seeds[0]}")
            lines.append(f"![{png.name}](tiny_countdown/{png.name})")
    lines.append("")
    analysis = ""
    if DOC.is_file() and "## Analysis" in DOC.read_text():
        analysis = DOC.read_text()[DOC.read_text().index("## Analysis") :]
    DOC.write_text("\n".join(lines) + "\n" + (analysis or "## Analysis\n\n(to be written)\n"))


def compare_repeat(first: dict, second: dict) -> dict:
    """How far a second run of the same seed and configuration lands from the first."""
    diffs = {}
    for label, path in METRICS:
        a, b = _get(first["eval"], path), _get(second["eval"], path)
        if a is not None and b is not None:
            diffs[label] = b - a
    identical = all(d == 0 for d in diffs.values())
    worst = max(diffs.items(), key=lambda kv: abs(kv[1])) if diffs else ("-", 0.0)
    text = "A second run of the same seed and configuration on the same machine gave " + (
        "identical numbers in every metric."
        if identical
        else f"different numbers: the largest difference is {worst[0]} ({100 * worst[1]:+.1f} points)."
    )
    return {"diffs": diffs, "identical": identical, "text": text}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/experiment"), help="experiment directory")
    p.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS), help="configurations")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--num-steps", type=int, default=0, help="training steps per run (0: the recipe's)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="runs at a time")
    p.add_argument("--repeat", choices=list(RUNS), help="also run this configuration's first seed again")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/experiments/tiny_countdown.md")
    p.add_argument(
        "--reeval",
        action="store_true",
        help="evaluate every finished run's last checkpoint again (the eval changed; training is kept)",
    )
    args = p.parse_args()
    args.out = args.out.absolute()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    common = [f"train.num_steps={args.num_steps}"] if args.num_steps else []
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        if args.reeval:
            done = [
                (name, s)
                for s in args.seeds
                for name in args.runs
                if (args.out / f"seed{s}" / name / "times.json").is_file()
                and (args.out / f"seed{s}" / name / "checkpoints" / "latest").is_file()
            ]
            again = {job: pool.submit(reevaluate, job[0], args.out, job[1], common, threads) for job in done}
            for (name, s), future in again.items():
                results[f"{name}/seed{s}"] = future.result()
                results_path.write_text(json.dumps(results, indent=2) + "\n")
                print(f"evaluated again: {name}/seed{s}", flush=True)
        jobs = [(name, s) for s in args.seeds for name in args.runs if f"{name}/seed{s}" not in results]
        if args.repeat:
            jobs.append((args.repeat, args.seeds[0], "_repeat"))
        # Every warm start a requested configuration starts from, each seed's recipe one always.
        needed = sorted({(RUN_WARM_START.get(name, "warm_start"), s) for name, s, *_ in jobs})
        needed = sorted(set(needed) | {("warm_start", s) for s in args.seeds})
        warm = dict(zip(needed, pool.map(lambda ws: warm_start(args.out, ws[1], threads, ws[0]), needed)))
        futures = {
            job: pool.submit(
                run_one,
                job[0],
                args.out,
                job[1],
                warm[(RUN_WARM_START.get(job[0], "warm_start"), job[1])][0],
                common,
                threads,
                *job[2:],
            )
            for job in jobs
        }
        for job, future in futures.items():
            key = f"{job[0]}/seed{job[1]}" + (job[2] if len(job) > 2 else "")
            results[key] = future.result()
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"done: {key}", flush=True)
    repeat = None
    if args.repeat:
        key = f"{args.repeat}/seed{args.seeds[0]}"
        repeat = compare_repeat(results[key], results[key + "_repeat"])
        print(repeat["text"])
    if not args.no_doc:
        write_doc(results, args.seeds, args, {key: t for key, (_, t) in warm.items()}, repeat)
        print(f"wrote {DOC}")
    print(f"results: {results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
