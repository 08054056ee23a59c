"""Eval report: sections present are tabulated as percentages, absent ones left out; the curves
plot is a real PNG, embedded only when metrics.jsonl has curve points; bad metric lines are
refused with their file and line."""

import json

import pytest

from megatron_spark.errors import UserError
from megatron_spark.eval.report import (
    JUDGE_NOTE,
    plot_comparison,
    plot_curves,
    read_curves,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FULL = {
    "checkpoint": "runs/spark/step_100",
    "num_problems": 200,
    "reasoning": {"pass@1": 0.41, "maj@8": 0.47, "k": 8, "sample_mean": 0.375},
    "judge": {
        "pointwise_accuracy": 0.8,
        "pairwise_accuracy": 0.77,
        "pointwise_items": 200,
        "pairwise_items": 200,
        "pointwise_by_source": {"policy": 0.7, "perturbed": 0.9},
        "verdict_parse_rate": 0.99,
        "own_wrong_rejected": 0.95,
        "own_wrong": 118,
    },
    "reflection": {"accuracy": 0.5, "items": 100},
    "tts": {
        "self-reflect": {
            "accuracy": 0.45,
            "rounds": 2,
            "generations_mean": 2.3,
            "majority_at_equal_generations": 0.42,
            "redo_temperature": 1.0,
            "fixed": 9,
        },
        "best-of-n": {"accuracy": 0.5, "n": 8},
    },
    "reward_bench": {"file": "x.jsonl", "pointwise_accuracy": 0.6, "pairwise_accuracy": 0.7, "items": 10},
    "wall_time_s": 12.3,
}


def _metrics(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _is_png(path):
    data = path.read_bytes()
    return len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


ROWS = [
    {"step": 0, "eval/accuracy": 0.25, "eval/judge_pointwise_accuracy": 0.5, "time/eval_s": 1.0},
    {"step": 1, "policy/accuracy": 0.3, "train/loss": 0.1},
    {"step": 2, "eval/accuracy": 0.5, "eval/judge_pairwise_accuracy": 0.6},
    {"step": 3, "eval/accuracy": "nan", "eval/reflection_accuracy": 1},
    {"step": 4, "eval/accuracy": 0.75, "eval/judge_pointwise_accuracy": 0.625},
]


def test_read_curves_takes_points_only_from_rows_holding_the_metric(tmp_path):
    curves = read_curves(_metrics(tmp_path / "metrics.jsonl", ROWS))
    assert curves == {
        "eval/accuracy": [(0, 0.25), (2, 0.5), (4, 0.75)],  # step 3 is NaN: no point
        "eval/judge_pointwise_accuracy": [(0, 0.5), (4, 0.625)],
        "eval/judge_pairwise_accuracy": [(2, 0.6)],
        "eval/reflection_accuracy": [(3, 1.0)],
    }
    assert read_curves(tmp_path / "metrics.jsonl", metrics=["policy/accuracy"]) == {
        "policy/accuracy": [(1, 0.3)]
    }


@pytest.mark.parametrize(
    "bad,message",
    [
        ('{"step": 1, "eval/accuracy": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"eval/accuracy": 0.5}', "field 'step' must be an integer, got nothing"),
        ('{"step": "2", "eval/accuracy": 0.5}', "field 'step' must be an integer, got str"),
        ('{"step": 2, "eval/accuracy": "high"}', "field 'eval/accuracy' must be a number, got str"),
    ],
)
def test_malformed_metrics_line_names_file_and_line(tmp_path, bad, message):
    path = _metrics(tmp_path / "metrics.jsonl", [ROWS[0], bad])
    with pytest.raises(UserError) as e:
        read_curves(path)
    assert "metrics.jsonl:2:" in str(e.value) and message in str(e.value)


def test_full_report_tabulates_every_section_as_percentages(tmp_path):
    metrics = _metrics(tmp_path / "metrics.jsonl", ROWS)
    report = write_report(tmp_path / "out", FULL, metrics)
    assert report == tmp_path / "out" / "report.md"
    text = report.read_text()
    assert text.startswith("# SPARK evaluation\n")
    assert "runs/spark/step_100" in text
    for heading in ["Reasoning", "Judge", "Reflection", "Test-time scaling", "Reward benchmark"]:
        assert f"## {heading}" in text
    for row in [
        "| pass@1 | 41.0% |",
        "| maj@8 | 47.0% |",
        "| k | 8 |",
        "| pointwise accuracy | 80.0% |",
        "| pairwise accuracy | 77.0% |",
        "| pointwise items | 200 |",
        "| pointwise by source / policy | 70.0% |",
        "| pointwise by source / perturbed | 90.0% |",
        "| verdict parse rate | 99.0% |",
        "| accuracy | 50.0% |",
        "| items | 100 |",
        "| self-reflect / accuracy | 45.0% |",
        "| self-reflect / rounds | 2 |",
        "| self-reflect / generations mean | 2.3 |",
        "| self-reflect / majority at equal generations | 42.0% |",
        "| self-reflect / redo temperature | 1 |",
        "| self-reflect / fixed | 9 |",
        "| sample mean | 37.5% |",
        "| own wrong rejected | 95.0% |",
        "| own wrong | 118 |",
        "| best-of-n / accuracy | 50.0% |",
        "| file | x.jsonl |",
        "| pointwise accuracy | 60.0% |",
        "| pairwise accuracy | 70.0% |",
    ]:
        assert row in text, row
    assert "held-out problems: 200" in text and "wall time (s): 12.3" in text
    assert "judge accuracy is measured on balanced held-out items" in text
    assert "![curves](curves.png)" in text
    assert _is_png(tmp_path / "out" / "curves.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["curves.png", "report.md"]


def test_absent_sections_and_curves_are_left_out(tmp_path):
    result = {"checkpoint": "ckpt", "reasoning": {"pass@1": 0.125}, "extra": {"speed": 3}}
    text = write_report(tmp_path, result, metrics_jsonl=None, title="base").read_text()
    assert text.startswith("# base\n")
    assert "| pass@1 | 12.5% |" in text
    assert "## extra" in text and "| speed | 3 |" in text  # unknown sections, generically
    for absent in ["## Judge", "## Reflection", "## Test-time scaling", "## Reward benchmark"]:
        assert absent not in text
    assert JUDGE_NOTE not in text
    assert "![curves]" not in text
    assert not (tmp_path / "curves.png").exists()


def test_metrics_without_curve_points_give_no_plot(tmp_path):
    metrics = _metrics(tmp_path / "metrics.jsonl", [{"step": 1, "train/loss": 0.5}])
    text = write_report(tmp_path / "out", {"reflection": {"accuracy": 1.0}}, metrics).read_text()
    assert "| accuracy | 100.0% |" in text
    assert "![curves]" not in text
    assert not (tmp_path / "out" / "curves.png").exists()


def test_plot_curves_skips_absent_metrics_and_refuses_an_empty_plot(tmp_path):
    out = plot_curves({"eval/accuracy": [(0, 0.1), (5, 0.4)]}, tmp_path / "one.png", "one curve")
    assert out == tmp_path / "one.png" and _is_png(out)
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_curves({}, tmp_path / "none.png", "nothing")
    assert not (tmp_path / "none.png").exists()


def test_plot_comparison_draws_each_run_holding_the_metric(tmp_path):
    runs = {
        "grpo": {"eval/accuracy": [(0, 0.2), (10, 0.3)]},
        "spark": {"eval/accuracy": [(0, 0.2), (10, 0.4)]},
        "no-eval": {"train/loss": [(0, 1.0)]},
    }
    out = plot_comparison(runs, "eval/accuracy", tmp_path / "cmp" / "acc.png", "GRPO vs SPARK")
    assert _is_png(out)
    assert [p.name for p in (tmp_path / "cmp").iterdir()] == ["acc.png"]  # no temp file left
    with pytest.raises(ValueError):
        plot_comparison(runs, "eval/judge_pairwise_accuracy", tmp_path / "x.png", "none")
