"""Every user mistake: one line on stderr, a non-zero exit, nothing half-written."""

import json
import shutil

import pytest

from tests.conftest import run_cli


def assert_clean_failure(proc, out_path, *needles):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("megatron-spark: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out_path is not None:
        assert not out_path.exists()
        assert not list(out_path.parent.glob(f".{out_path.name}.*")), "temporary output left behind"


@pytest.fixture
def hf_copy(hf_models, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(hf_models["llama"][0], d)
    return d


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    proc = run_cli(["convert", "hf-to-megatron", "--hf", str(tmp_path / "empty"), "--out", str(out)])
    assert_clean_failure(proc, out, "no config.json")


def test_unsupported_model_type(hf_copy, tmp_path):
    cfg = json.loads((hf_copy / "config.json").read_text())
    (hf_copy / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    out = tmp_path / "out"
    proc = run_cli(["convert", "hf-to-megatron", "--hf", str(hf_copy), "--out", str(out)])
    assert_clean_failure(proc, out, "'mistral' is not supported", "llama, qwen2")


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--tp", "3", "not divisible by tensor parallel size 3"),
        ("--pp", "3", "not divisible by pipeline parallel size 3"),
    ],
)
def test_split_not_divisible(hf_models, tmp_path, flag, value, needle):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"tokens": [1, 2, 3]}) + "\n")
    out = tmp_path / "lp.jsonl"
    proc = run_cli(
        [
            "logprobs",
            "--model",
            str(hf_models["llama"][0]),
            "--input",
            str(inp),
            "--out",
            str(out),
            flag,
            value,
        ]
    )
    assert_clean_failure(proc, out, needle)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_corrupt_safetensors(hf_copy, tmp_path, damage):
    f = hf_copy / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(
        data[: len(data) // 2] if damage == "truncate" else b"\x20" + b"\x00" * 7 + b"{broken" + data[15:]
    )
    out = tmp_path / "out"
    proc = run_cli(["convert", "hf-to-megatron", "--hf", str(hf_copy), "--out", str(out)])
    assert_clean_failure(proc, out, "model.safetensors", "truncated or corrupt")


def test_wrong_tensor_shape(hf_copy, tmp_path):
    cfg = json.loads((hf_copy / "config.json").read_text())
    (hf_copy / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 128}))
    out = tmp_path / "out"
    proc = run_cli(["convert", "hf-to-megatron", "--hf", str(hf_copy), "--out", str(out)])
    assert_clean_failure(proc, out, "mlp.gate_proj.weight", "(96, 64)", "(128, 64)")


def test_existing_checkpoint_is_refused_unless_overwrite(hf_models, megatron_ckpts, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(megatron_ckpts["qwen2"], target)
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    proc = run_cli(["convert", "hf-to-megatron", "--hf", str(hf_models["llama"][0]), "--out", str(target)])
    assert_clean_failure(proc, None, "already holds files", "--overwrite")
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert json.loads((target / "megatron_spark.json").read_text())["hf_config"]["model_type"] == "qwen2"
    run_cli(
        [
            "convert",
            "hf-to-megatron",
            "--hf",
            str(hf_models["llama"][0]),
            "--out",
            str(target),
            "--overwrite",
        ],
        check=True,
    )
    assert json.loads((target / "megatron_spark.json").read_text())["hf_config"]["model_type"] == "llama"
    assert not list(tmp_path.glob(".ckpt.*"))


def test_export_of_a_non_checkpoint(hf_models, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["convert", "megatron-to-hf", "--ckpt", str(hf_models["llama"][0]), "--out", str(out)])
    assert_clean_failure(proc, out, "not a megatron_spark checkpoint")


@pytest.mark.parametrize(
    "line,needle",
    [
        (b'{"tokens": [1, 2', "in.jsonl:2: invalid JSON"),
        (b"\xff\xfe", "in.jsonl:2: invalid UTF-8"),
        (b'{"tokens": []}', "in.jsonl:2: expected an object"),
        (b'{"tokens": [1, 99999]}', "token id 99999 outside [0, 300)"),
    ],
)
def test_bad_logprobs_input(hf_models, tmp_path, line, needle):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"tokens": [1, 2, 3]}\n' + line + b"\n")
    out = tmp_path / "lp.jsonl"
    proc = run_cli(
        ["logprobs", "--model", str(hf_models["llama"][0]), "--input", str(inp), "--out", str(out)]
    )
    assert_clean_failure(proc, out, needle)
