"""SPARK on Countdown, the demo's task, end to end: the warm start, then the recipe's SPARK run,
then ``megatron-spark eval``. The judge's verdicts start as coin flips (50% on balanced held-out
items); after the run both judges must be well above chance, the model must reject most of its
own wrong answers, and checking its own answers at test time must not lower its accuracy.

The runs are the recipes as committed (seed 0, one thread: the same numbers as seed 0 of
``tools/spark_experiment.py``, docs/experiments/tiny_countdown.md), so this is the demo's claim
tested, not a shortened stand-in.
"""

from __future__ import annotations

import json

import pytest

from megatron_spark.train.checkpoint import latest
from tests.conftest import REPO, read_metrics, run_cli

RECIPES = REPO / "examples" / "tiny_countdown"


@pytest.fixture(scope="module")
def spark_run(tmp_path_factory):
    """(warm start dir, SPARK run dir, eval.json) of the recipes at seed 0."""
    root = tmp_path_factory.mktemp("countdown")
    warm, spark = root / "warm", root / "spark"
    run_cli(
        ["sft", str(RECIPES / "sft_spark.yaml"), f"run_dir={warm}", "train.eval_every_steps=0"],
        check=True,
        timeout=1500,
    )
    run_cli(
        [
            "train",
            str(RECIPES / "spark.yaml"),
            f"run_dir={spark}",
            f"model.init={latest(warm / 'checkpoints')}",
            "train.eval_every_steps=0",
            "train.eval_num_problems=100",
            "train.save_every_steps=0",
        ],
        check=True,
        timeout=1500,
    )
    out = root / "eval"
    run_cli(
        [
            "eval",
            str(RECIPES / "spark.yaml"),
            "train.eval_num_problems=100",
            "--checkpoint",
            str(latest(spark / "checkpoints")),
            "--out",
            str(out),
            "--maj-k",
            "4",
            "--n",
            "4",
        ],
        check=True,
        timeout=900,
    )
    return warm, spark, json.loads((out / "eval.json").read_text())


def test_the_warm_start_learns_from_the_models_own_wrong_answers(spark_run):
    warm, _, _ = spark_run
    rows = [r for r in read_metrics(warm) if "train/loss" in r]
    own = [r.get("sft/own_wrong_answers") for r in rows]
    start = 600  # sft.own_wrong_answers_from_step
    assert all(x is None for x in own[: start - 1])
    later = [x for x in own[start:] if x is not None]
    assert len(later) >= len(rows) - start - 1 and sum(later) / len(later) > 5  # of 32 problems a step
    assert all(r["sft/examples_without_wrong_answer"] == 0 for r in rows)


def test_spark_teaches_the_judge_and_self_reflection_does_not_hurt(spark_run):
    _, spark, result = spark_run
    evals = [r for r in read_metrics(spark) if "eval/judge_pointwise_accuracy" in r]
    first = evals[0]
    # Coin-flip verdicts at the warm start: one verdict word per template, 50% on balanced items.
    assert abs(first["eval/judge_pointwise_accuracy"] - 0.5) <= 0.06
    assert abs(first["eval/judge_pairwise_accuracy"] - 0.5) <= 0.06
    judge = result["judge"]
    assert judge["pointwise_accuracy"] >= 0.65 and judge["pairwise_accuracy"] >= 0.65, judge
    assert judge["own_wrong_rejected"] >= 0.7, judge
    reflect = result["tts"]["self-reflect"]
    assert reflect["accuracy"] >= result["reasoning"]["pass@1"], (reflect, result["reasoning"])
    assert result["tts"]["best-of-n"]["accuracy"] >= result["reasoning"]["maj@4"], result["tts"]
