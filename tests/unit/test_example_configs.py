"""Every example config loads: its keys and values pass the run config's checks."""

import pytest

from megatron_spark.config import load_config
from megatron_spark.train.config import RunConfig
from tests.conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*/*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}/{p.name}" for p in EXAMPLES])
def test_example_config_loads(path):
    cfg = load_config(RunConfig, path)
    if path.parent.name == "gsm8k":
        assert cfg.task.file.format == "gsm8k" and "\\boxed{}" in cfg.task.file.prompt_suffix
