"""Train state on disk as JSON + safetensors: exact round trip, no code from a crafted file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from megatron_spark.checkpoint import safe_state
from megatron_spark.errors import UserError


def _state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "step": 7,
        "optimizer": opt.state_dict(),  # int keys, tuples, 0-dim tensors
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "pool": {"arith:0:held_out:1": [("3", "so \\boxed{3}")]},
        "queue": {"items": [{"prompt": "x", "choices": ["Yes", "No"], "age": 1}], "expired": 0},
        "loss": float("nan"),
        "judge_pool": None,
        "bf16": torch.arange(6, dtype=torch.bfloat16).view(2, 3).t(),  # non-contiguous
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def test_round_trip_is_exact(tmp_path):
    state = _state()
    safe_state.save(state, tmp_path / "rank_00000")
    assert _same(state, safe_state.load(tmp_path / "rank_00000"))


def test_restored_rng_states_continue_the_same_streams(tmp_path):
    safe_state.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        tmp_path / "s",
    )
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    back = safe_state.load(tmp_path / "s")
    random.setstate(back["python"])
    np.random.set_state(back["numpy"])
    torch.set_rng_state(back["torch"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_an_object_it_cannot_store_is_a_bug_not_silently_pickled(tmp_path):
    with pytest.raises(TypeError, match="object"):
        safe_state.save({"x": object()}, tmp_path / "s")


def test_a_legacy_pickle_that_would_run_code_is_refused(tmp_path):
    """A ``.pt`` train state whose pickle calls a function is named and refused, never loaded."""
    marker = tmp_path / "ran"

    class Marker:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    path = tmp_path / "rank_00000.pt"
    torch.save({"step": 1, "evil": Marker()}, path)
    with pytest.raises(UserError, match="refused: its pickle would call") as e:
        safe_state.load_legacy(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_a_plain_legacy_state_still_loads(tmp_path):
    state = {"step": 3, "rng": {"numpy": np.random.get_state(), "python": random.getstate()}}
    torch.save(state, tmp_path / "old.pt")
    assert _same(state, safe_state.load_legacy(tmp_path / "old.pt"))


@pytest.mark.parametrize("damage", ["json", "tensors", "missing"])
def test_damaged_files_are_named(tmp_path, damage):
    stem = tmp_path / "rank_00000"
    safe_state.save(_state(), stem)
    js, st = safe_state.paths(stem)
    if damage == "json":
        js.write_text(js.read_text()[:40])
    elif damage == "tensors":
        st.write_bytes(st.read_bytes()[:100])
    else:
        st.unlink()
    with pytest.raises(UserError) as e:
        safe_state.load(stem)
    assert str(js if damage == "json" else st) in str(e.value)
