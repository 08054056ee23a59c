"""Benchmark: GRPO training throughput of megatron_spark against TRL's GRPOTrainer, on the CPU.

Both sides train the same tiny Llama shape (the ``tiny-llama`` preset: hidden 128, 4 layers,
vocabulary 512 = the builtin arithmetic tokenizer) in float32 with the same threads, on arithmetic
problems from :class:`~megatron_spark.data.tasks.ArithmeticTask`, with the same prompts per step,
group size, max new tokens, learning rate and number of steps. Each side runs in its own child
process, one after the other (TRL first), so neither inherits the other's global state (our CPU
patches stay active in a process once set); ``--rounds`` repeats the pair, since the load of a
shared CPU drifts, and the ratio is taken over all rounds. Both clocks cover the training steps
only (sampling, scoring, loss, backward, optimizer and, on our side, the weight sync into the
engine), not model loading. Target: our samples/s >= 2x TRL's.

What is matched, and where the sides differ:

* weights (``--init``): ``sft`` (the default, or a checkpoint directory): both start from the same
  trained weights (the tiny recipe's SFT warm start, exported to Hugging Face format for TRL), so
  completions end at EOS with lengths that vary as in a real run, and the rewards vary within a
  group. The defaults are the tiny GRPO recipe's workload (32 prompts x 8 samples, 40 new tokens).
  ``random``: ours ``model.init=preset:tiny-llama`` (megatron's init), TRL a saved random
  transformers model of the same config (std 0.02); both sample near-uniformly, so almost every
  completion runs to ``--max-new-tokens`` and neither side has padding to skip. Every reward is
  then 0, so every group has advantage 0 and ours, which leaves such groups out of training
  (``grpo.skip_zero_advantage``), would train almost nothing: compare random weights with
  ``--skip-zero-advantage off``. The completion-token columns show the lengths;
* task and reward: the tiny GRPO recipe's arithmetic task (``examples/tiny_arith/grpo.yaml``);
  the reward is the last ``\boxed{}`` equal to the answer as a string on both sides (ours
  ``task.verifier.kind=exact``, not the recipe's math-verify);
* tokenizer: ours the builtin sentencepiece model, TRL the same ``.model`` file loaded by
  transformers' ``LlamaTokenizer`` (same ids for the prompts' digits and operators; the same
  prompt lengths);
* prompts: the problems our sampler draws over the run (seed ``--seed``); TRL's side
  (tools/trl_side.py) takes them as its dataset and walks them in its own shuffled order, one
  step's worth per step;
* loss: token-level clipped surrogate (TRL's ``dapo``, ours), no KL, one optimizer step per
  rollout batch. Our old log-probs are the engine's (``grpo.old_logprobs=rollout``), as on-policy
  TRL uses the current ones without an extra forward (``--old-logprobs recompute`` adds that
  forward on our side). TRL's gradient checkpointing is off (its default is on;
  ``--trl-gradient-checkpointing`` turns it back on);
* ours also pays the weight sync into its separate rollout engine every step; TRL samples from the
  model it trains.

TRL is not a dependency of megatron_spark. ``bash tools/trl_tests.sh`` makes a venv with TRL,
this package and the tested versions (``.venv-trl``), then

    .venv-trl/bin/python tools/bench_vs_trl.py [--init sft] [--num-prompts 32] [--num-samples 8]
        [--max-new-tokens 40] [--num-steps 6] [--rounds 3] [--threads 1] [--lr 1e-5]

On a shared CPU keep ``--threads`` at or below the idle cores (tools/trl_side.py explains why).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing it (e.g. from TRL's venv)
PRESET = "tiny-llama"
RECIPE = REPO / "examples" / "tiny_arith" / "grpo.yaml"
SFT_RECIPE = REPO / "examples" / "tiny_arith" / "sft.yaml"


def recipe_task():
    """The arithmetic task of the tiny GRPO recipe (the one its SFT warm start was trained on)."""
    from megatron_spark.config import load_config
    from megatron_spark.data.tasks import ArithmeticTask
    from megatron_spark.train.config import RunConfig

    return ArithmeticTask(load_config(RunConfig, RECIPE, []).task.arithmetic)


def problems_for(num_prompts: int, seed: int):
    """The problems our sampler draws first (the recipe's task, seeded as a run is)."""
    from megatron_spark.data.tasks import ProblemSampler

    return ProblemSampler(recipe_task(), seed=seed).next_batch(num_prompts)


def warm_start(work: Path, threads: int) -> Path:
    """Train the tiny recipe's SFT warm start (examples/tiny_arith/sft.yaml) in ``work``; its
    checkpoint. This is where the recipe's GRPO starts."""
    from megatron_spark.checkpoint.steps import latest

    run_dir = work / "sft"
    cmd = [sys.executable, "-m", "megatron_spark.cli", "sft", str(SFT_RECIPE), f"run_dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    ckpt = latest(run_dir / "checkpoints")
    if proc.returncode != 0 or ckpt is None:
        raise SystemExit(f"the SFT warm start failed:\n{proc.stderr[-6000:]}")
    return ckpt


def write_hf_side(out: Path, seed: int, init: Path | None) -> None:
    """TRL's model: ``init`` exported to Hugging Face format, or (None) the preset's random
    transformers model sized to our tokenizer; and our tokenizer as an HF one."""
    import copy

    from megatron_spark.data.tokenizer import ARITH_MODEL_PATH, load_tokenizer
    from megatron_spark.model.config import PRESETS
    from tests.hf_reference import make_random_hf_model

    if init is not None:
        cmd = [sys.executable, str(REPO / "tools" / "convert_megatron_to_hf.py"), "--ckpt", str(init)]
        proc = subprocess.run(
            [*cmd, "--out", str(out), "--overwrite"], cwd=REPO, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"exporting {init} to Hugging Face format failed:\n{proc.stderr[-3000:]}")
    else:
        tok = load_tokenizer("builtin:arith")
        cfg = copy.deepcopy(PRESETS[PRESET])
        cfg.update(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id)
        cfg["pad_token_id"] = tok.pad_id
        make_random_hf_model(cfg, out, seed=seed, std=0.02)
    shutil.copyfile(ARITH_MODEL_PATH, out / "tokenizer.model")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False}
    (out / "tokenizer_config.json").write_text(json.dumps({**config, **special}, indent=2))


def run_trl(args: argparse.Namespace, work: Path) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "tools"))
    from transformers import AutoTokenizer
    from trl_side import run_trl_grpo

    torch.set_num_threads(args.threads)
    # Every step's problems of our run: TRL walks them in its own order, one step's worth at a time.
    problems = problems_for(args.num_prompts * args.num_steps, args.seed)
    # Our SentencePieceTokenizer.encode_prompt is bos + text + "\n": TRL's tokenizer adds the bos.
    prompts = [p.prompt + "\n" for p in problems]
    tok = AutoTokenizer.from_pretrained(work / "hf")
    res = run_trl_grpo(
        str(work / "hf"),
        str(work / "hf"),
        prompts,
        [p.answer for p in problems],
        prompts_per_step=args.num_prompts,
        num_generations=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        num_steps=args.num_steps,
        seed=args.seed,
        learning_rate=args.lr,
        gradient_checkpointing=args.trl_gradient_checkpointing,
        bf16=args.dtype == "bfloat16",  # Trainer's bf16 autocast (on the CPU too)
    )
    res["prompt_tokens_mean"] = sum(len(tok(p)["input_ids"]) for p in prompts) / len(prompts)
    res["threads"] = torch.get_num_threads()
    res["label"] = f"TRL {res['trl_version']}"
    return res


def run_ours(args: argparse.Namespace, work: Path) -> dict:
    import torch

    from megatron_spark.config import load_config
    from megatron_spark.train.config import RunConfig
    from megatron_spark.train.grpo import grpo_step, optimizer_steps
    from megatron_spark.train.session import Session

    torch.set_num_threads(args.threads)
    init = (work / "init.txt").read_text().strip() if (work / "init.txt").is_file() else f"preset:{PRESET}"
    overrides = [
        f"run_dir={tempfile.mkdtemp(prefix='ours_', dir=work)}",
        f"seed={args.seed}",
        f"model.init={init}",
        "model.tokenizer=builtin:arith",
        "task.verifier.kind=exact",  # TRL's side scores with the same string match
        f"precision.params_dtype={args.dtype}",
        f"train.num_steps={args.num_steps}",
        f"train.num_prompts_per_step={args.num_prompts}",
        f"rollout.num_samples_per_prompt={args.num_samples}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"optim.lr={args.lr}",
        "optim.warmup_steps=0",
        "optim.weight_decay=0.0",
        "optim.clip_grad_norm=1.0",
        "grpo.kl_coef=0.0",
        "grpo.num_minibatches=1",
        f"grpo.old_logprobs={args.old_logprobs}",
        f"train.share_prompts={args.share_prompts == 'on'}",
        f"grpo.skip_zero_advantage={args.skip_zero_advantage == 'on'}",
    ]
    cfg = load_config(RunConfig, RECIPE, overrides)
    s = Session(cfg, "train", optimizer_steps_per_step=optimizer_steps(cfg))
    problems = problems_for(args.num_prompts * args.num_steps, args.seed)
    prompt_tokens = [len(s.roles.tokenizer.encode_prompt(p.prompt)) for p in problems]
    step_seconds, tokens, samples, stages, skipped = [], 0, 0, {}, []
    try:
        for _ in range(args.num_steps):
            t0 = time.perf_counter()
            metrics = s.finish_step(*grpo_step(s.roles))
            step_seconds.append(time.perf_counter() - t0)
            n = args.num_prompts * args.num_samples
            samples += n
            tokens += round(metrics["policy/response_tokens_mean"] * n)
            skipped.append(metrics["train/skipped_token_fraction"])
            for k, v in s.roles.timer.pop().items():
                stages[k] = stages.get(k, 0.0) + v
    finally:
        s.close()
    return {
        "label": "megatron_spark",
        "samples": samples,
        "completion_tokens": tokens,
        "seconds": sum(step_seconds),
        "step_seconds": step_seconds,
        "generate_seconds": stages.get("time/rollout_s", 0.0),
        "stages": stages,
        "skipped_token_fraction": sum(skipped) / len(skipped),
        "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
        "threads": torch.get_num_threads(),
    }


def child(side: str, args: argparse.Namespace, work: Path) -> dict:
    """Run one side in a fresh process of this interpreter; returns its result dict."""
    out = work / f"{side}.json"
    cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--workdir", str(work)]
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"{side} side failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


def rates(runs: list[dict]) -> tuple[float, float]:
    """Samples/s and completion tokens/s over every step of ``runs``."""
    seconds = sum(r["seconds"] for r in runs)
    return sum(r["samples"] for r in runs) / seconds, sum(r["completion_tokens"] for r in runs) / seconds


def print_table(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    first = runs["trl"][0]
    print(
        f"{args.num_steps} GRPO steps x {args.num_prompts} prompts x {args.num_samples} samples, "
        f"<= {args.max_new_tokens} new tokens, {args.dtype}, {first['threads']} thread(s), lr {args.lr:g}, "
        f"TRL gradient checkpointing {'on' if args.trl_gradient_checkpointing else 'off'}, "
        f"our old log-probs: {args.old_logprobs}, shared prompts {args.share_prompts}, zero-advantage "
        f"groups skipped {args.skip_zero_advantage}; {args.rounds} round(s), "
        "TRL then ours in each"
    )
    print(
        f"{'round':<6}{'side':<28}{'prompt tok':>11}{'compl. tok':>11}{'steps s':>9}{'sampling s':>11}"
        f"{'samples/s':>10}{'tokens/s':>10}  per step s"
    )
    for i in range(args.rounds):
        for side in ("trl", "ours"):
            r = runs[side][i]
            samples_s, tokens_s = rates([r])
            print(
                f"{i + 1:<6}{r['label']:<28}{r['prompt_tokens_mean']:>11.1f}{r['completion_tokens']:>11d}"
                f"{r['seconds']:>9.2f}{r['generate_seconds']:>11.2f}{samples_s:>10.2f}{tokens_s:>10.1f}  "
                + " ".join(f"{t:.2f}" for t in r["step_seconds"])
            )
    (trl_samples, trl_tokens), (our_samples, our_tokens) = rates(runs["trl"]), rates(runs["ours"])
    ratio = our_samples / trl_samples
    print(
        f"all rounds: TRL {trl_samples:.1f} samples/s {trl_tokens:.0f} tokens/s, ours {our_samples:.1f} "
        f"samples/s {our_tokens:.0f} tokens/s; ratio ours / TRL: samples/s {ratio:.2f}, tokens/s "
        f"{our_tokens / trl_tokens:.2f} (target samples/s >= 2.00: {'met' if ratio >= 2 else 'missed'})"
    )
    per_round = [rates([o])[0] / rates([t])[0] for t, o in zip(runs["trl"], runs["ours"])]
    best = {side: max(rates([r])[0] for r in runs[side]) for side in ("trl", "ours")}
    print(
        "per round, ours / TRL samples/s: "
        + ", ".join(f"{x:.2f}" for x in per_round)
        + f"; each side's fastest round: TRL {best['trl']:.1f}, ours {best['ours']:.1f} samples/s, "
        f"ratio {best['ours'] / best['trl']:.2f} (a shared CPU only ever slows a round down)"
    )
    stages: dict[str, float] = {}
    for r in runs["ours"]:
        for k, v in r["stages"].items():
            stages[k] = stages.get(k, 0.0) + v
    named = ", ".join(f"{k.removeprefix('time/').removesuffix('_s')} {v:.2f}" for k, v in stages.items())
    print(f"our stages, s over all rounds: {named}")
    left_out = sum(r["skipped_token_fraction"] for r in runs["ours"]) / len(runs["ours"])
    print(f"our response tokens left out of training (advantage 0, mean over steps): {left_out:.1%}")
    if left_out > 0.9:
        print(
            "warning: nearly every group has equal rewards, so ours trained almost nothing; for a "
            "like-for-like comparison of the work, run again with --skip-zero-advantage off"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-prompts", type=int, default=32, help="prompts per step")
    p.add_argument("--num-samples", type=int, default=8, help="completions per prompt (group size)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--num-steps", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="bfloat16: ours with bf16 parameters (float32 master weights in the optimizer), TRL "
        "with the Trainer's bf16 autocast",
    )
    p.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL's default; off here")
    p.add_argument(
        "--old-logprobs", default="rollout", choices=["rollout", "recompute"], help="our grpo.old_logprobs"
    )
    p.add_argument(
        "--share-prompts",
        default="on",
        choices=["on", "off"],
        help="our train.share_prompts (each group's prompt trained once; docs/training.md)",
    )
    p.add_argument(
        "--skip-zero-advantage",
        default="on",
        choices=["on", "off"],
        help="our grpo.skip_zero_advantage (groups with equal rewards add nothing to the update and "
        "are not run through the model; docs/training.md)",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternations TRL, ours (a shared CPU drifts)")
    p.add_argument(
        "--init",
        default="sft",
        help="weights both sides start from: 'random' (the preset, near-uniform sampling: every "
        "completion runs to --max-new-tokens), 'sft' (train the tiny recipe's SFT warm start "
        "first, about a minute; completions end at EOS as in a real run) or a megatron_spark "
        "checkpoint directory",
    )
    p.add_argument("--side", choices=["trl", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        work = Path(args.workdir)
        res = run_trl(args, work) if args.side == "trl" else run_ours(args, work)
        (work / f"{args.side}.json").write_text(json.dumps(res))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_vs_trl_"))
    try:
        init = None
        if args.init == "sft":
            init = warm_start(work, args.threads)
        elif args.init != "random":
            init = Path(args.init).resolve()
            if not (init / "model").is_dir():
                raise SystemExit(f"--init {args.init}: not a megatron_spark checkpoint directory (no model/)")
        if init is not None:
            (work / "init.txt").write_text(str(init))
        write_hf_side(work / "hf", args.seed, init)
        runs: dict[str, list[dict]] = {"trl": [], "ours": []}
        for _ in range(args.rounds):
            for side in runs:
                runs[side].append(child(side, args, work))
        print_table(args, runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
