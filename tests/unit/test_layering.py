"""The package's shape: import layers and acyclic modules (import-linter, pyproject.toml), and no
class that gathers more than a handful of jobs."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_METHODS = 15


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    # The package is found from the working directory, which comes first on the path.
    return subprocess.run(
        [str(exe), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
    )


def test_the_import_contracts_hold():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_the_contracts_catch_an_upward_import_and_a_cycle(tmp_path):
    """The contracts are not vacuous: a copy of the package where the model imports training
    (a layer above it) and two training modules import each other breaks both."""
    shutil.copytree(REPO / "megatron_spark", tmp_path / "megatron_spark")
    with open(tmp_path / "megatron_spark" / "model" / "config.py", "a") as f:
        f.write("\nfrom megatron_spark.train import seeds  # noqa\n")
    with open(tmp_path / "megatron_spark" / "train" / "seeds.py", "a") as f:
        f.write("\nfrom megatron_spark.train import grpo  # noqa\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "0 kept, 2 broken" in proc.stdout, proc.stdout[-4000:]
    assert "megatron_spark.model is not allowed to import megatron_spark.train" in proc.stdout


def test_no_class_has_more_than_fifteen_methods():
    big = []
    for path in sorted((REPO / "megatron_spark").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                n = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef) for b in node.body)
                if n > MAX_METHODS:
                    big.append(f"{path.relative_to(REPO)}::{node.name} has {n} methods")
    assert not big, big


def test_scoring_a_checkpoint_loads_no_training_code():
    """``eval`` and ``generate`` (and the held-out scorers training shares with them) run without
    importing the training package: no optimizer or run state exists to be left as None."""
    code = (
        "import sys, megatron_spark.eval.run, megatron_spark.eval.accuracy, megatron_spark.inference.context\n"
        "print(sorted(m for m in sys.modules if m.startswith('megatron_spark.train')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
