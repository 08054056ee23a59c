"""``megatron-spark`` command line: parse, build, run, tear down."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from megatron_spark import elastic
from megatron_spark.errors import Stopped, UserError

ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
}
"""``OSError``s of a named file that the user's environment causes (full disk, quota, permissions,
a file where a directory should be): reported like a :class:`UserError`, not as a traceback."""


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (0: greedy), got {text!r}")
    return value


REDO_HELP = "temperature of self-reflection's new attempts (0: greedy, like the answer and verdicts)"


def _parallel(args):
    from megatron_spark.platform import ParallelConfig

    return ParallelConfig(tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp)


def cmd_convert(args) -> int:
    from megatron_spark.checkpoint.convert import hf_to_megatron, megatron_to_hf

    if args.direction == "hf-to-megatron":
        out = hf_to_megatron(args.hf, args.out, overwrite=args.overwrite)
    else:
        out = megatron_to_hf(
            args.ckpt, args.out, overwrite=args.overwrite, max_shard_size=args.max_shard_size
        )
    print(f"wrote {out}")
    return 0


def cmd_logprobs(args) -> int:
    from megatron_spark.score import score_file

    if args.max_tokens_per_batch < 1:
        raise UserError("--max-tokens-per-batch must be >= 1")
    out = score_file(
        args.model,
        args.input,
        args.out,
        _parallel(args),
        params_dtype=args.dtype,
        max_tokens_per_batch=args.max_tokens_per_batch,
        overwrite=args.overwrite,
    )
    if out is not None:
        print(f"wrote {out}")
    return 0


def cmd_demo(args) -> int:
    import time

    from megatron_spark.demo import run_demo

    run_dir = args.run_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_demo(run_dir, seed=args.seed, overrides=args.overrides)


def cmd_run(args) -> int:
    from megatron_spark.config import load_config
    from megatron_spark.train.config import RunConfig
    from megatron_spark.train.run import run

    cfg = load_config(RunConfig, args.config, args.overrides)
    run_dir = run(cfg, args.command, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"run directory: {run_dir}")
    return 0


def cmd_eval(args) -> int:
    from megatron_spark.config import load_config
    from megatron_spark.eval.run import EvalOptions, run_eval
    from megatron_spark.train.config import RunConfig

    cfg = load_config(RunConfig, args.config, args.overrides)
    opts = EvalOptions(
        args.checkpoint,
        args.out,
        args.maj_k,
        args.rounds,
        args.n,
        args.reward_bench,
        args.overwrite,
        redo_temperature=args.redo_temperature,
    )
    report = run_eval(cfg, opts)
    if os.environ.get("RANK", "0") == "0":
        print(f"report: {report}")
    return 0


def cmd_generate(args) -> int:
    import json

    from megatron_spark.config import load_config
    from megatron_spark.data.datasets import read_jsonl
    from megatron_spark.eval.run import GenerateOptions, run_generate
    from megatron_spark.train.config import RunConfig

    cfg = load_config(RunConfig, args.config, args.overrides)
    prompts = list(args.prompt or [])
    for i, prompt in enumerate(prompts, start=1):
        _check_prompt(prompt, f"--prompt #{i}")
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"--input {path}: no such file")
        # The field the config's file task reads its prompts from (task.file.prompt_key).
        key = cfg.task.file.prompt_key if cfg.task.kind == "file" and cfg.task.file else "prompt"
        for line, row in read_jsonl(path):
            if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key]:
                raise UserError(f"{path}:{line}: expected an object with a non-empty string '{key}'")
            _check_prompt(row[key], f"{path}:{line}: '{key}'")
            prompts.append(row[key])
        if not prompts:
            raise UserError(f"--input {path}: no prompts (expected a jsonl line per prompt)")
    if not prompts:
        raise UserError("generate: give --prompt TEXT or --input FILE.jsonl")
    rows = run_generate(
        cfg,
        GenerateOptions(
            args.checkpoint, tuple(prompts), args.tts, args.rounds, args.n, args.redo_temperature
        ),
    )
    if os.environ.get("RANK", "0") == "0":
        for row in rows:
            print(json.dumps(row))
    return 0


def _check_prompt(prompt: str, where: str) -> None:
    """A prompt must hold text and be encodable: a lone surrogate (an undecodable byte of the
    command line, or a ``\\udc80`` escape in JSON) would fail deep inside the tokenizer."""
    if not prompt.strip():
        raise UserError(f"{where}: the prompt is empty")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(
            f"{where}: not valid text (a lone surrogate {prompt[e.start]!r} at character {e.start}; "
            f"is the input UTF-8?)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megatron-spark", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert checkpoints between Hugging Face and Megatron")
    csub = conv.add_subparsers(dest="direction", required=True)
    h2m = csub.add_parser("hf-to-megatron", help="HF directory -> megatron dist checkpoint")
    h2m.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + safetensors)")
    h2m.add_argument("--out", required=True, help="checkpoint directory to create")
    h2m.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    m2h = csub.add_parser("megatron-to-hf", help="megatron dist checkpoint -> HF directory")
    m2h.add_argument("--ckpt", required=True, help="megatron_spark checkpoint directory")
    m2h.add_argument("--out", required=True, help="Hugging Face directory to create")
    m2h.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    m2h.add_argument("--max-shard-size", default="2GB", help="split model.safetensors above this size")
    for c in (h2m, m2h):
        c.set_defaults(func=cmd_convert)

    lp = sub.add_parser("logprobs", help="per-token log-probs of token sequences (jsonl)")
    lp.add_argument("--model", required=True, help="HF directory or megatron_spark checkpoint")
    lp.add_argument("--input", required=True, help='jsonl with {"tokens": [...]} per line')
    lp.add_argument("--out", required=True, help="jsonl to write (input rows + logprobs)")
    lp.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    lp.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    lp.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="compute dtype (default: the checkpoint's)",
    )
    lp.add_argument("--max-tokens-per-batch", type=int, default=4096, help="packed micro-batch budget")
    lp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    lp.set_defaults(func=cmd_logprobs)

    for name, text in (
        ("train", "RL training: GRPO, or SPARK with spark.enabled"),
        ("sft", "supervised warm start on worked solutions"),
    ):
        c = sub.add_parser(name, help=f"{text} (torchrun for TP/PP/DP > 1)")
        c.add_argument("config", help="YAML run config (see examples/tiny_arith/)")
        c.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4")
        c.add_argument(
            "--resume", action="store_true", help="continue from the run directory's latest checkpoint"
        )
        c.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the previous run in run_dir (its checkpoints, metrics, config, summary)",
        )
        c.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="score a checkpoint as policy, judge and self-corrector")
    ev.add_argument("config", help="YAML run config (task, tokenizer, rollout settings)")
    ev.add_argument("overrides", nargs="*", help="key=value overrides")
    ev.add_argument(
        "--checkpoint", required=True, help="training checkpoint (step directory) or converted model"
    )
    ev.add_argument("--out", default=None, help="output directory (default CHECKPOINT/eval)")
    ev.add_argument("--maj-k", type=_int_at_least(1), default=8, help="samples per problem for maj@k")
    ev.add_argument("--rounds", type=_int_at_least(0), default=2, help="self-reflection rounds")
    ev.add_argument("--redo-temperature", type=_temperature, default=1.0, help=REDO_HELP)
    ev.add_argument("--n", type=_int_at_least(1), default=8, help="samples for best-of-n")
    ev.add_argument("--reward-bench", default=None, help="reward benchmark jsonl to score as a judge")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    ev.set_defaults(func=cmd_eval)

    gen = sub.add_parser("generate", help="answer prompts, optionally with test-time self-reflection")
    gen.add_argument("config", help="YAML run config (tokenizer, rollout settings)")
    gen.add_argument("overrides", nargs="*", help="key=value overrides")
    gen.add_argument("--checkpoint", required=True, help="checkpoint to load")
    gen.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    gen.add_argument(
        "--input",
        default=None,
        help="jsonl with a prompt per line, in the field task.file.prompt_key (default 'prompt')",
    )
    gen.add_argument(
        "--tts", choices=["none", "self-reflect", "best-of-n"], default="none", help="test-time mode"
    )
    gen.add_argument(
        "--rounds", type=_int_at_least(0), default=2, help="self-reflection judge/reflect rounds"
    )
    gen.add_argument("--redo-temperature", type=_temperature, default=1.0, help=REDO_HELP)
    gen.add_argument("--n", type=_int_at_least(1), default=8, help="samples for best-of-n")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser(
        "demo",
        help="the tiny SPARK demo on the CPU (Countdown): warm start, SPARK, then policy, judge and TTS eval",
    )
    demo.add_argument("--run-dir", default=None, help="where the demo writes (default runs/demo-<time>)")
    demo.add_argument("overrides", nargs="*", help="key=value overrides applied to both stages")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(func=cmd_demo)
    return p


def _say(line: str) -> str:
    """Print ``megatron-spark: LINE`` on stderr from rank 0; return it."""
    message = f"megatron-spark: {line}"
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        # One line, from one rank: every rank validates the same input.
        message = _say(f"error: {e}")
        elastic.record_user_error(message)  # under torchrun: the last line of its failure summary
        return 2
    except Stopped as e:
        _say(str(e))
        return e.exit_status
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS or not e.filename:
            elastic.record_exception(e)
            raise
        elastic.record_user_error(_say(f"error: {e.filename}: {e.strerror}"))
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except RuntimeError as e:
        from megatron_spark import platform

        if not platform.is_collective_failure(e):
            elastic.record_exception(e)
            raise
        # Said by every rank that noticed (rank 0 may be the one that stopped).
        timeout = platform.collective_timeout_s()
        limit = f"={timeout:g} s" if timeout else ""
        print(
            f"megatron-spark: error: rank {os.environ.get('RANK', '0')}: a collective got no answer from "
            f"another rank within parallel.collective_timeout_s{limit} (a rank stopped, hung or died); "
            f"ending the job",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except Exception as e:  # a bug: its traceback, and under torchrun the last line of the summary
        elastic.record_exception(e)
        raise
    finally:
        from megatron_spark import platform

        platform.teardown()


if __name__ == "__main__":
    sys.exit(main())
