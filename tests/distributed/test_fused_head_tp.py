"""Fused loss head: TP=2 (gloo) equals TP=1."""

import pytest

from tests.conftest import REPO, run_torchrun

pytestmark = pytest.mark.distributed


def test_tp2_equals_tp1(tmp_path):
    out = tmp_path / "ok"
    run_torchrun(2, [str(REPO / "tests/distributed/fused_head_worker.py"), "--out", str(out)])
    assert out.read_text() == "ok\n"


@pytest.mark.parametrize("tp,pp,sp", [(2, 2, False), (2, 1, True)])  # plain TP=2 is inside TP=2 x PP=2
def test_fused_head_in_model_equals_unfused(tp, pp, sp, hf_models, tmp_path):
    """Both families (untied / tied embeddings), the head inside the pipeline schedule; with
    sequence parallelism the head's input is gathered over TP and its gradient reduce-scattered.
    The worker also checks prompt sharing (shared equals whole samples) at the same layout."""
    for family, (hf_dir, _) in hf_models.items():
        out = tmp_path / f"{family}.ok"
        run_torchrun(
            tp * pp,
            [
                str(REPO / "tests/distributed/fused_model_worker.py"),
                "--tp",
                str(tp),
                "--pp",
                str(pp),
                *(["--sp"] if sp else []),
                "--hf",
                str(hf_dir),
                "--out",
                str(out),
            ],
        )
        assert out.read_text() == "ok\n"
