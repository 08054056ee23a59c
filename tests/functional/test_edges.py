"""Bad input at every command's edge: exit 2, one stderr line naming the file or key, no traceback,
nothing created and nothing that existed changed (every file hashed before and after).

Outputs: refused when present (``eval`` too), when they are or hold the input, when they cannot be
written. Damaged inputs: safetensors that lead outside their directory or hold float64, a
truncated ``.distcp``, a missing ``.metadata``, a corrupt ``meta.json``, dataset values that are
not finite or not text, empty or undecodable prompts. Config values out of range.

Each case is a CLI process; all start at once on a small pool, and most are refused before any
model is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.edges import cli, refused, snapshot

TINY = {
    "seed": 0,
    "model": {"init": "preset:tiny-llama", "tokenizer": "builtin:arith"},
    "task": {
        "kind": "arithmetic",
        "arithmetic": {"max_digits": 1, "min_operands": 2, "max_operands": 2, "held_out_size": 8},
    },
    "rollout": {"num_samples_per_prompt": 4, "max_new_tokens": 16},
    "train": {"num_steps": 2, "num_prompts_per_step": 8, "eval_num_problems": 8, "micro_batch_tokens": 2048},
}


@dataclasses.dataclass
class Case:
    args: list
    watch: list[Path]
    """Paths that must be left exactly as they were (absent ones must stay absent)."""
    needles: tuple[str, ...]


def read_only_dir(root: Path) -> Path | None:
    """A directory this process cannot write in: chmod for a user; for root (who writes through
    any mode) a read-only tmpfs, where mounting is allowed. None when neither works."""
    d = root / "read_only"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        return d
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True
    ).returncode:
        return None
    return d


def build_cases(root: Path, hf: Path, ckpt: Path) -> dict[str, Case]:
    from safetensors.torch import load_file, save_file

    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    tokens = root / "tokens.jsonl"
    tokens.write_text(json.dumps({"tokens": [1, 2, 3]}) + "\n")
    cases: dict[str, Case] = {}

    def case(name, args, watch, *needles):
        cases[name] = Case(args, watch, needles)

    # ------------------------------------------------------------------ outputs
    hf_in = shutil.copytree(hf, root / "hf_in")
    case(
        "convert_out_is_input",
        ["convert", "hf-to-megatron", "--hf", hf_in, "--out", hf_in, "--overwrite"],
        [hf_in],
        "is the input --hf",
    )
    nest = root / "nest"
    shutil.copytree(hf, nest / "hf")
    case(
        "convert_out_holds_input",
        ["convert", "hf-to-megatron", "--hf", nest / "hf", "--out", nest, "--overwrite"],
        [nest],
        "holds it",
    )
    ck_in = shutil.copytree(ckpt, root / "ckpt_in")
    case(
        "export_out_is_input",
        ["convert", "megatron-to-hf", "--ckpt", ck_in, "--out", ck_in, "--overwrite"],
        [ck_in],
        "is the input --ckpt",
    )
    out_dir = root / "lp_dir"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("x\n")
    case(
        "logprobs_out_is_a_directory",
        ["logprobs", "--model", hf, "--input", tokens, "--out", out_dir, "--overwrite"],
        [root / "lp_dir", root / ".lp_dir.tmp"],
        "is a directory",
    )
    case(
        "logprobs_out_is_input",
        ["logprobs", "--model", hf, "--input", tokens, "--out", tokens, "--overwrite"],
        [tokens],
        "is the input --input",
    )
    a_file = root / "a_file"
    a_file.write_text("not a directory\n")
    case(
        "logprobs_out_under_a_file",
        ["logprobs", "--model", hf, "--input", tokens, "--out", a_file / "lp.jsonl"],
        [a_file],
        "is a file, not a directory",
    )
    ro = read_only_dir(root)
    if ro is not None:
        case(
            "convert_out_in_read_only_dir",
            ["convert", "hf-to-megatron", "--hf", hf, "--out", ro / "ckpt"],
            [ro],
            "cannot write in",
        )
    ev_out = root / "eval_out"
    ev_out.mkdir()
    (ev_out / "eval.json").write_text('{"earlier": true}\n')
    (ev_out / "report.md").write_text("# earlier\n")
    case(
        "eval_over_an_earlier_report",
        ["eval", config, "--checkpoint", ckpt, "--out", ev_out],
        [ev_out],
        "eval --out",
        "already holds files",
        "--overwrite",
    )
    case(
        "eval_out_is_the_checkpoint",
        ["eval", config, "--checkpoint", ck_in, "--out", ck_in, "--overwrite"],
        [ck_in],
        "is the input --checkpoint",
    )
    case(
        "generate_empty_prompt",
        ["generate", config, "--checkpoint", ckpt, "--prompt", ""],
        [],
        "--prompt #1",
        "empty",
    )
    case(
        "generate_lone_surrogate",
        [
            "generate",
            config,
            "--checkpoint",
            ckpt,
            "--prompt",
            "Compute 1+1.",
            "--prompt",
            b"Compute 1+\x80.",
        ],
        [],
        "--prompt #2",
        "lone surrogate",
    )

    # ------------------------------------------------------------------ damaged inputs
    escape = root / "escape"
    shutil.copytree(hf, escape / "hf")
    shutil.copy2(hf / "model.safetensors", escape / "x.safetensors")
    (escape / "hf/model.safetensors").unlink()
    names = list(load_file(str(escape / "x.safetensors")))
    index = {"metadata": {}, "weight_map": {n: "../x.safetensors" for n in names}}
    (escape / "hf/model.safetensors.index.json").write_text(json.dumps(index))
    case(
        "index_leads_outside",
        ["convert", "hf-to-megatron", "--hf", escape / "hf", "--out", root / "escape_out"],
        [escape, root / "escape_out"],
        "model.safetensors.index.json",
        "'../x.safetensors'",
        "outside",
    )
    f64 = shutil.copytree(hf, root / "f64")
    save_file(
        {k: v.double() for k, v in load_file(str(f64 / "model.safetensors")).items()},
        str(f64 / "model.safetensors"),
    )
    case(
        "float64_weights",
        ["convert", "hf-to-megatron", "--hf", f64, "--out", root / "f64_out"],
        [f64, root / "f64_out"],
        "model.safetensors",
        "F64",
    )
    short = shutil.copytree(ckpt, root / "truncated")
    distcp = sorted((short / "model").glob("*.distcp"))[0]
    distcp.write_bytes(distcp.read_bytes()[: distcp.stat().st_size // 2])
    case(
        "truncated_distcp",
        ["convert", "megatron-to-hf", "--ckpt", short, "--out", root / "truncated_out"],
        [short, root / "truncated_out"],
        distcp.name,
        "truncated",
    )
    nometa = shutil.copytree(ckpt, root / "no_metadata")
    (nometa / "model/.metadata").unlink()
    case(
        "missing_metadata",
        ["logprobs", "--model", nometa, "--input", tokens, "--out", root / "nometa.jsonl"],
        [nometa, root / "nometa.jsonl"],
        "model/.metadata: missing",
    )
    badmeta = shutil.copytree(ckpt, root / "bad_meta_json")
    (badmeta / "train_state").mkdir()
    (badmeta / "train_state/meta.json").write_text('{"step": 3, "world_si')
    case(
        "corrupt_meta_json",
        ["generate", config, "--checkpoint", badmeta, "--prompt", "Compute 1+1.", "--tts", "self-reflect"],
        [badmeta],
        "train_state/meta.json: damaged",
    )
    for name, row, needle in (
        ("answer_nan", b'{"prompt": "Compute 1+2.", "answer": NaN}', "'nan', not a finite number"),
        ("prompt_lone_surrogate", b'{"prompt": "Compute \\udc80.", "answer": "3"}', "lone surrogate"),
    ):
        data = root / f"{name}.jsonl"
        data.write_bytes(b'{"prompt": "Compute 1+1.", "answer": "2"}\n' + row + b"\n")
        run = root / f"run_{name}"
        case(
            name,
            ["train", config, f"run_dir={run}", "task.kind=file", f"task.file.train_path={data}"],
            [run],
            f"{data}:2",
            needle,
        )

    # ------------------------------------------------------------------ config ranges
    for name, override, needles in (
        ("eval_num_problems_negative", "train.eval_num_problems=-3", ("train.eval_num_problems=-3", ">= 0")),
        ("save_every_negative", "train.save_every_steps=-1", ("train.save_every_steps=-1", ">= 0")),
        ("num_minibatches_zero", "grpo.num_minibatches=0", ("grpo.num_minibatches=0", ">= 1")),
        (
            "num_minibatches_above_groups",
            "grpo.num_minibatches=9",
            ("grpo.num_minibatches=9", "8 prompt groups"),
        ),
        ("token_chunk_zero", "train.token_chunk=0", ("train.token_chunk=0", ">= 1")),
        ("tp_zero", "parallel.tensor_parallel_size=0", ("parallel.tensor_parallel_size=0", ">= 1")),
        ("dual_clip_below_one", "grpo.dual_clip=0.5", ("grpo.dual_clip=0.5", "> 1")),
    ):
        run = root / f"run_{name}"
        case(name, ["train", config, f"run_dir={run}", override], [run], "tiny.yaml", *needles)
    return cases


@pytest.fixture(scope="module")
def outcomes(hf_models, megatron_ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    cases = build_cases(root, hf_models["llama"][0], megatron_ckpts["llama"])
    before = {name: snapshot(*c.watch) for name, c in cases.items()}
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {name: pool.submit(cli, c.args) for name, c in cases.items()}
            yield {name: (cases[name], before[name], futures[name]) for name in cases}
    finally:
        if (root / "read_only").is_mount():
            subprocess.run(["umount", str(root / "read_only")], check=False)


CASES = [
    "convert_out_is_input",
    "convert_out_holds_input",
    "export_out_is_input",
    "logprobs_out_is_a_directory",
    "logprobs_out_is_input",
    "logprobs_out_under_a_file",
    "convert_out_in_read_only_dir",
    "eval_over_an_earlier_report",
    "eval_out_is_the_checkpoint",
    "generate_empty_prompt",
    "generate_lone_surrogate",
    "index_leads_outside",
    "float64_weights",
    "truncated_distcp",
    "missing_metadata",
    "corrupt_meta_json",
    "answer_nan",
    "prompt_lone_surrogate",
    "eval_num_problems_negative",
    "save_every_negative",
    "num_minibatches_zero",
    "num_minibatches_above_groups",
    "token_chunk_zero",
    "tp_zero",
    "dual_clip_below_one",
]


@pytest.mark.parametrize("name", CASES)
def test_refused_with_one_line_and_nothing_touched(outcomes, name):
    if name not in outcomes:
        pytest.skip("no read-only directory can be made here (root, and no tmpfs mount)")
    case, before, future = outcomes[name]
    refused(future.result(), *case.needles)
    assert snapshot(*case.watch) == before, "files were created or changed"
    for path in case.watch:  # no temporary sibling left either
        assert not list(path.parent.glob(f".{path.name}.tmp*")), f"temporary output next to {path}"
