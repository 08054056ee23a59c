"""Run-config keys at any depth: unknown nested keys are named with their valid choices, and an
override of a section merges into it."""

import pytest
import yaml

from megatron_spark.config import load_config
from megatron_spark.errors import UserError
from megatron_spark.train.config import RunConfig


def test_unknown_key_inside_an_optional_section_is_named_not_a_wrong_type():
    with pytest.raises(UserError) as e:
        load_config(
            RunConfig, None, ["task.kind=file", "task.file.train_path=x.jsonl", "task.file.promt_key=q"]
        )
    message = str(e.value)
    assert "unknown key 'task.file.promt_key'" in message
    assert "did you mean 'task.file.prompt_key'?" in message
    assert "valid keys in task.file:" in message and "answer_key" in message
    assert "wrong type" not in message


def test_bad_value_inside_an_optional_section_names_its_key():
    with pytest.raises(UserError, match=r"task.file.held_out_fraction='lots'.*expected float"):
        load_config(RunConfig, None, ["task.file={train_path: x.jsonl, held_out_fraction: lots}"])


def test_a_section_override_merges_into_the_file_section(tmp_path):
    path = tmp_path / "run.yaml"
    section = {"train_path": "train.jsonl", "prompt_key": "question", "held_out_fraction": 0.1}
    path.write_text(yaml.safe_dump({"task": {"kind": "file", "file": section}}))
    cfg = load_config(RunConfig, path, ["task.file={answer_key: gt, held_out_fraction: 0.2}"])
    assert cfg.task.file.train_path == "train.jsonl"
    assert cfg.task.file.prompt_key == "question"  # kept from the file
    assert (cfg.task.file.answer_key, cfg.task.file.held_out_fraction) == ("gt", 0.2)
    # A whole-tree override merges at every depth, and a later override wins.
    cfg = load_config(RunConfig, path, ["task={file: {seed: 3}}", "task.file.seed=4"])
    assert (cfg.task.kind, cfg.task.file.prompt_key, cfg.task.file.seed) == ("file", "question", 4)


def test_an_override_starts_a_section_the_file_leaves_null(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task:\n  file: null\n")
    cfg = load_config(RunConfig, path, ["task.kind=file", "task.file.train_path=a.jsonl"])
    assert cfg.task.file.train_path == "a.jsonl"


def test_null_still_clears_an_optional_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"task": {"file": {"train_path": "a.jsonl"}}}))
    assert load_config(RunConfig, path, ["task.file=null"]).task.file is None


def test_checked_judge_reward_is_refused_for_a_task_without_worked_checks():
    over = ["task.kind=file", "task.file.train_path=x.jsonl", "spark.enabled=true"]
    with pytest.raises(UserError, match=r"spark.judge_reward=checked needs a task with worked checks"):
        load_config(RunConfig, None, [*over, "spark.judge_reward=checked"])
    assert load_config(RunConfig, None, over).spark.judge_reward == "verdict"
    cfg = load_config(RunConfig, None, ["task.kind=countdown", "spark.judge_reward=checked"])
    assert cfg.spark.judge_reward == "checked"
    with pytest.raises(UserError, match=r"spark.judge_reward='exact'.*verdict.*checked"):
        load_config(RunConfig, None, ["spark.judge_reward=exact"])


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_practice_compare_fraction_outside_zero_to_one_is_refused(value):
    with pytest.raises(UserError, match=rf"sft.practice_compare_fraction={value}.*expected 0 to 1"):
        load_config(RunConfig, None, [f"sft.practice_compare_fraction={value}"])


@pytest.mark.parametrize("value", ["0", "-2"])
def test_own_wrong_answers_every_steps_below_one_is_refused(value):
    with pytest.raises(UserError, match=rf"sft.own_wrong_answers_every_steps={value}.*expected >= 1"):
        load_config(RunConfig, None, [f"sft.own_wrong_answers_every_steps={value}"])
