"""SPARK end to end on the tiny task: judge items are built, rolled out, rewarded and trained, and
the held-out judge gets better; the alternating schedule runs; bad input to ``eval``/``generate``.

One module-scoped warm start (the demo's judge-format SFT) serves every test.
"""

from __future__ import annotations

import json

import pytest

from megatron_spark.checkpoint.steps import latest
from tests.conftest import REPO, read_metrics, run_cli, run_torchrun

SPARK = str(REPO / "examples/tiny_arith/spark.yaml")


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("spark") / "sft"
    run_cli(
        [
            "sft",
            str(REPO / "examples/tiny_arith/sft_spark.yaml"),
            f"run_dir={run_dir}",
            # The mechanics below need boxed verdicts and reflections that sometimes solve, not the
            # recipe's 600 steps: 400 (about 2 minutes at 2 threads instead of 3).
            "train.num_steps=400",
            "train.eval_num_problems=50",
        ],
        check=True,
        timeout=900,
    )
    return latest(run_dir / "checkpoints")


def test_joint_schedule_builds_rolls_out_rewards_and_trains_items(warm_start, tmp_path):
    """The mechanics on the arithmetic task; that the judge learns is asserted on Countdown
    (tests/functional/test_spark_countdown.py), where checking is easier than solving."""
    run_dir = tmp_path / "joint"
    run_cli(
        [
            "train",
            SPARK,
            f"run_dir={run_dir}",
            f"model.init={warm_start}",
            "train.num_steps=6",
            "train.eval_every_steps=0",
            "train.eval_num_problems=0",
            "train.eval_judge=false",
            "train.save_every_steps=0",
        ],
        check=True,
        timeout=1200,
    )
    rows = read_metrics(run_dir)
    steps = [r for r in rows if "spark/queue_size" in r]
    assert len(steps) == 6
    for kind in ("pointwise", "pairwise", "reflection"):
        assert sum(r[f"spark/items_built/{kind}"] for r in steps) > 0, kind
        assert sum(r[f"spark/items_trained/{kind}"] for r in steps) > 0, kind
    # Built at step 1, served from step 2 on: step 1 trains no item, every later step does.
    assert sum(steps[0][f"spark/items_trained/{k}"] for k in ("pointwise", "pairwise", "reflection")) == 0
    assert all(
        sum(r[f"spark/items_trained/{k}"] for k in ("pointwise", "pairwise", "reflection")) > 0
        for r in steps[1:]
    )
    # Pointwise labels are balanced per step.
    assert all(r["spark/label_balance"] == 0.5 for r in steps)
    # Items were rewarded: the warm start writes parseable verdicts (coin flips) and solves
    # reflection prompts, so the rewards are neither all 0 nor all 1.
    judge = [r["judge/pairwise_accuracy"] for r in steps[1:] if r["spark/items_trained/pairwise"] > 0]
    assert judge and 0.0 < sum(judge) / len(judge) < 1.0
    refl = [r["reflection/accuracy"] for r in steps[1:] if r["spark/items_trained/reflection"] > 0]
    assert refl and 0.0 < sum(refl) / len(refl) < 1.0
    assert all(r["judge/verdict_parse_rate"] > 0.5 for r in steps[1:])
    # Coin-flip verdicts: judge groups mostly split, so RL has advantages to learn from.
    entropy = [r["judge/verdict_entropy_bits"] for r in steps[1:]]
    assert sum(entropy) / len(entropy) > 0.5


def test_alternating_schedule_runs_both_phases(warm_start, tmp_path):
    run_dir = tmp_path / "alt"
    run_cli(
        [
            "train",
            SPARK,
            f"run_dir={run_dir}",
            f"model.init={warm_start}",
            "spark.schedule=alternating",
            "train.num_steps=3",
            "train.num_prompts_per_step=8",
            "spark.items_per_step=8",
            "optim.lr=5e-5",
            "optim.warmup_steps=10",
            "train.eval_num_problems=0",
            "train.eval_judge=false",
        ],
        check=True,
        timeout=600,
    )
    steps = [r for r in read_metrics(run_dir) if "spark/queue_size" in r]
    assert len(steps) == 3
    # Phase 2 pops the items phase 1 just built: every step trains items.
    assert all(r["spark/item_phase_skipped"] == 0.0 for r in steps)
    assert all(
        sum(r[f"spark/items_trained/{k}"] for k in ("pointwise", "pairwise", "reflection")) > 0 for r in steps
    )
    # The LR schedule counts both phases' optimizer steps (2 phases x 2 minibatches per step):
    # the run warms up linearly over 10 optimizer steps to 5e-5, and train/lr is the mean rate
    # of the step's 4 optimizer steps, so step k covers optimizer steps 4(k-1)+1 .. 4k.
    lr = [r["train/lr"] for r in steps]
    expected = [5e-5 * sum(min(1.0, (4 * k + j + 1) / 10) for j in range(4)) / 4 for k in range(3)]
    assert lr == pytest.approx(expected, rel=1e-9)


def test_alternating_schedule_survives_an_empty_queue(warm_start, tmp_path):
    run_dir = tmp_path / "empty"
    proc = run_cli(
        [
            "train",
            SPARK,
            f"run_dir={run_dir}",
            f"model.init={warm_start}",
            "spark.schedule=alternating",
            "spark.max_judge_items_per_step=0",
            "spark.max_reflection_items_per_step=0",
            "train.num_steps=2",
            "train.num_prompts_per_step=8",
            "train.eval_num_problems=0",
            "train.eval_judge=false",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    steps = [r for r in read_metrics(run_dir) if "spark/queue_size" in r]
    assert [r["spark/item_phase_skipped"] for r in steps] == [1.0, 1.0]
    assert (run_dir / "checkpoints" / "step_000002").is_dir()


def test_eval_refuses_a_reward_bench_label_outside_the_set(warm_start, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(
        json.dumps({"question": "Compute 1+1.", "response": "\\boxed{2}", "label": "correct"})
        + "\n"
        + json.dumps({"question": "Compute 1+2.", "response": "\\boxed{3}", "label": "maybe"})
        + "\n"
    )
    out = tmp_path / "eval"
    proc = run_cli(
        ["eval", SPARK, "--checkpoint", str(warm_start), "--out", str(out), "--reward-bench", str(bench)]
    )
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "bench.jsonl:2" in line and "maybe" in line and "'correct', 'incorrect'" in line, line
    assert not (out / "eval.json").exists()


def test_generate_tts_refuses_weights_never_trained_as_a_judge(tmp_path):
    plain = tmp_path / "plain"
    run_cli(
        [
            "sft",
            str(REPO / "examples/tiny_arith/sft.yaml"),
            f"run_dir={plain}",
            "train.num_steps=1",
            "train.eval_num_problems=0",
        ],
        check=True,
    )
    proc = run_cli(
        [
            "generate",
            SPARK,
            "--checkpoint",
            str(plain / "checkpoints/step_000001"),
            "--prompt",
            "Compute 1+2+3.",
            "--tts",
            "self-reflect",
        ]
    )
    assert proc.returncode == 2
    assert "never trained on judge prompts" in proc.stderr, proc.stderr


def test_eval_and_self_reflection_on_the_warm_start(warm_start, tmp_path):
    bench = tmp_path / "bench.jsonl"
    rows = [
        {"question": "Compute 1+2+3.", "response": "6", "label": "correct"},
        {"question": "Compute 1+2+3.", "response": "7", "label": "incorrect"},
        {"question": "Compute 4-1+2.", "response_a": "5", "response_b": "6", "label": "A"},
    ]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    proc = run_cli(
        [
            "eval",
            SPARK,
            "train.eval_num_problems=24",
            "--checkpoint",
            str(warm_start),
            "--out",
            str(out),
            "--maj-k",
            "4",
            "--n",
            "4",
            "--reward-bench",
            str(bench),
        ],
        check=True,
        timeout=900,
    )
    assert f"report: {out / 'report.md'}" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["num_problems"] == 24
    assert 0.0 < result["reasoning"]["pass@1"] <= 1.0
    assert result["judge"]["pointwise_items"] == 24 and result["judge"]["pairwise_items"] == 24
    # The warm start writes boxed verdicts (the format) though they are coin flips (not the skill).
    assert result["judge"]["verdict_parse_rate"] > 0.8
    assert set(result["tts"]) == {
        "self-reflect",
        "self-reflect-greedy-redo",
        "self-reflect-resample",
        "best-of-n",
    }
    assert 1.0 <= result["tts"]["self-reflect"]["generations_mean"] <= 5.0
    assert result["reward_bench"]["items"] == 3
    report = (out / "report.md").read_text()
    assert "pass@1" in report and "judge" in report.lower()
    gen = run_cli(
        [
            "generate",
            SPARK,
            "--checkpoint",
            str(warm_start),
            "--prompt",
            "Compute 1+2+3.",
            "--tts",
            "self-reflect",
            "--rounds",
            "1",
        ],
        check=True,
    )
    row = json.loads(gen.stdout.strip().splitlines()[-1])
    assert row["prompt"] == "Compute 1+2+3." and 1 <= row["generations"] <= 3


SHORT_RUN = [
    "train.num_steps=2",
    "train.num_prompts_per_step=8",
    "spark.items_per_step=8",
    "train.eval_every_steps=2",
    "train.eval_num_problems=16",
    "train.save_every_steps=0",
]


def assert_same_run(one, two):
    """Same steps, counts, rewards and accuracies; training statistics equal up to float32
    reduction order; and step 2 trained the items step 1 built."""
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2]
    trained = sum(one[2][f"spark/items_trained/{k}"] for k in ("pointwise", "pairwise", "reflection"))
    assert trained > 0
    for a, b in zip(one, two):
        for key, value in a.items():
            if key.startswith(("time/", "perf/")):
                continue
            if key.startswith("train/") and key != "train/skipped_steps":
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-7), (a["step"], key)
            else:  # counts, rewards, accuracies: exactly equal
                assert b[key] == value, (a["step"], key)


@pytest.mark.parametrize(
    "layout",
    # TP=2 runs with sequence parallelism, which adds to plain TP=2 the sequence padding, the SP
    # norm-gradient sum and the fused head behind the SP gather (plain TP=2 is covered at the
    # model level in tests/distributed; one run fewer keeps CI time down).
    [
        ["parallel.pipeline_parallel_size=2"],
        ["parallel.tensor_parallel_size=2", "parallel.sequence_parallel=true"],
    ],
    ids=["pp2", "tp2_sp"],
)
def test_joint_schedule_at_tp2_and_pp2_equals_one_process(warm_start, tmp_path, layout):
    """SPARK under torchrun: the same seed gives the same rollouts, items, rewards, losses and
    gradient norms at TP=2 (with sequence parallelism) or PP=2 as in one process (float32:
    reduction order only)."""
    args = [SPARK, f"model.init={warm_start}", *SHORT_RUN]
    run_cli(["train", *args, f"run_dir={tmp_path / 'one'}"], check=True, timeout=600)
    run_torchrun(2, ["-m", "megatron_spark.cli", "train", *args, f"run_dir={tmp_path / 'two'}", *layout])
    assert_same_run(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"))


@pytest.mark.parametrize("schedule", ["joint", "alternating"])
def test_joint_and_alternating_at_dp2_equal_one_process(warm_start, tmp_path, schedule):
    """Two data-parallel replicas train on exactly the samples of one process: each samples its
    rows of the step-wide batch, both recycle the whole step's groups into the same queue and
    split the popped items. (One optimizer step per update, so that it sees the same samples.)"""
    args = [
        SPARK,
        f"model.init={warm_start}",
        *SHORT_RUN,
        f"spark.schedule={schedule}",
        "grpo.num_minibatches=1",
    ]
    run_cli(["train", *args, f"run_dir={tmp_path / 'one'}"], check=True, timeout=600)
    run_torchrun(2, ["-m", "megatron_spark.cli", "train", *args, f"run_dir={tmp_path / 'two'}"])
    assert_same_run(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"))


def test_alternating_at_dp2_with_uneven_item_shares_does_not_hang(warm_start, tmp_path):
    """Few items per step split unevenly over two replicas (one gets 1 group, the other 2) with
    two minibatches (the policy phase has two groups per replica; a replica's item phase may
    have one): both ranks must take the same number of optimizer steps, or the gradient
    all-reduce waits forever (it did, when each rank kept its own queue). Fewer items than
    ranks are kept for the next step."""
    args = [
        SPARK,
        f"model.init={warm_start}",
        "seed=1",
        "train.num_steps=6",
        "train.num_prompts_per_step=4",  # 2 groups per replica: one per minibatch
        "spark.items_per_step=3",
        "spark.schedule=alternating",
        "grpo.num_minibatches=2",
        "train.eval_every_steps=0",
        "train.save_every_steps=0",
    ]
    run_torchrun(2, ["-m", "megatron_spark.cli", "train", *args, f"run_dir={tmp_path}"], timeout=300)
    steps = read_metrics(tmp_path)[1:]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    trained = [
        sum(r[f"spark/items_trained/{k}"] for k in ("pointwise", "pairwise", "reflection")) for r in steps
    ]
    assert any(n % 2 == 1 for n in trained), trained  # an uneven split happened
    assert all((n == 0) == (r["spark/item_phase_skipped"] == 1.0) for n, r in zip(trained, steps))
