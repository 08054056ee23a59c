"""Numeric test-time options are checked when the command line is parsed: a bad value is a
one-line usage error (exit 2) before any model loads, not a traceback from deep in the run."""

import pytest

from megatron_spark.cli import build_parser

BASE = {
    "eval": ["eval", "cfg.yaml", "--checkpoint", "ckpt"],
    "generate": ["generate", "cfg.yaml", "--checkpoint", "ckpt", "--prompt", "Make 22 from 3 5 7."],
}


@pytest.mark.parametrize(
    "command,option,value,expected",
    [
        ("eval", "--rounds", "-1", "expected an integer >= 0, got -1"),
        ("eval", "--n", "0", "expected an integer >= 1, got 0"),
        ("eval", "--maj-k", "two", "expected an integer >= 1, got 'two'"),
        ("eval", "--redo-temperature", "-0.5", "expected a finite number >= 0 (0: greedy), got '-0.5'"),
        ("eval", "--redo-temperature", "inf", "expected a finite number >= 0 (0: greedy), got 'inf'"),
        ("generate", "--redo-temperature", "nan", "expected a finite number >= 0 (0: greedy), got 'nan'"),
        ("generate", "--rounds", "1.5", "expected an integer >= 0, got '1.5'"),
        ("generate", "--n", "-3", "expected an integer >= 1, got -3"),
    ],
)
def test_bad_values_are_usage_errors(command, option, value, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*BASE[command], option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"argument {option}: {expected}"), err


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_defaults_and_edge_values_parse(command):
    args = build_parser().parse_args(BASE[command])
    assert (args.rounds, args.n, args.redo_temperature) == (2, 8, 1.0)
    args = build_parser().parse_args([*BASE[command], "--rounds", "0", "--n", "1", "--redo-temperature", "0"])
    assert (args.rounds, args.n, args.redo_temperature) == (0, 1, 0.0)
