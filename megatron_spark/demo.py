"""The embedded tiny demo on the CPU: judge-format warm start, SPARK, evaluation and report.

Stages run from the committed recipes in ``examples/tiny_arith/`` under one run directory::

    RUN_DIR/sft/     supervised warm start (sft_spark.yaml): worked solutions, plus judge prompts
                     with coin-flip verdicts and reflection prompts (format, not skill)
    RUN_DIR/spark/   SPARK joint training from the warm start (spark.yaml)
    RUN_DIR/eval/    eval.json and report.md (+ curves.png) of SPARK's last checkpoint
    RUN_DIR/summary.json   held-out numbers after each stage and wall times
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from megatron_spark.errors import UserError

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "tiny_arith"
STAGES = (("sft", "sft_spark.yaml", "sft"), ("spark", "spark.yaml", "train"))


def _evals(run_dir: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [{k: v for k, v in r.items() if k.startswith("eval/")} for r in rows if "eval/accuracy" in r]


def _latest_checkpoint(run_dir: Path) -> Path:
    from megatron_spark.train.checkpoint import latest

    path = latest(run_dir / "checkpoints")
    if path is None:
        raise UserError(f"{run_dir}: the stage finished without a complete checkpoint")
    return path


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
    tts = result.get("tts", {}).get("self-reflect", {})
    if tts:
        console.print(
            f"self-reflection at test time: {tts['accuracy']:.1%} (greedy {result['reasoning']['pass@1']:.1%})"
        )
    console.print(f"report: {report}")
    console.print(f"run directory: {root}")
    return 0
