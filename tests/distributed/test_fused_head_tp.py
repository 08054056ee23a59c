"""Fused loss head: TP=2 (gloo) equals TP=1."""

import pytest

from tests.conftest import REPO, run_torchrun

pytestmark = pytest.mark.distributed


def test_tp2_equals_tp1(tmp_path):
    out = tmp_path / "ok"
    run_torchrun(2, [str(REPO / "tests/distributed/fused_head_worker.py"), "--out", str(out)])
    assert out.read_text() == "ok\n"
