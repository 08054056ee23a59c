"""Every vLLM call and keyword the vLLM engine uses exists in the installed vLLM.

The list lives in ``vllm_engine.VLLM_CALLS``; ``test_vllm_engine_fake.py`` checks that the engine
passes nothing outside it, this file that vLLM accepts all of it.
"""

import dataclasses
import importlib
import inspect
import typing

import pytest

from megatron_spark.rollout.vllm_engine import VLLM_CALLS

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (bash tools/vllm_tests.sh runs these tests)")
from vllm.engine.arg_utils import EngineArgs  # noqa: E402


def _resolve(path: str):
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def _accepted_names(path: str, obj) -> set[str]:
    if path == "vllm.LLM":  # keywords LLM does not name go to EngineArgs
        own = set(inspect.signature(obj.__init__).parameters)
        return own | {f.name for f in dataclasses.fields(EngineArgs)}
    if hasattr(obj, "__required_keys__"):  # a TypedDict, from typing or typing_extensions
        return set(obj.__required_keys__) | set(obj.__optional_keys__)
    if hasattr(obj, "__struct_fields__"):  # msgspec.Struct (SamplingParams)
        return set(obj.__struct_fields__)
    return set(inspect.signature(obj).parameters)


@pytest.mark.parametrize("path", sorted(VLLM_CALLS))
def test_every_call_and_keyword_exists(path):
    obj = _resolve(path)
    missing = set(VLLM_CALLS[path]) - _accepted_names(path, obj)
    assert not missing, f"{path} ({vllm.__version__}) does not accept {sorted(missing)}"


def test_the_worker_method_we_call_exists():
    """``collective_rpc("reload_weights", ...)`` names a worker method (GPU and CPU workers)."""
    from vllm.v1.worker.gpu_worker import Worker

    assert callable(getattr(Worker, "reload_weights", None))


def _literal_choices(field_name: str) -> str:
    """The EngineArgs field's type, as text (covers Literal aliases and string annotations)."""
    field = next(f for f in dataclasses.fields(EngineArgs) if f.name == field_name)
    try:
        return repr(typing.get_type_hints(EngineArgs)[field_name])
    except Exception:  # an annotation that does not resolve at runtime: its source text
        return repr(field.type)


def test_the_option_values_we_pass_exist():
    assert "processed_logprobs" in _literal_choices("logprobs_mode")
    assert "external_launcher" in _literal_choices("distributed_executor_backend")
