"""Weight bridge: the engine's log-probs equal the trainer's at every training layout, and follow
an optimizer step (stale weights would leave them where they were)."""

import json

import pytest

from tests.conftest import REPO, run_torchrun

pytestmark = pytest.mark.distributed


# The HF engine offers its weights, so the engine rank's own stage is written in place; the
# buckets are still used by every stage without an engine (PP=2) and, everywhere, with --bucketed
# (the path of engines that only take the stream, like vLLM). TP peers hand each other their
# pieces through shared memory ("shm"), as gloo messages ("gloo", by choice), or as gloo messages
# because the peers do not share a staging folder ("private-shm": the bridge must notice).
# "every": an engine on every rank, so that each TP rank both sends and receives (vLLM's layout;
# the shared-memory handshake once deadlocked there).
@pytest.mark.parametrize(
    "tp,pp,bucketed,transport,engines",
    [
        (1, 1, False, "shm", "rank0"),
        (1, 2, False, "shm", "rank0"),
        (2, 2, False, "shm", "rank0"),
        (2, 1, True, "shm", "rank0"),
        (2, 1, False, "gloo", "rank0"),
        (2, 1, False, "private-shm", "rank0"),
        (2, 1, True, "shm", "every"),
        (2, 1, True, "gloo", "every"),
    ],
)
def test_engine_matches_trainer_after_sync(tp, pp, bucketed, transport, engines, hf_models, tmp_path):
    for family, (hf_dir, _) in hf_models.items():
        if engines == "every" and family != "llama":
            continue  # the handshake does not depend on the family
        out = tmp_path / f"{family}.json"
        args = ["--tp", str(tp), "--pp", str(pp), "--hf", str(hf_dir), "--out", str(out)]
        args += ["--bucketed"] if bucketed else []
        args += [] if transport == "shm" else [f"--{transport}"]
        args += ["--every-rank"] if engines == "every" else []
        # A deadlocked handshake (engines on every rank) fails in minutes, not at the default timeout.
        timeout = 240 if engines == "every" else 600
        run_torchrun(tp * pp, [str(REPO / "tests/distributed/bridge_worker.py"), *args], timeout=timeout)
        report = json.loads(out.read_text())
        assert report["applied"], report
        assert report["shared_memory"] == (tp > 1 and transport == "shm"), report
        assert report["before"] < 1e-5, (family, report)
        assert report["after"] < 1e-5, (family, report)
        # The step changed the model enough that stale engine weights would fail the check.
        assert report["moved"] > 1e-3, (family, report)
