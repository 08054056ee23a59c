"""TP/PP (and sequence parallelism) on gloo under torchrun: log-probs equal transformers',
gradients equal TP=1/PP=1."""

import json

import pytest
import torch

from tests.conftest import REPO, run_torchrun
from tests.distributed.grad_worker import LENGTHS, problem

pytestmark = pytest.mark.distributed
# (TP, PP, sequence parallel). The packed micro-batches have 24 and 45 tokens: under SP the odd
# one is padded to a multiple of TP.
LAYOUTS = [(1, 1, False), (2, 1, False), (1, 2, False), (2, 2, False), (2, 1, True), (2, 2, True)]


@pytest.fixture(scope="module")
def worker_results(hf_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("grads")
    out = {}
    for tp, pp, sp in LAYOUTS:
        f = d / f"tp{tp}_pp{pp}_sp{int(sp)}.pt"
        run_torchrun(
            tp * pp,
            [
                str(REPO / "tests/distributed/grad_worker.py"),
                "--tp",
                str(tp),
                "--pp",
                str(pp),
                *(["--sp"] if sp else []),
                "--out",
                str(f),
                *(f"{fam}={hf_dir}" for fam, (hf_dir, _) in hf_models.items()),
            ],
        )
        out[(tp, pp, sp)] = torch.load(f)
    return out


def reference(model, vocab):
    """float64 transformers log-probs and gradients of the worker's loss."""
    model = model.double()
    model.zero_grad(set_to_none=True)
    seqs, weights = problem(vocab)
    logprobs, loss = [], 0.0
    for seq, w in zip(seqs, weights):
        ids = torch.tensor([seq])
        lp = torch.log_softmax(model(ids).logits[0], -1)[:-1].gather(-1, ids[0, 1:, None])[:, 0]
        logprobs.append(lp.detach())
        loss = loss - (lp * w[:-1]).sum()  # the last token of a sequence has no target
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.float()
    if model.config.tie_word_embeddings:
        grads.pop("lm_head.weight", None)
    return logprobs, grads


def assert_close_to_scale(got, want, rel, msg):
    """Every element within ``rel`` x the tensor's largest magnitude (float32 sums carry error
    proportional to the scale of what they add, not to each element)."""
    err = (got.double() - want.double()).abs().max().item()
    scale = want.double().abs().max().item()
    assert err <= rel * scale, f"{msg}: max error {err:.3e} vs scale {scale:.3e}"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_logprobs_and_gradients_match(family, hf_models, worker_results):
    ref_lp, ref_grads = reference(hf_models[family][1], 300)
    base = worker_results[(1, 1, False)][family]["grads"]
    assert base.keys() == ref_grads.keys()
    for name, g in base.items():  # TP=1 fp32 against a float64 reference
        assert_close_to_scale(g, ref_grads[name], 1e-5, name)
    for layout in LAYOUTS:
        got = worker_results[layout][family]
        assert [len(x) for x in got["logprobs"]] == [n - 1 for n in LENGTHS]
        for ours, theirs in zip(got["logprobs"], ref_lp):
            diff = torch.tensor(ours, dtype=torch.float64) - theirs
            assert diff.numel() == 0 or diff.abs().max() < 1e-5, layout
        assert got["grads"].keys() == base.keys()
        for name, g in got["grads"].items():  # reassembled shards equal TP=1/PP=1
            assert_close_to_scale(g, base[name], 1e-5, f"{layout} {name}")


# Every layout's numbers are checked above through grad_worker; the CLI runs at the two ends (DP=4
# alone, TP x PP with DP=1) to keep CI's time down.
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
def test_logprobs_cli_under_torchrun(tp, pp, hf_models, megatron_ckpts, tmp_path):
    """The user's command with 4 gloo processes (DP = 4 / (TP*PP)); llama from the converted
    checkpoint (dist-checkpoint resharding), qwen2 straight from safetensors."""
    from tests.conftest import sample_sequences
    from tests.hf_reference import reference_logprobs

    seqs = sample_sequences(300, lengths=(5, 30, 2, 17))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "tokens": s}) + "\n" for i, s in enumerate(seqs)))
    for family, model_path in (("llama", megatron_ckpts["llama"]), ("qwen2", hf_models["qwen2"][0])):
        out = tmp_path / f"{family}.jsonl"
        run_torchrun(
            4,
            [
                "-m",
                "megatron_spark.cli",
                "logprobs",
                "--model",
                str(model_path),
                "--input",
                str(inp),
                "--out",
                str(out),
                "--tp",
                str(tp),
                "--pp",
                str(pp),
                "--max-tokens-per-batch",
                "32",
            ],
        )
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["id"] for r in rows] == list(range(len(seqs)))
        ref = reference_logprobs(hf_models[family][1], seqs)
        for row, r in zip(rows, ref):
            assert (torch.tensor(row["logprobs"], dtype=torch.float64) - r).abs().max() < 1e-5
