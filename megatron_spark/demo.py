"""The embedded tiny demo on the CPU: judge-format warm start, SPARK, evaluation and report.

The task is Countdown (reach a target with given numbers; checking an answer is an evaluation,
finding one is a search). Stages run from the committed recipes in ``examples/tiny_countdown/``
under one run directory::

    RUN_DIR/sft/     supervised warm start (sft_spark.yaml): worked solutions, judge prompts
                     answered by a worked check and the verdict it implies, reflection prompts
                     and practice of the check's arithmetic
    RUN_DIR/spark/   SPARK joint training from the warm start (spark.yaml)
    RUN_DIR/eval/    eval.json and report.md (+ curves.png) of SPARK's last checkpoint
    RUN_DIR/summary.json   held-out numbers after each stage and wall times
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from megatron_spark.errors import UserError

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "tiny_countdown"
STAGES = (("sft", "sft_spark.yaml", "sft"), ("spark", "spark.yaml", "train"))


def _evals(run_dir: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [{k: v for k, v in r.items() if k.startswith("eval/")} for r in rows if "eval/accuracy" in r]


def _latest_checkpoint(run_dir: Path) -> Path:
    from megatron_spark.checkpoint.steps import latest

    path = latest(run_dir / "checkpoints")
    if path is None:
        raise UserError(f"{run_dir}: the stage finished without a complete checkpoint")
    return path


def _redo_line(sampled: dict, greedy: dict | None) -> str:
    """Where self-reflection's gain comes from: answers it fixed and broke, and what redoing
    greedily instead would have given."""
    line = (
        f"  it fixed {sampled['fixed']} of its {sampled['first_wrong']} wrong answers and broke "
        f"{sampled['broken']} of its {sampled['first_right']} right ones"
    )
    if greedy:
        line += (
            f"; redoing greedily instead: {greedy['accuracy']:.1%} ({greedy['repeats']} of "
            f"{greedy['redos']} redos repeat the rejected answer)"
        )
    return line


def _test_time_lines(result: dict) -> str:
    """The final checkpoint as its own judge: its verdicts on its own answers and what test-time
    self-reflection and best-of-n by its own verdict do, each beside its baseline."""
    judge, tts, reasoning = result.get("judge", {}), result.get("tts", {}), result["reasoning"]
    lines = []
    if "own_wrong_rejected" in judge:
        wrong, right = judge["own_wrong"], judge["own_right"]
        rejects = (
            f"rejects {judge['own_wrong_rejected']:.1%} of the {wrong} wrong ones" if wrong else "none wrong"
        )
        accepts = (
            f"accepts {judge['own_right_accepted']:.1%} of the {right} right ones" if right else "none right"
        )
        lines.append(f"its own answers: {rejects}, {accepts}")
    reflect = tts.get("self-reflect")
    if reflect:
        lines.append(
            f"self-reflection at test time: {reflect['accuracy']:.1%} (greedy {reasoning['pass@1']:.1%}; "
            f"majority vote with as many generations, {reflect['majority_k']}: "
            f"{reflect['majority_at_equal_generations']:.1%})"
        )
        lines.append(_redo_line(reflect, tts.get("self-reflect-greedy-redo")))
        resample = tts.get("self-reflect-resample")
        if resample:
            lines.append(
                f"  resampling the bare question instead of reflecting (the control): "
                f"{resample['accuracy']:.1%} (fixed {resample['fixed']}, broke {resample['broken']})"
            )
    best = tts.get("best-of-n")
    if best:
        n = best["n"]
        lines.append(
            f"best of {n} by its own verdict: {best['accuracy']:.1%} (majority of {n}: "
            f"{best.get(f'maj@{n}', float('nan')):.1%})"
        )
    return "\n".join(lines)


def run_demo(run_dir: str | Path, seed: int = 0, overrides: list[str] = ()) -> int:
    from rich.console import Console
    from rich.table import Table

    from megatron_spark.config import load_config
    from megatron_spark.eval.run import EvalOptions, run_eval
    from megatron_spark.train.config import RunConfig
    from megatron_spark.train.run import run

    for _, name, _ in STAGES:
        if not (RECIPES / name).is_file():
            raise UserError(f"{RECIPES / name}: demo recipe missing (run from a source checkout)")
    root = Path(run_dir).absolute()
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root}: run directory exists and is not empty")
    console = Console()
    console.print(f"[bold]tiny SPARK demo[/bold]: warm start, SPARK, evaluation; run directory {root}")
    times, init = {}, []
    for stage, recipe, command in STAGES:
        cfg = load_config(
            RunConfig, RECIPES / recipe, [f"run_dir={root / stage}", f"seed={seed}", *init, *overrides]
        )
        start = time.perf_counter()
        run(cfg, command)
        times[stage] = time.perf_counter() - start
        init = [f"model.init={_latest_checkpoint(root / stage)}"]

    start = time.perf_counter()
    cfg = load_config(RunConfig, RECIPES / "spark.yaml", [f"seed={seed}", *overrides])
    report = run_eval(cfg, EvalOptions(str(_latest_checkpoint(root / "spark")), str(root / "eval")))
    times["eval"] = time.perf_counter() - start
    result = json.loads((root / "eval" / "eval.json").read_text())

    # SPARK's first evaluation (step 0) scores the warm start as policy, judge and reflector.
    spark_evals = _evals(root / "spark")
    evals = {"sft": spark_evals[0], "spark": spark_evals[-1]}
    summary = {
        "run_dir": str(root),
        "heldout": evals,
        "eval": result,
        "report": str(report),
        "wall_time_s": times,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = Table(title="tiny SPARK demo: held-out accuracy (greedy)")
    for col in ("model", "policy", "pointwise judge", "pairwise judge", "reflection", "wall time"):
        table.add_column(col)
    for stage, label in (("sft", "warm start"), ("spark", "SPARK")):
        e = evals[stage]
        table.add_row(
            label,
            *(
                f"{e.get(k, float('nan')):.1%}"
                for k in (
                    "eval/accuracy",
                    "eval/judge_pointwise_accuracy",
                    "eval/judge_pairwise_accuracy",
                    "eval/reflection_accuracy",
                )
            ),
            f"{times[stage]:.0f} s",
        )
    console.print(table)
    console.print(_test_time_lines(result))
    console.print(f"report: {report}")
    console.print(f"run directory: {root}")
    return 0
