"""Weight bridge: the engine's log-probs equal the trainer's at every training layout, and follow
an optimizer step (stale weights would leave them where they were)."""

import json

import pytest

from tests.conftest import REPO, run_torchrun

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_engine_matches_trainer_after_sync(tp, pp, hf_models, tmp_path):
    for family, (hf_dir, _) in hf_models.items():
        out = tmp_path / f"{family}.json"
        args = ["--tp", str(tp), "--pp", str(pp), "--hf", str(hf_dir), "--out", str(out)]
        run_torchrun(tp * pp, [str(REPO / "tests/distributed/bridge_worker.py"), *args])
        report = json.loads(out.read_text())
        assert report["applied"], report
        assert report["before"] < 1e-5, (family, report)
        assert report["after"] < 1e-5, (family, report)
        # The step changed the model enough that stale engine weights would fail the check.
        assert report["moved"] > 1e-3, (family, report)
