"""On CUDA (NCCL, one process): the same log-prob parity as on the CPU. Skipped without a GPU."""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on CPU CI)"),
]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cuda_logprobs_match_transformers(family, hf_models):
    from megatron_spark import platform
    from megatron_spark.checkpoint.convert import load_pretrained
    from megatron_spark.model.forward import pack, run_packed, split_logprobs
    from tests.conftest import sample_sequences
    from tests.hf_reference import reference_logprobs

    assert platform.backend() == "nccl" and platform.device().type == "cuda"
    platform.setup(platform.ParallelConfig())
    model, arch = load_pretrained(hf_models[family][0], platform.ParallelConfig())
    seqs = sample_sequences(arch.vocab_size)
    batch = pack(seqs)
    ours = split_logprobs(run_packed(model, arch.vocab_size, [batch])[0]["logprobs"].cpu(), batch)
    for o, r in zip(ours, reference_logprobs(hf_models[family][1], seqs)):
        if r.numel():
            # TF32 matmuls may be on for CUDA; a float32 model still agrees well within 1e-4.
            assert (torch.tensor(o, dtype=torch.float64) - r).abs().max() < 1e-4
