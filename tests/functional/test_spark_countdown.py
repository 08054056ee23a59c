"""SPARK on Countdown, the demo's task, end to end at a shortened length: the warm start (300
steps; the model's own wrong answers become judge candidates from step 100), four SPARK steps of
the committed recipe, then ``megatron-spark eval`` with its test-time modes.

What is asserted is the pipeline on this task: own wrong answers reach the warm start, every item
kind is recycled and trained with balanced verdict labels, and the evaluation scores balanced
held-out judge items from both wrong-answer sources, the model's verdicts on its own answers, and
the test-time modes on the same samples as the reasoning scores. Whether the judge *learns*
needs the recipes' full length, beyond the test command's budget: CI asserts it on the full demo
after the test command (tests/claims/test_demo_claim.py), and ``tools/spark_experiment.py``
measures it over seeds (docs/experiments/tiny_countdown.md).
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from megatron_spark.checkpoint.steps import latest
from tests.conftest import REPO, read_metrics, run_cli

RECIPES = REPO / "examples" / "tiny_countdown"
WARM_STEPS, OWN_FROM = 300, 100
PROBLEMS, N = 60, 4


@pytest.fixture(scope="module")
def countdown_run(tmp_path_factory):
    """(warm start dir, SPARK run dir, eval.json) of the shortened recipes at seed 0."""
    root = tmp_path_factory.mktemp("countdown")
    warm, spark, out = root / "warm", root / "spark", root / "eval"
    run_cli(
        [
            "sft",
            str(RECIPES / "sft_spark.yaml"),
            f"run_dir={warm}",
            f"train.num_steps={WARM_STEPS}",
            f"sft.own_wrong_answers_from_step={OWN_FROM}",
            "train.eval_every_steps=0",
        ],
        check=True,
        timeout=900,
    )
    run_cli(
        [
            "train",
            str(RECIPES / "spark.yaml"),
            f"run_dir={spark}",
            f"model.init={latest(warm / 'checkpoints')}",
            "train.num_steps=4",
            "optim.warmup_steps=0",
            "train.eval_every_steps=0",
            "train.save_every_steps=0",
        ],
        check=True,
        timeout=900,
    )
    run_cli(
        [
            "eval",
            str(RECIPES / "spark.yaml"),
            f"train.eval_num_problems={PROBLEMS}",
            "--checkpoint",
            str(latest(spark / "checkpoints")),
            "--out",
            str(out),
            "--maj-k",
            str(N),
            "--n",
            str(N),
        ],
        check=True,
        timeout=900,
    )
    return warm, spark, json.loads((out / "eval.json").read_text())


def test_the_warm_start_takes_the_models_own_wrong_answers_from_the_set_step(countdown_run):
    warm, _, _ = countdown_run
    rows = [r for r in read_metrics(warm) if "train/loss" in r]
    assert len(rows) == WARM_STEPS
    every = yaml.safe_load((warm / "config.yaml").read_text())["sft"]["own_wrong_answers_every_steps"]
    assert every == 2  # the recipe's
    # Row t is step t (0-based): sampled at OWN_FROM, OWN_FROM + every, ...; nowhere else.
    sampled = [t for t, r in enumerate(rows) if "sft/own_wrong_answers" in r]
    assert sampled == list(range(OWN_FROM, WARM_STEPS, every))
    assert sum(rows[t]["sft/own_wrong_answers"] for t in sampled) > 0
    assert all("time/own_answers_s" in rows[t] for t in sampled)
    # Every judge and reflection example had a wrong candidate (own, perturbed or a distractor).
    assert all(r["sft/examples_without_wrong_answer"] == 0 for r in rows)


def test_spark_recycles_every_item_kind_with_balanced_verdicts(countdown_run):
    _, spark, _ = countdown_run
    steps = [r for r in read_metrics(spark) if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for kind in ("pointwise", "pairwise", "reflection"):
        assert sum(r[f"spark/items_trained/{kind}"] for r in steps) > 0, kind
    assert all(r["spark/label_balance"] == 0.5 for r in steps)
    judged = [r for r in steps if "judge/verdict_parse_rate" in r]
    # Two verdicts, plus "no verdict": at most log2(3) bits per group.
    assert judged and all(0.0 <= r["judge/verdict_entropy_bits"] <= math.log2(3) for r in judged)
    assert all(r["train/nonfinite_microbatches"] == 0 for r in steps)


def test_the_checked_judge_reward_pays_only_after_a_right_check(countdown_run):
    """The recipe's ``spark.judge_reward: checked``: no judge sample is paid unless its check is
    right, so the judge samples paid are at most those whose check is right, every step."""
    _, spark, _ = countdown_run
    config = yaml.safe_load((spark / "config.yaml").read_text())["spark"]
    assert config["judge_reward"] == "checked"
    m = config["num_samples_per_item"]
    judged = [r for r in read_metrics(spark) if "judge/check_right_rate" in r]
    assert judged
    for r in judged:
        n_point = r["spark/items_trained/pointwise"] * m
        n_pair = r["spark/items_trained/pairwise"] * m
        paid = r["judge/pointwise_accuracy"] * n_point + r["judge/pairwise_accuracy"] * n_pair
        assert 0.0 <= r["judge/check_right_rate"] <= 1.0
        assert paid <= r["judge/check_right_rate"] * (n_point + n_pair) + 1e-6, r
        # Items none of whose samples writes the check add no right check to the rate.
        assert 0.0 <= r["judge/unwritten_check_groups"] <= 1.0
        assert r["judge/check_right_rate"] <= 1.0 - r["judge/unwritten_check_groups"] + 1e-9, r


def test_eval_scores_the_judge_on_both_wrong_answer_sources_and_tts_on_the_same_samples(countdown_run):
    _, _, result = countdown_run
    assert result["num_problems"] == PROBLEMS
    judge, reasoning, tts = result["judge"], result["reasoning"], result["tts"]
    assert judge["pointwise_items"] == judge["pairwise_items"] == PROBLEMS
    assert set(judge["pointwise_by_source"]) == {"none", "policy", "perturbed"}
    assert set(judge["pairwise_by_source"]) == {"policy", "perturbed"}
    # Each problem's greedy answer is either right or wrong, and judged once.
    assert judge["own_wrong"] + judge["own_right"] == PROBLEMS
    assert 0.0 <= judge["own_wrong_rejected"] <= 1.0 and 0.0 <= judge["own_right_accepted"] <= 1.0
    # pass@1 is the greedy answer; pass@N, maj@N and the sample mean are over N samples.
    assert reasoning["k"] == N and reasoning["sample_mean"] <= reasoning[f"pass@{N}"]
    assert reasoning[f"maj@{N}"] <= reasoning[f"pass@{N}"]
    # Best-of-n picks among the very samples maj@n votes over.
    assert tts["best-of-n"]["n"] == N and tts["best-of-n"][f"maj@{N}"] == reasoning[f"maj@{N}"]
    assert tts["best-of-n"]["accuracy"] <= reasoning[f"pass@{N}"]
    reflect = tts["self-reflect"]
    # A round is one verdict and, unless the verdict accepts, one new answer.
    assert 1.0 <= reflect["generations_mean"] <= 1 + 2 * reflect["rounds"]
    assert reflect["majority_k"] == min(N, math.ceil(reflect["generations_mean"] - 1e-9))
    assert reflect["majority_at_equal_generations"] == reasoning[f"maj@{reflect['majority_k']}"]
    # Sampled redos, the same loop with greedy ones, and the control that samples the bare
    # question again; each gain splits into answers fixed and broken, counted against the very
    # greedy answers pass@1 scored.
    modes = {
        "self-reflect": (1.0, "reflect"),
        "self-reflect-greedy-redo": (0.0, "reflect"),
        "self-reflect-resample": (1.0, "question"),
    }
    assert set(tts) == {*modes, "best-of-n"}
    for mode, (temperature, redo_prompt) in modes.items():
        r = tts[mode]
        assert (r["redo_temperature"], r["redo_prompt"]) == (temperature, redo_prompt)
        assert r["first_right"] == round(reasoning["pass@1"] * PROBLEMS) == judge["own_right"]
        assert r["first_wrong"] + r["first_right"] == PROBLEMS
        assert round(r["accuracy"] * PROBLEMS) == r["first_right"] - r["broken"] + r["fixed"], r
        assert 0 <= r["repeats"] <= r["redos"] <= r["rounds"] * PROBLEMS
